"""hyperrl: a hypernetwork conditioned on environment parameters generates the weights of an
RL policy, trained across families of Gymnasium task variants.

Importing it registers every built-in family with Gymnasium as ``hyperrl/<family>-v0``
(:mod:`hyperrl.registration`).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__", "load", "load_family", "list_families", "make_vec_env", "register_family",
           "family_env_id", "FamilyVectorEnv", "SB3VecEnv"]

from hyperrl.registration import family_env_id, register_builtin_families, register_family  # noqa: E402

register_builtin_families()


def __getattr__(name: str):  # lazy: `import hyperrl` stays cheap for CLIs (no torch)
    if name in ("load_family", "list_families"):
        from hyperrl import families

        return getattr(families, name)
    if name == "load":
        from hyperrl.runs import load

        return load
    if name == "make_vec_env":
        from hyperrl.sim import make_vec_env

        return make_vec_env
    if name == "FamilyVectorEnv":
        from hyperrl.vector import FamilyVectorEnv

        return FamilyVectorEnv
    if name == "SB3VecEnv":
        from hyperrl.sb3 import SB3VecEnv

        return SB3VecEnv
    raise AttributeError(f"module 'hyperrl' has no attribute {name!r}")
