"""hyperrl: a hypernetwork conditioned on environment parameters generates the weights of an
RL policy, trained across families of Gymnasium task variants."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load", "load_family", "list_families", "make_vec_env"]


def __getattr__(name: str):  # lazy: `import hyperrl` stays cheap for CLIs
    if name in ("load_family", "list_families"):
        from hyperrl import families

        return getattr(families, name)
    if name == "load":
        from hyperrl.runs import load

        return load
    if name == "make_vec_env":
        from hyperrl.sim import make_vec_env

        return make_vec_env
    raise AttributeError(f"module 'hyperrl' has no attribute {name!r}")
