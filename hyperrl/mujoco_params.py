"""Family parameters that are MuJoCo model quantities (a family YAML's ``params.<p>.mujoco``).

A Gymnasium MuJoCo env's physics lives in its ``MjModel``, not in attributes of the env,
so such a parameter names the quantity it sets instead of an attribute:

=========  ==========================================  ===============================
quantity   model field                                 selector (default: all)
=========  ==========================================  ===============================
mass       ``body_mass`` and ``body_inertia``           ``bodies`` (never the world)
gravity    ``opt.gravity[2]`` (downward)                --
friction   ``geom_friction[:, 0]`` (sliding)            ``geoms``
damping    ``dof_damping``                              ``joints`` (all their dofs)
gear       ``actuator_gear[:, 0]``                      ``actuators``, or ``joints``
                                                        (the actuators driving them)
=========  ==========================================  ===============================

``mode: scale`` (default) multiplies the model's *original* values by the parameter;
``mode: value`` sets them (gravity: the downward acceleration, gravity = (0, 0, -value);
mass: every selected body weighs ``value``). Values are always applied to the original
(compiled) values, so they never compound across resets; two parameters selecting the same
element compose in the YAML's order (scales multiply, a value replaces). A mass change
scales the body's inertia by the same factor: the same shape and mass distribution in a
denser material, the one choice that keeps the inertia consistent with the geometry (a
mass without its inertia is a body whose radius of gyration changed). ``gear`` may be
negative: a reversed actuator (Actuator Inversion, DMA*-SH).

Changing these fields leaves MuJoCo's derived constants (``body_subtreemass``,
``dof_invweight0``, ``actuator_acc0``, ...) stale until ``mj_setConst`` runs, and the
compiler's ``stat.meaninertia`` (which scales the constraint solver's tolerance) and
``stat.meanmass``, which ``mj_setConst`` leaves alone. :func:`set_model` recomputes all of
them after every change, for one Gymnasium env (:func:`apply_to_env`) and for each
simulation of the batched backend (:mod:`hyperrl.sim.mujoco`): the model then has the
constants a fresh compile with the same values has. ``mujoco`` is imported only
where a model is touched, so families without MuJoCo parameters never need it.
"""

from __future__ import annotations

import contextlib
import difflib
import sys
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

__all__ = ["QUANTITIES", "MODES", "MujocoTarget", "Resolved", "parse_target", "resolve", "original_fields",
           "field_values", "set_model", "apply_to_env", "quiet_compile", "is_mujoco_env"]

# quantity -> (model fields it writes, selector keys it accepts, the object kind they name)
QUANTITIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "mass": (("body_mass", "body_inertia"), ("bodies",)),
    "gravity": (("opt.gravity",), ()),
    "friction": (("geom_friction",), ("geoms",)),
    "damping": (("dof_damping",), ("joints",)),
    "gear": (("actuator_gear",), ("actuators", "joints")),
}
MODES = ("scale", "value")
_KIND = {"bodies": "body", "geoms": "geom", "joints": "joint", "actuators": "actuator"}
_COUNT = {"body": "nbody", "geom": "ngeom", "joint": "njnt", "actuator": "nu"}


@dataclass(frozen=True)
class MujocoTarget:
    """What one family parameter sets in the model (as the YAML gives it; names unresolved)."""

    quantity: str
    mode: str = "scale"
    selector: str | None = None  # "bodies" | "geoms" | "joints" | "actuators"; None: all
    names: tuple[str, ...] = ()

    def describe(self) -> str:
        sel = f" of {self.selector} {', '.join(self.names)}" if self.selector else ""
        return f"{self.mode} on {self.quantity}{sel}"


@dataclass(frozen=True)
class Resolved:
    """A target resolved on one model: the field it writes and the flat indices into it."""

    target: MujocoTarget
    index: tuple[int, ...]  # body / geom / dof / actuator indices (gravity: (2,))


def parse_target(raw: Any, where: str, fail: Callable[[str, str], Exception], signed: bool,
                 bounds: tuple[float, float]) -> MujocoTarget:
    """``params.<p>.mujoco`` of a family YAML -> :class:`MujocoTarget`; ``fail(where, msg)``
    builds the one-line error. ``signed``/``bounds`` are the parameter's: only a gear may be
    negative, a mass must stay positive."""
    if not isinstance(raw, dict):
        raise fail(where, f"expected a mapping such as {{quantity: mass, bodies: [torso]}}, got {raw!r}")
    quantity = raw.get("quantity")
    if quantity not in QUANTITIES:
        raise fail(f"{where}.quantity", f"expected one of {', '.join(QUANTITIES)}, got {quantity!r}")
    selectors = QUANTITIES[quantity][1]
    allowed = ("quantity", "mode", *selectors)
    for k in raw:
        if k not in allowed:
            raise fail(f"{where}.{k}", f"unknown key for quantity {quantity}; allowed keys: {', '.join(allowed)}")
    mode = raw.get("mode", "scale")
    if mode not in MODES:
        raise fail(f"{where}.mode", f"expected one of {', '.join(MODES)}, got {mode!r}")
    given = [k for k in selectors if k in raw]
    if len(given) > 1:
        raise fail(where, f"give one of {', '.join(given)}, not both")
    selector, names = None, ()
    if given:
        selector = given[0]
        val = raw[selector]
        if isinstance(val, str):
            val = [val]
        if not isinstance(val, list) or not val or not all(isinstance(x, str) and x for x in val):
            raise fail(f"{where}.{selector}", f"expected a non-empty list of {_KIND[selector]} names, got {val!r}")
        if len(set(val)) != len(val):
            raise fail(f"{where}.{selector}", "a name is listed twice")
        names = tuple(val)
    if quantity != "gear":
        if signed:
            raise fail(where, f"a {quantity} cannot change sign: 'signed: true' is only for quantity gear")
        low = bounds[0]
        if quantity == "mass" and low <= 0:
            raise fail(where, "a mass needs a positive lower bound (bounds[0] > 0)")
        if low < 0:
            raise fail(where, f"a {quantity} cannot be negative: bounds[0] must be >= 0")
    return MujocoTarget(quantity=quantity, mode=mode, selector=selector, names=names)


def _names(model: Any, kind: str) -> list[str]:
    return [getattr(model, kind)(i).name for i in range(getattr(model, _COUNT[kind]))]


def resolve(model: Any, target: MujocoTarget, where: str, fail: Callable[[str, str], Exception],
            env_id: str = "the model") -> Resolved:
    """The element indices ``target`` selects in ``model``; an unknown name is one
    ``fail(where, msg)`` line listing the names the model has."""
    q = target.quantity
    if q == "gravity":
        return Resolved(target, (2,))
    if target.selector is None:
        n = {"mass": model.nbody, "friction": model.ngeom, "damping": model.nv, "gear": model.nu}[q]
        start = 1 if q == "mass" else 0  # body 0 is the world: it has no mass to scale
        return Resolved(target, tuple(range(start, n)))
    kind = _KIND[target.selector]
    known = _names(model, kind)
    ids = []
    for name in target.names:
        if name not in known or (kind == "body" and name == known[0]):
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            shown = ", ".join(k for k in known if k) or "(none named)"
            raise fail(f"{where}.{target.selector}", f"{env_id} has no {kind} '{name}'{hint}; its {kind} names: {shown}")
        ids.append(known.index(name))
    if q == "damping":  # a joint -> its dofs (a free joint has 6, a hinge 1)
        dofs = []
        for j in ids:
            adr = int(model.jnt_dofadr[j])
            ndof = {0: 6, 1: 3, 2: 1, 3: 1}[int(model.jnt_type[j])]
            dofs += range(adr, adr + ndof)
        ids = dofs
    elif q == "gear" and target.selector == "joints":  # the actuators whose transmission is one of them
        joint_trn = {0, 1}  # mjTRN_JOINT, mjTRN_JOINTINPARENT
        acts = [a for a in range(model.nu)
                if int(model.actuator_trntype[a]) in joint_trn and int(model.actuator_trnid[a, 0]) in ids]
        missing = [target.names[i] for i, j in enumerate(ids)
                   if not any(int(model.actuator_trnid[a, 0]) == j for a in acts)]
        if missing:
            raise fail(f"{where}.joints", f"no actuator of {env_id} drives joint '{missing[0]}'")
        ids = acts
    return Resolved(target, tuple(ids))


def _field(model: Any, name: str) -> np.ndarray:
    """A writable view of a model field (``opt.<x>``: an MjOption field)."""
    return getattr(model.opt, name[4:]) if name.startswith("opt.") else getattr(model, name)


def touched_fields(resolved: Sequence[Resolved]) -> tuple[str, ...]:
    """The model fields the targets write, in a fixed order."""
    out: list[str] = []
    for r in resolved:
        for f in QUANTITIES[r.target.quantity][0]:
            if f not in out:
                out.append(f)
    return tuple(out)


def original_fields(model: Any, fields: Sequence[str]) -> dict[str, np.ndarray]:
    """Copies of ``fields`` of a pristine model: what every later value is relative to."""
    return {f: np.array(_field(model, f), dtype=np.float64, copy=True) for f in fields}


def field_values(original: Mapping[str, np.ndarray], resolved: Sequence[Resolved],
                 values: np.ndarray) -> dict[str, np.ndarray]:
    """The model fields for ``values`` ``[B, P]`` (column ``j`` for ``resolved[j]``):
    ``{field: [B, *shape]}``, computed from the original values (nothing compounds).

    The one place where a MuJoCo parameter's value becomes model fields: :func:`apply_to_env`
    (one Gymnasium env) and the batched backend (rows of per-simulation fields) both use it.
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1, len(resolved))
    b = values.shape[0]
    out = {f: np.broadcast_to(v, (b, *v.shape)).copy() for f, v in original.items()}
    for j, r in enumerate(resolved):
        x = values[:, j]
        idx = list(r.index)
        q, scale = r.target.quantity, r.target.mode == "scale"
        if q == "mass":
            # the inertia follows the mass in proportion (also after an earlier parameter)
            cur_m = out["body_mass"][:, idx]  # [B, k]
            new_m = cur_m * x[:, None] if scale else np.broadcast_to(x[:, None], cur_m.shape)
            ratio = np.divide(new_m, cur_m, out=np.ones_like(new_m), where=cur_m > 0)
            out["body_mass"][:, idx] = new_m
            out["body_inertia"][:, idx] = out["body_inertia"][:, idx] * ratio[..., None]
        elif q == "gravity":
            g = out["opt.gravity"]
            g[:, 2] = g[:, 2] * x if scale else -x
        elif q == "friction":
            f = out["geom_friction"]
            f[:, idx, 0] = f[:, idx, 0] * x[:, None] if scale else x[:, None]
        elif q == "damping":
            d = out["dof_damping"]
            d[:, idx] = d[:, idx] * x[:, None] if scale else x[:, None]
        elif q == "gear":
            g = out["actuator_gear"]
            g[:, idx, 0] = g[:, idx, 0] * x[:, None] if scale else x[:, None]
    return out


class _EnvState:
    """What :func:`apply_to_env` keeps on an env: the original fields and resolved targets."""

    def __init__(self, original: dict[str, np.ndarray]):
        self.original = original
        self.resolved: dict[tuple[MujocoTarget, ...], list[Resolved]] = {}


def is_mujoco_env(base: Any) -> bool:
    """Whether ``base`` (an unwrapped env) simulates with MuJoCo (has ``model`` and ``data``)."""
    return type(getattr(base, "model", None)).__name__ == "MjModel" and hasattr(base, "data")


def set_model(model: Any, data: Any, fields: Mapping[str, np.ndarray]) -> None:
    """Write ``fields`` (``{field: values}``, one model's) into ``model``, then recompute what
    a compile derives from them: ``mj_setConst`` (subtree masses, inverse weights, actuator
    ``acc0``, ...; it works in ``data`` at ``qpos0``, so ``data``'s state is lost) and the
    statistics MuJoCo's compiler computes after it and ``mj_setConst`` does not:
    ``stat.meanmass`` and ``stat.meaninertia`` (the solver's tolerance scale)."""
    import mujoco

    for f, v in fields.items():
        _field(model, f)[...] = v
    mujoco.mj_setConst(model, data)
    # the compiler's formulas (sums in index order, as its loops add them)
    if model.nbody > 1:
        model.stat.meanmass = float(sum(model.body_mass[1:].tolist())) / (model.nbody - 1)
    if model.nv:
        model.stat.meaninertia = float(sum(model.dof_M0.tolist())) / model.nv


def apply_to_env(base: Any, targets: Sequence[MujocoTarget], values: Sequence[float], where: Sequence[str],
                 fail: Callable[[str, str], Exception], env_id: str) -> None:
    """Set ``targets`` to ``values`` on the unwrapped MuJoCo env ``base`` and recompute the
    derived constants (:func:`set_model`). The simulation state (time, qpos, qvel, act, warm
    start, controls) is kept."""
    import mujoco

    model, data = base.model, base.data
    key = tuple(targets)
    st: _EnvState | None = base.__dict__.get("_hyperrl_mujoco")
    if st is None or key not in st.resolved:
        resolved = [resolve(model, t, w, fail, env_id) for t, w in zip(targets, where)]
        if st is None:
            # the first parameters set on this env: the model is the compiled one
            st = _EnvState(original_fields(model, tuple(QUANTITIES_FIELDS)))
            base.__dict__["_hyperrl_mujoco"] = st
        st.resolved[key] = resolved
    resolved = st.resolved[key]
    new = field_values({f: st.original[f] for f in touched_fields(resolved)}, resolved,
                       np.asarray(values, dtype=np.float64).reshape(1, -1))
    spec = mujoco.mjtState.mjSTATE_INTEGRATION
    state = np.empty(mujoco.mj_stateSize(model, spec))
    mujoco.mj_getState(model, data, state, spec)
    set_model(model, data, {f: v[0] for f, v in new.items()})
    mujoco.mj_setState(model, data, state, spec)
    mujoco.mj_forward(model, data)


QUANTITIES_FIELDS = tuple(dict.fromkeys(f for fields, _ in QUANTITIES.values() for f in fields))

# MuJoCo 4 warns on every compile of a model that uses the compiler's ``settotalmass``
# (Gymnasium's half_cheetah.xml does): noise for a user who cannot change the file.
_QUIET = ("compiler attribute 'settotalmass' is deprecated",)


@contextlib.contextmanager
def quiet_compile() -> Iterator[None]:
    """Drop MuJoCo's deprecation warnings about Gymnasium's own model files while the block
    runs (other warnings still print, as MuJoCo prints them); a no-op without ``mujoco``."""
    try:
        import mujoco
    except ImportError:
        yield
        return
    previous = mujoco.get_mju_user_warning()

    def handler(msg: str) -> None:
        if msg.startswith(_QUIET):
            return
        if previous is not None:
            previous(msg)
        else:
            print(f"WARNING: {msg}", file=sys.stderr)

    mujoco.set_mju_user_warning(handler)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)
