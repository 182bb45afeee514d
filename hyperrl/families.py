"""Environment families: one Gymnasium env id whose physical parameters vary.

A family is data: a YAML file (schema in the README, built-ins in ``envs/``) naming the
env id, the attributes that vary with their physical bounds, the train distribution,
fixed held-out interpolation/extrapolation sets and how values become the network's
context vector. ``params`` always means *environment* parameters in this project;
generated policy tensors are ``weights``.

Why derived attributes are declared: Gymnasium's ``CartPoleEnv`` computes ``total_mass``
and ``polemass_length`` once in ``__init__``; setting ``masspole`` alone leaves them stale
(the bug CARL and RLlib's CartPoleMassEnv shipped). A family lists such attributes with
the expression that recomputes them, and :meth:`Family.apply` re-evaluates them after
every change.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import difflib
import functools
import itertools
import math
import numbers
import operator
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
import yaml

from hyperrl import gym_envs  # noqa: F401 - registers hyperrl's env ids wherever a family can be made
from hyperrl.errors import FamilyError
from hyperrl.fileio import atomic_write_text
from hyperrl.mujoco_params import MujocoTarget, apply_to_env, is_mujoco_env, parse_target, quiet_compile
from hyperrl.resources import builtin_families_dir, list_families
from hyperrl.yamlio import YamlInputError, parse_yaml, read_yaml_file

__all__ = [
    "Family",
    "ParamSpec",
    "FamilyError",
    "builtin_families_dir",
    "list_families",
    "family_path",
    "load_family",
    "SPLITS",
    "check_expr",
    "eval_expr",
    "expr_names",
    "distractor_context",
    "MAX_DISTRACTORS",
    "gym_make",
]

SPLITS = ("interpolation", "extrapolation")
_DISTS = ("uniform", "log_uniform")
_SCALES = ("linear", "log")


# --------------------------------------------------------------------------------------
# Safe arithmetic for derived attributes ("masspole * length"): no calls, no attributes.
# --------------------------------------------------------------------------------------
_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.USub: operator.neg, ast.UAdd: operator.pos}


def check_expr(expr: str, where: str) -> ast.Expression:
    try:
        tree = ast.parse(expr, mode="eval")
    except (SyntaxError, ValueError, RecursionError) as e:  # ValueError: an int literal too long to read
        msg = getattr(e, "msg", None) or str(e) or type(e).__name__
        raise FamilyError(f"{where}: cannot parse expression {expr!r}: {msg}") from None
    for node in ast.walk(tree):
        ok = isinstance(
            node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Name, ast.Load, ast.Constant)
        ) or type(node) in _BINOPS or type(node) in _UNARY
        if not ok or (isinstance(node, ast.Constant) and not isinstance(node.value, (int, float))):
            raise FamilyError(
                f"{where}: expression {expr!r} may use only numbers, attribute names and + - * / **"
            )
    return tree


def eval_expr(tree: ast.Expression, lookup: Callable[[str], Any],
               const: Callable[[float], Any] = float) -> Any:
    """The value of a checked expression, names read through ``lookup``.

    Numbers are floats: the attributes are physical quantities, and a float overflows
    (an error the caller reports) where an int power such as ``9 ** 9 ** 9`` grows
    without bound. ``const`` turns each number into the operand type (a batched simulator
    passes 0-dim tensors: torch computes ``float / tensor`` as reciprocal-then-multiply,
    which rounds differently from the division ``Family.apply`` does).
    """

    def ev(node: ast.AST) -> Any:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant):
            return const(float(node.value))
        if isinstance(node, ast.Name):
            return lookup(node.id)
        if isinstance(node, ast.BinOp):
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp):
            return _UNARY[type(node.op)](ev(node.operand))
        raise AssertionError(node)  # excluded by check_expr

    return ev(tree)


def expr_names(tree: ast.Expression) -> set[str]:
    """The attribute names an expression reads."""
    return {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}


def _finite_number(x: Any) -> bool:
    """Whether ``x`` is a finite real number, or an array of them: what a physical attribute holds."""
    if isinstance(x, bool):
        return False
    if isinstance(x, numbers.Real):
        return math.isfinite(x)
    try:
        t = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        return False
    return t.dtype != torch.bool and not t.is_complex() and bool(torch.isfinite(t).all())


def _numeric_attributes(obj: Any) -> list[str]:
    """Public attributes of ``obj`` (its own and its classes') holding a number, sorted."""
    names: set[str] = set()
    for scope in [obj, *type(obj).__mro__]:
        for k, v in getattr(scope, "__dict__", {}).items():
            if not k.startswith("_") and isinstance(v, numbers.Real) and not isinstance(v, bool):
                names.add(k)
    return sorted(names)


# --------------------------------------------------------------------------------------
# Cached attributes: self.a = f(self.p) in the env's __init__ (design rule 2)
# --------------------------------------------------------------------------------------
class _SelfToName(ast.NodeTransformer):
    """``self.x`` -> ``x`` (the form a family's ``derived`` expression takes)."""

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        if isinstance(node.value, ast.Name) and node.value.id == "self":
            return ast.copy_location(ast.Name(id=node.attr, ctx=ast.Load()), node)
        return self.generic_visit(node)


@functools.lru_cache(maxsize=None)
def init_computed_attributes(env_cls: type) -> dict[str, str]:
    """``{attr: expression}`` for every ``self.attr = <expr of other self.* attributes>`` in
    the ``__init__`` of ``env_cls`` and its bases (their source, parsed; nothing runs).

    Such an attribute is computed once: setting an attribute it reads afterwards leaves it
    stale, as Gymnasium's CartPole ``total_mass = masspole + masscart`` (the CARL/RLlib bug).
    Expressions are given with ``self.`` removed; only those a family's ``derived`` section
    can hold (numbers, names, + - * / **) are returned.
    """
    import inspect
    import textwrap

    out: dict[str, str] = {}
    for klass in reversed(env_cls.__mro__):
        init = klass.__dict__.get("__init__")
        if init is None or klass.__module__.startswith(("builtins", "gymnasium.core")):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(init)))
        except (OSError, TypeError, SyntaxError):  # no source (C extension, frozen module)
            continue
        for node in ast.walk(tree):
            if not isinstance(node, (ast.Assign, ast.AnnAssign)) or node.value is None:
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for t in targets:
                if not (isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self"):
                    continue
                reads = [n for n in ast.walk(node.value) if isinstance(n, ast.Attribute)
                         and isinstance(n.value, ast.Name) and n.value.id == "self"]
                if not reads:
                    continue
                expr = ast.unparse(_SelfToName().visit(ast.parse(ast.unparse(node.value), mode="eval")))
                try:
                    check_expr(expr, "")
                except FamilyError:
                    continue
                out[t.attr] = expr
    return out


# --------------------------------------------------------------------------------------
# Distractor context dimensions
# --------------------------------------------------------------------------------------
MAX_DISTRACTORS = 4096
_M32 = 0xFFFFFFFF


def _mul32(h: torch.Tensor, c: int) -> torch.Tensor:
    """``(h * c) mod 2**32`` for int64 ``h`` in [0, 2**32): split ``c`` in 16-bit halves so no
    product leaves int64 (torch has no unsigned 64-bit arithmetic on every device)."""
    return (h * (c & 0xFFFF) + (((h * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer hash with full avalanche (Wellons' "lowbias32")."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


def distractor_context(values: torch.Tensor, k: int) -> torch.Tensor:
    """``[..., P]`` parameter values -> ``[..., k]`` distractor dimensions in (-1, 1).

    Decision Adapter's test (Beukman et al., NeurIPS 2023) appends context dimensions that
    are drawn per variant and carry no information about the physics. Here they are a hash
    of the variant's values (rounded to float32, so a variant gets the same draw in every
    dtype, on every device, in training, evaluation and adaptation): uniform over variants,
    uncorrelated with the values, and never read by the environment.
    """
    v = torch.as_tensor(values).to(torch.float32).contiguous()
    bits = v.view(torch.int32).to(torch.int64) & _M32  # [..., P]
    h = torch.full(v.shape[:-1], 0x9E3779B9, dtype=torch.int64, device=v.device)
    for j in range(v.shape[-1]):
        h = _mix32(h ^ bits[..., j])
    salt = _mix32(torch.arange(1, k + 1, dtype=torch.int64, device=v.device))  # [k]
    d = _mix32(h.unsqueeze(-1) ^ salt)  # [..., k] uniform in [0, 2**32)
    return (d.to(torch.float64) + 0.5) * (2.0 / 2**32) - 1.0


# --------------------------------------------------------------------------------------
# Spec dataclasses
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ParamSpec:
    """One varying attribute of the unwrapped env.

    ``bounds`` are physical (inclusive). For a ``signed`` parameter they bound the
    magnitude and either sign is allowed (a reversed motor is a negative gain).
    ``train_ranges`` is a union of closed intervals sampled with ``dist``.
    """

    name: str
    bounds: tuple[float, float]
    signed: bool
    context: str  # "linear" | "log": the scale the context min-max normalises in
    dist: str  # "uniform" | "log_uniform"
    train_ranges: tuple[tuple[float, float], ...]
    unit: str = ""
    description: str = ""
    # a MuJoCo model quantity (hyperrl.mujoco_params) instead of an attribute of the env
    mujoco: MujocoTarget | None = None

    def magnitude(self, x: torch.Tensor) -> torch.Tensor:
        return x.abs() if self.signed else x

    def in_bounds(self, x: torch.Tensor) -> torch.Tensor:
        m = self.magnitude(x)
        return (m >= self.bounds[0]) & (m <= self.bounds[1]) & torch.isfinite(x)

    def in_train(self, x: torch.Tensor) -> torch.Tensor:
        inside = torch.zeros_like(x, dtype=torch.bool)
        for lo, hi in self.train_ranges:
            inside |= (x >= lo) & (x <= hi)
        return inside

    def bounds_text(self) -> str:
        lo, hi = self.bounds
        if self.signed:
            return f"|{self.name}| in [{lo:g}, {hi:g}] (either sign)"
        return f"{self.name} in [{lo:g}, {hi:g}]"

    def _scaled(self, x: torch.Tensor) -> torch.Tensor:
        m = self.magnitude(x)
        return torch.log(m) if self.context == "log" else m

    def context_range(self) -> tuple[float, float]:
        """Min and max of the context scale over the train ranges (min-max target [-1, 1])."""
        vals: list[float] = []
        for lo, hi in self.train_ranges:
            if self.signed and lo < 0 < hi:
                vals += [0.0, max(-lo, hi)]
            else:
                vals += [abs(lo), abs(hi)] if self.signed else [lo, hi]
        if self.context == "log":
            vals = [math.log(v) for v in vals]
        return min(vals), max(vals)

    @property
    def context_dim(self) -> int:
        return 2 if self.signed else 1

    def to_context(self, x: torch.Tensor) -> torch.Tensor:
        """[...] values -> [..., context_dim]: (sign,) then the min-max scaled magnitude."""
        lo, hi = self.context_range()
        scaled = self._scaled(x)
        # a one-value train range has no spread to normalise by: its context is 0
        norm = 2.0 * (scaled - lo) / (hi - lo) - 1.0 if hi > lo else torch.zeros_like(scaled)
        if self.signed:
            return torch.stack([torch.sign(x), norm], dim=-1)
        return norm.unsqueeze(-1)

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """[n] float64 draws from the train distribution (union: mass proportional to length)."""
        dev = generator.device
        if self.dist == "log_uniform":
            pieces = [(math.log(abs(lo)), math.log(abs(hi)), math.copysign(1.0, hi))
                      for lo, hi in self.train_ranges]
            pieces = [(min(a, b), max(a, b), s) for a, b, s in pieces]
        else:
            pieces = [(lo, hi, 1.0) for lo, hi in self.train_ranges]
        if len(pieces) == 1:  # one interval: the arithmetic below with idx = 0, fewer ops
            a, b, sign = pieces[0]
            t = a + torch.rand(n, generator=generator, dtype=torch.float64, device=dev) * (b - a)
            return sign * torch.exp(t) if self.dist == "log_uniform" else t
        lengths = torch.tensor([b - a for a, b, _ in pieces], dtype=torch.float64, device=dev)
        lows = torch.tensor([a for a, _, _ in pieces], dtype=torch.float64, device=dev)
        signs = torch.tensor([s for _, _, s in pieces], dtype=torch.float64, device=dev)
        total = lengths.sum()
        u = torch.rand(n, generator=generator, dtype=torch.float64, device=dev) * total
        ends = torch.cumsum(lengths, 0)
        idx = torch.searchsorted(ends, u, right=True).clamp(max=len(pieces) - 1)
        starts = ends - lengths
        t = lows[idx] + (u - starts[idx]).clamp(min=0.0)
        if self.dist == "log_uniform":
            return signs[idx] * torch.exp(t)
        return t


@dataclass(frozen=True)
class Family:
    """A parametric family of one Gymnasium env. Load with :func:`load_family`."""

    name: str
    env_id: str
    params: tuple[ParamSpec, ...]
    heldout: Mapping[str, torch.Tensor]  # split -> [M, P] float64, fixed values from the YAML
    description: str = ""
    env_kwargs: Mapping[str, Any] = field(default_factory=dict)
    max_episode_steps: int | None = None
    batched: str | None = None  # name of a built-in batched simulator, None -> gymnasium.vector
    success_return: float | None = None
    fixed: Mapping[str, float] = field(default_factory=dict)
    derived: Mapping[str, str] = field(default_factory=dict)
    distractors: int = 0  # K irrelevant context dimensions (see distractor_context)
    source: str = ""

    # ---- shapes -------------------------------------------------------------------
    @property
    def param_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    @property
    def num_params(self) -> int:
        return len(self.params)

    @property
    def context_dim(self) -> int:
        return sum(p.context_dim for p in self.params) + self.distractors

    def with_distractors(self, k: int) -> "Family":
        """This family with ``k`` distractor context dimensions instead of its own."""
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_DISTRACTORS:
            raise FamilyError(f"distractors must be an integer in [0, {MAX_DISTRACTORS}], got {k!r}")
        return dataclasses.replace(self, distractors=k)

    def spec(self, name: str) -> ParamSpec:
        for p in self.params:
            if p.name == name:
                return p
        raise FamilyError(
            f"family '{self.name}' has no parameter '{name}'; its parameters: "
            + ", ".join(self.param_names)
        )

    # ---- values ---------------------------------------------------------------------
    def values_tensor(self, values: Mapping[str, float] | Sequence[float] | torch.Tensor) -> torch.Tensor:
        """A mapping {name: value} (every parameter named once) or a sequence -> [P] float64."""
        if isinstance(values, Mapping):
            self._check_names(values)
            out = torch.tensor([float(values[n]) for n in self.param_names], dtype=torch.float64)
        else:
            out = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
            if out.numel() != self.num_params:
                raise FamilyError(
                    f"family '{self.name}' has {self.num_params} parameter(s) "
                    f"({', '.join(self.param_names)}); got {out.numel()} value(s)"
                )
        self.validate(out)
        return out

    def _check_names(self, values: Mapping[str, Any]) -> None:
        """Every parameter named once in ``values``, no other name (FamilyError otherwise)."""
        unknown = [k for k in values if k not in self.param_names]
        if unknown:
            self.spec(unknown[0])  # raises with the list of parameters
        missing = [n for n in self.param_names if n not in values]
        if missing:
            raise FamilyError(f"family '{self.name}': no value given for parameter(s) {', '.join(missing)}")

    def values_rows(
        self, values: Mapping[str, Any] | Sequence[float] | torch.Tensor, n: int
    ) -> torch.Tensor:
        """Values for ``n`` envs -> ``[n, P]`` float64, checked against the physical bounds.

        ``values``: a mapping ``{name: value or [n] values}`` (every parameter named once), a
        ``[P]`` sequence (the same variant in every env) or an ``[n, P]`` array.
        """
        if isinstance(values, Mapping):
            self._check_names(values)
            cols = []
            for name in self.param_names:
                col = torch.as_tensor(values[name], dtype=torch.float64).reshape(-1)
                if col.numel() not in (1, n):
                    raise FamilyError(f"family '{self.name}': {name} needs one value or {n} (one per env), "
                                      f"got {col.numel()}")
                cols.append(col.expand(n))
            out = torch.stack(cols, dim=-1)
        else:
            out = torch.as_tensor(values, dtype=torch.float64)
            if out.ndim <= 1:
                out = self.values_tensor(out).expand(n, self.num_params)
            elif tuple(out.shape) != (n, self.num_params):
                raise FamilyError(f"family '{self.name}': expected values of shape [{n}, {self.num_params}] "
                                  f"({', '.join(self.param_names)}), got {list(out.shape)}")
        self.validate(out)
        return out.clone()

    def as_dict(self, values: torch.Tensor) -> dict[str, float]:
        """[P] -> {name: float}."""
        return {n: float(v) for n, v in zip(self.param_names, values.reshape(-1).tolist())}

    def label(self, values: torch.Tensor | Sequence[float]) -> str:
        """[P] -> ``"m=2,l=0.5"``: the one spelling of a variant in tables, plots and messages."""
        flat = torch.as_tensor(values).reshape(-1).tolist()
        return ",".join(f"{n}={float(x):g}" for n, x in zip(self.param_names, flat))

    def validate(self, values: torch.Tensor) -> None:
        """Raise :class:`FamilyError` naming the first parameter outside its physical bounds."""
        v = torch.as_tensor(values, dtype=torch.float64).reshape(-1, self.num_params)
        for j, p in enumerate(self.params):
            bad = ~p.in_bounds(v[:, j])
            if bool(bad.any()):
                x = float(v[:, j][bad][0])
                raise FamilyError(
                    f"parameter {p.name}={x:g} is outside its physical bounds: {p.bounds_text()}"
                )

    def in_train_range(self, values: torch.Tensor) -> torch.Tensor:
        """[..., P] -> [...] bool: every coordinate inside its train ranges."""
        v = torch.as_tensor(values, dtype=torch.float64)
        ok = torch.ones(v.shape[:-1], dtype=torch.bool, device=v.device)
        for j, p in enumerate(self.params):
            ok &= p.in_train(v[..., j])
        return ok

    def split_of(self, values: torch.Tensor) -> list[str]:
        """[M, P] -> 'interpolation' or 'extrapolation' per row (relative to the train range)."""
        inside = self.in_train_range(torch.as_tensor(values, dtype=torch.float64).reshape(-1, self.num_params))
        return ["interpolation" if b else "extrapolation" for b in inside.tolist()]

    def sample(
        self,
        n: int,
        generator: torch.Generator,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """[n, P] draws from the train distribution, reproducible for a seeded generator.

        Draws happen on the generator's device (pass a CUDA generator to sample on the GPU).
        """
        cols = [p.sample(n, generator) for p in self.params]
        out = torch.stack(cols, dim=-1)
        return out.to(device=device or out.device, dtype=dtype)

    def context(self, values: torch.Tensor) -> torch.Tensor:
        """[..., P] physical values -> [..., context_dim] network context.

        The one transform used at train, evaluation and adaptation time: log scale for
        masses and gains' magnitudes, min-max to [-1, 1] over the train range, the sign
        of a signed gain kept as its own feature; then the ``distractors`` columns.
        """
        v = torch.as_tensor(values)
        parts = [p.to_context(v[..., j]) for j, p in enumerate(self.params)]
        if self.distractors:
            parts.append(distractor_context(v, self.distractors).to(parts[0].dtype))
        return torch.cat(parts, dim=-1).to(v.dtype if v.is_floating_point() else torch.float32)

    def heldout_values(self, split: str) -> torch.Tensor:
        """[M, P] float64 fixed held-out values of 'interpolation' or 'extrapolation'."""
        if split not in self.heldout:
            raise FamilyError(f"unknown split '{split}'; expected one of: {', '.join(SPLITS)}")
        return self.heldout[split].clone()

    def grid(self, points: int) -> torch.Tensor:
        """[points**P, P] sweep across the physical bounds (log-spaced for log parameters;
        a signed parameter sweeps both signs)."""
        axes = []
        for p in self.params:
            lo, hi = p.bounds
            if p.context == "log":
                ax = torch.logspace(math.log10(lo), math.log10(hi), points, dtype=torch.float64)
            else:
                ax = torch.linspace(lo, hi, points, dtype=torch.float64)
            ax = ax.clamp(lo, hi)  # logspace rounds 10**log10(0.005) to 0.00499..., out of bounds
            if p.signed:
                ax = torch.cat([-ax.flip(0), ax])
            axes.append(ax)
        return torch.cartesian_prod(*axes).reshape(-1, self.num_params)

    # ---- Gymnasium ------------------------------------------------------------------
    def _fail(self, where: str, msg: str) -> FamilyError:
        return _Reader(self.source).fail(where, msg)

    def _no_attribute(self, base: Any, where: str, name: str) -> FamilyError:
        known = _numeric_attributes(base)
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        shown = ", ".join(known[:30]) + (", ..." if len(known) > 30 else "")  # one readable line
        return self._fail(where, f"{self.env_id} has no attribute '{name}'{hint}; its numeric attributes: "
                                 + (shown or "(none)"))

    @property
    def mujoco_params(self) -> tuple[ParamSpec, ...]:
        """The parameters that are MuJoCo model quantities (``params.<p>.mujoco``)."""
        return tuple(p for p in self.params if p.mujoco is not None)

    def apply(self, env: Any, values: Mapping[str, float] | torch.Tensor | Sequence[float]) -> None:
        """Set the parameters on ``env.unwrapped``, then recompute the derived attributes.

        A MuJoCo parameter sets its model quantity relative to the compiled model's value,
        then ``mj_setConst`` recomputes MuJoCo's derived constants
        (:func:`hyperrl.mujoco_params.apply_to_env`)."""
        v = self.values_tensor(values)
        base = env.unwrapped
        settings = [(f"fixed.{k}", k, x) for k, x in self.fixed.items()]
        settings += [(f"params.{p.name}", p.name, x) for p, x in zip(self.params, v.tolist()) if p.mujoco is None]
        for where, name, x in settings:
            if not hasattr(base, name):
                raise self._no_attribute(base, where, name)
            setattr(base, name, float(x))
        if self.mujoco_params:
            if not is_mujoco_env(base):
                raise self._fail(f"params.{self.mujoco_params[0].name}.mujoco",
                                 f"{self.env_id} is not a MuJoCo env (its unwrapped env has no MjModel 'model')")
            idx = [j for j, p in enumerate(self.params) if p.mujoco is not None]
            apply_to_env(base, [self.params[j].mujoco for j in idx], [float(v[j]) for j in idx],
                         [f"params.{self.params[j].name}.mujoco" for j in idx], self._fail, self.env_id)
        for name, expr in self.derived.items():
            setattr(base, name, self._derived_value(base, name, expr, v))

    def _derived_value(self, base: Any, name: str, expr: str, values: torch.Tensor) -> Any:
        """``derived.<name>`` evaluated on ``base`` (the parameters ``values`` already set);
        an error or a result that is not a finite number is a FamilyError naming the key and
        the values."""
        where = f"derived.{name}"
        tree = check_expr(expr, f"family file {self.source}: {where}")

        def lookup(attr: str) -> Any:
            if not hasattr(base, attr):
                raise self._no_attribute(base, where, attr)
            return getattr(base, attr)

        at = f"at {self.label(values)}"
        try:
            out = eval_expr(tree, lookup)
        except ZeroDivisionError:
            raise self._fail(where, f"{expr!r} divides by zero {at}") from None
        except OverflowError:
            raise self._fail(where, f"{expr!r} overflows {at}") from None
        except (ArithmeticError, TypeError, ValueError, RecursionError) as e:
            raise self._fail(where, f"{expr!r} fails {at}: {type(e).__name__}: {e}") from None
        if not _finite_number(out):
            raise self._fail(where, f"{expr!r} is {out!r} {at}; a derived attribute must be a finite number")
        return out

    def make_env(self, values: Mapping[str, float] | torch.Tensor | Sequence[float], **make_kwargs: Any):
        """A real ``gymnasium.make`` env (time limit included) with the parameters applied."""
        kwargs = dict(self.env_kwargs)
        kwargs.update(make_kwargs)
        if self.max_episode_steps is not None:
            kwargs.setdefault("max_episode_steps", self.max_episode_steps)
        env = gym_make(self.env_id, **kwargs)
        self.apply(env, values)
        return env

    @contextlib.contextmanager
    def probe_env(self) -> Iterator[Any]:
        """``gymnasium.make(env_id, **env_kwargs)`` as the YAML gives them (no parameters
        applied), closed on exit: the env the load checks run on. A failure to build it is a
        FamilyError naming ``env_kwargs`` when they are what the env refuses, else ``env_id``."""
        kwargs = dict(self.env_kwargs)
        try:
            env = gym_make(self.env_id, **kwargs)
        except Exception as e:  # noqa: BLE001 - whatever gym.make raises, this family cannot run
            call = ", ".join([repr(self.env_id), *(f"{k}={v!r}" for k, v in kwargs.items())])
            problem = " ".join(f"{type(e).__name__}: {e}".split())
            if kwargs and isinstance(e, (TypeError, ValueError)):  # an unknown or ill-typed keyword
                raise self._fail("env_kwargs", f"gym.make({call}) fails ({problem}); env_kwargs must be "
                                               f"keyword arguments {self.env_id} takes") from None
            raise self._fail("env_id", f"gym.make({call}) fails ({problem}); env_id must be a registered "
                                       "Gymnasium id whose dependencies are installed") from None
        try:
            yield env
        finally:
            env.close()

    def probe_values(self, max_points: int = 64) -> torch.Tensor:
        """[K, P] float64 points :meth:`check_env` evaluates the derived attributes at.

        Every corner of the physical bounds (a signed parameter at both ends with both
        signs) while there are at most ``max_points``; beyond that, each parameter at each
        of its ends with the others at the middle of their first train range, plus every
        parameter at its lower bound and every one at its upper bound.
        """
        ends = []
        for p in self.params:
            lo, hi = p.bounds
            ends.append(list(dict.fromkeys([lo, hi, -lo, -hi] if p.signed else [lo, hi])))
        if math.prod(len(e) for e in ends) <= max_points:
            rows = [list(pt) for pt in itertools.product(*ends)]
        else:
            mid = [0.5 * (p.train_ranges[0][0] + p.train_ranges[0][1]) for p in self.params]
            rows = [[e[0] for e in ends], [e[1] if len(e) > 1 else e[0] for e in ends]]
            rows += [mid[:j] + [x] + mid[j + 1:] for j, e in enumerate(ends) for x in e]
        return torch.tensor(rows, dtype=torch.float64).reshape(-1, self.num_params)

    def check_env(self) -> None:
        """Refuse, naming the file and the key, a family its env cannot run.

        On one :meth:`probe_env`: ``env_id`` and ``env_kwargs`` build an env; every varying
        parameter, ``fixed`` and ``derived`` attribute exists on the unwrapped env; no
        attribute the env computes from a parameter is left stale
        (:meth:`check_stale_attributes`); every ``derived`` expression gives a finite number
        at each of :meth:`probe_values`. :func:`load_family` runs it on every load.
        """
        with self.probe_env() as env:
            base = env.unwrapped
            declared = [(f"params.{p.name}", p.name) for p in self.params if p.mujoco is None]
            declared += [(f"{section}.{n}", n) for section in ("fixed", "derived") for n in getattr(self, section)]
            for where, name in declared:
                if not hasattr(base, name):
                    raise self._no_attribute(base, where, name)
            self.check_stale_attributes(env)  # on the env's own values, before the probes change them
            for values in self.probe_values():
                self.apply(env, values)

    def stale_attributes(self, env: Any | None = None) -> list[tuple[str, str, str]]:
        """Attributes that would go stale: ``[(attr, expression, parameter)]``.

        An attribute qualifies when the env's ``__init__`` computes it from a varying
        parameter (:func:`init_computed_attributes`), the family neither varies, fixes nor
        derives it, and the dynamics read it: scaling it changes one step's outcome from the
        same state and action. Each is a physics bug the family must fix with a ``derived``
        entry; :func:`load_family` refuses such a family. ``env`` is a fresh
        :meth:`probe_env` (one is made when not given); it is reset and stepped.
        """
        import copy

        if env is None:
            with self.probe_env() as probe:
                return self.stale_attributes(probe)
        computed = init_computed_attributes(type(env.unwrapped))
        declared = set(self.param_names) | set(self.fixed) | set(self.derived)
        attrs = {p.name for p in self.params if p.mujoco is None}
        found = []
        for attr, expr in computed.items():
            reads = expr_names(check_expr(expr, "")) & attrs
            value = getattr(env.unwrapped, attr, None)
            if attr in declared or not reads or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            env.reset(seed=0)
            env.action_space.seed(0)
            action = env.action_space.sample()
            outs = []
            try:
                for scale in (1.0, 1.5):
                    e = copy.deepcopy(env)
                    setattr(e.unwrapped, attr, value * scale if value != 0 else 1.0)
                    obs, reward, *_ = e.step(action)
                    outs.append((torch.as_tensor(obs, dtype=torch.float64).flatten(), float(reward)))
                read = not torch.equal(outs[0][0], outs[1][0]) or outs[0][1] != outs[1][1]
            except Exception:  # an env that cannot be copied: assume the dynamics read it
                read = True  # (declaring an unread attribute under derived is harmless)
            if read:
                found.append((attr, expr, sorted(reads)[0]))
        return found

    def check_stale_attributes(self, env: Any | None = None) -> None:
        """Raise :class:`FamilyError` naming every attribute :meth:`stale_attributes` finds and
        the ``derived`` entries that fix them."""
        stale = self.stale_attributes(env)
        if stale:
            names = ", ".join(f"{a} = {e}" for a, e, _ in stale)
            params = ", ".join(sorted({p for _, _, p in stale}))
            fix = ", ".join(f"{a}: {e}" for a, e, _ in stale)
            raise FamilyError(
                f"family '{self.name}': {self.env_id} computes {names} once in __init__ and its dynamics "
                f"read {'them' if len(stale) > 1 else 'it'}, so setting {params} alone would leave "
                f"{'them' if len(stale) > 1 else 'it'} stale (the CARL/RLlib CartPole bug); add to the "
                f"family YAML: derived: {{{fix}}}")

    def save_copy(self, path: str | os.PathLike) -> None:
        """Write this family's YAML to ``path`` (a run's ``family.yaml``): the source file as
        is, or with ``distractors`` set when it differs from the file's (a config override)."""
        text = Path(self.source).read_text()
        raw = parse_yaml(text)
        if raw.get("distractors", 0) == self.distractors:
            atomic_write_text(path, text)
            return
        raw["distractors"] = self.distractors
        atomic_write_text(path, yaml.safe_dump(raw, sort_keys=False))

    def save_one_variant(self, values: Sequence[float], path: str | os.PathLike) -> Path:
        """Write a one-variant copy of this family to ``path``: every parameter's train range
        is the point ``values``, what a per-variant oracle trains on. It keeps the family's
        name (an oracle is a run of the family, on one of its variants), holds ``values`` as
        its interpolation point and a point beyond it as its extrapolation point (both sets
        are required), and no distractors."""
        raw = parse_yaml(Path(self.source).read_text())
        values = [float(v) for v in values]
        for (name, spec), v in zip(raw["params"].items(), values):
            spec["train"] = {"dist": "uniform", "ranges": [[v, v]]}
        first = self.params[0]
        # the extrapolation point only has to lie outside the train point
        other = [-values[0] if first.signed else (first.bounds[1] if values[0] != first.bounds[1] else first.bounds[0]),
                 *values[1:]]
        names = list(raw["params"])
        raw["heldout"] = {"interpolation": {"values": [dict(zip(names, values))]},
                          "extrapolation": {"values": [dict(zip(names, other))]}}
        raw.pop("distractors", None)
        atomic_write_text(path, yaml.safe_dump(raw, sort_keys=False))
        return Path(path)

    def constants(self) -> dict[str, float]:
        """Fixed attribute values, for a batched simulator's constants."""
        return {k: float(v) for k, v in self.fixed.items()}


# --------------------------------------------------------------------------------------
# YAML loading with precise error messages
# --------------------------------------------------------------------------------------
class _Reader:
    """Walks a parsed YAML mapping; every complaint names the file and the key path."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, where: str, msg: str) -> FamilyError:
        return FamilyError(f"family file {self.source}: {where}: {msg}")

    def mapping(self, obj: Any, where: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict:
        if not isinstance(obj, dict):
            raise self.fail(where, f"expected a mapping, got {type(obj).__name__}")
        for k in obj:
            if k not in allowed:
                raise self.fail(
                    f"{where}.{k}" if where != "(top level)" else str(k),
                    f"unknown key; allowed keys: {', '.join(allowed)}",
                )
        for k in required:
            if k not in obj:
                raise self.fail(where, f"missing required key '{k}'")
        return obj

    def number(self, obj: Any, where: str) -> float:
        if isinstance(obj, bool) or not isinstance(obj, (int, float)) or not math.isfinite(obj):
            raise self.fail(where, f"expected a finite number, got {obj!r}")
        return float(obj)

    def interval(self, obj: Any, where: str, point: bool = False) -> tuple[float, float]:
        """``[low, high]`` with low < high (``point``: low == high is allowed too)."""
        if not isinstance(obj, (list, tuple)) or len(obj) != 2:
            raise self.fail(where, f"expected [low, high], got {obj!r}")
        lo, hi = self.number(obj[0], f"{where}[0]"), self.number(obj[1], f"{where}[1]")
        if not (lo <= hi if point else lo < hi):
            raise self.fail(where, f"low must be {'<=' if point else '<'} high, got [{lo:g}, {hi:g}]")
        return lo, hi

    def choice(self, obj: Any, where: str, options: Sequence[str]) -> str:
        if obj not in options:
            raise self.fail(where, f"expected one of {', '.join(options)}, got {obj!r}")
        return obj

    def string(self, obj: Any, where: str) -> str:
        if not isinstance(obj, str) or not obj:
            raise self.fail(where, f"expected a non-empty string, got {obj!r}")
        return obj


def _parse_param(r: _Reader, name: str, raw: Any) -> ParamSpec:
    where = f"params.{name}"
    d = r.mapping(raw, where, ["bounds", "signed", "context", "train", "unit", "description", "mujoco"],
                  ["bounds", "train"])
    bounds = r.interval(d["bounds"], f"{where}.bounds")
    signed = d.get("signed", False)
    if not isinstance(signed, bool):
        raise r.fail(f"{where}.signed", f"expected true or false, got {signed!r}")
    if signed and bounds[0] < 0:
        raise r.fail(f"{where}.bounds", "a signed parameter's bounds are on its magnitude: low must be >= 0")
    context = r.choice(d.get("context", "linear"), f"{where}.context", _SCALES)
    if context == "log" and bounds[0] <= 0:
        raise r.fail(f"{where}.bounds", "a log-scale parameter needs a positive lower bound")
    train = r.mapping(d["train"], f"{where}.train", ["dist", "ranges"], ["ranges"])
    dist = r.choice(train.get("dist", "uniform"), f"{where}.train.dist", _DISTS)
    ranges_raw = train["ranges"]
    if not isinstance(ranges_raw, list) or not ranges_raw:
        raise r.fail(f"{where}.train.ranges", "expected a non-empty list of [low, high] intervals")
    # A point [v, v] trains on the one value v (a family of one variant: an oracle's).
    ranges = tuple(r.interval(x, f"{where}.train.ranges[{i}]", point=True) for i, x in enumerate(ranges_raw))
    if len(ranges) > 1 and any(lo == hi for lo, hi in ranges):
        raise r.fail(f"{where}.train.ranges", "a point [v, v] must be the only range (it has no length to "
                     "sample in proportion to)")
    target = None
    if "mujoco" in d:
        target = parse_target(d["mujoco"], f"{where}.mujoco", r.fail, signed, bounds)
    spec = ParamSpec(name=name, bounds=bounds, signed=signed, context=context, dist=dist,
                     train_ranges=ranges, unit=str(d.get("unit", "")),
                     description=str(d.get("description", "")), mujoco=target)
    for i, (lo, hi) in enumerate(ranges):
        ends = torch.tensor([lo, hi], dtype=torch.float64)
        if not bool(spec.in_bounds(ends).all()):
            raise r.fail(f"{where}.train.ranges[{i}]",
                         f"[{lo:g}, {hi:g}] leaves the physical bounds {spec.bounds_text()}")
        if signed and lo < 0 < hi and bounds[0] > 0:  # |x| < bounds[0] near 0: not physical
            raise r.fail(f"{where}.train.ranges[{i}]",
                         f"[{lo:g}, {hi:g}] crosses 0 and so leaves the physical bounds "
                         f"{spec.bounds_text()}; give the two signs as separate ranges")
        if dist == "log_uniform" and lo * hi <= 0:
            raise r.fail(f"{where}.train.ranges[{i}]", "log_uniform ranges must not contain 0")
    return spec


def _parse_split(r: _Reader, split: str, raw: Any, params: tuple[ParamSpec, ...]) -> torch.Tensor:
    where = f"heldout.{split}"
    d = r.mapping(raw, where, ["values", "grid", "keep"])
    names = [p.name for p in params]
    rows: list[list[float]] = []
    if "values" in d:
        if not isinstance(d["values"], list):
            raise r.fail(f"{where}.values", "expected a list of {parameter: value} mappings")
        for i, point in enumerate(d["values"]):
            pw = f"{where}.values[{i}]"
            if len(names) == 1 and not isinstance(point, dict):
                point = {names[0]: point}  # shorthand for 1-parameter families
            pt = r.mapping(point, pw, names, names)
            rows.append([r.number(pt[n], f"{pw}.{n}") for n in names])
    if "grid" in d:
        g = r.mapping(d["grid"], f"{where}.grid", names, names)
        axes = []
        for n in names:
            if not isinstance(g[n], list) or not g[n]:
                raise r.fail(f"{where}.grid.{n}", "expected a non-empty list of numbers")
            axes.append([r.number(x, f"{where}.grid.{n}[{i}]") for i, x in enumerate(g[n])])
        keep = r.choice(d.get("keep", "all"), f"{where}.keep", ["all", "inside_train", "outside_train"])
        for pt in itertools.product(*axes):
            t = torch.tensor(pt, dtype=torch.float64)
            inside = all(bool(p.in_train(t[j:j + 1])[0]) for j, p in enumerate(params))
            if keep == "all" or (keep == "inside_train") == inside:
                rows.append(list(pt))
    elif "keep" in d:
        raise r.fail(f"{where}.keep", "only meaningful with 'grid'")
    if not rows:
        raise r.fail(where, "no held-out values: give 'values' and/or 'grid'")
    vals = torch.tensor(rows, dtype=torch.float64)
    for i, row in enumerate(vals):
        for j, p in enumerate(params):
            if not bool(p.in_bounds(row[j:j + 1])[0]):
                raise r.fail(where, f"value {p.name}={float(row[j]):g} is outside the physical bounds "
                                    f"{p.bounds_text()}")
        inside = all(bool(p.in_train(row[j:j + 1])[0]) for j, p in enumerate(params))
        pretty = ", ".join(f"{n}={float(x):g}" for n, x in zip(names, row))
        if split == "interpolation" and not inside:
            raise r.fail(where, f"point ({pretty}) is outside the train range; interpolation points must be inside")
        if split == "extrapolation" and inside:
            raise r.fail(where, f"point ({pretty}) is inside the train range; extrapolation points must be outside")
    return vals


_TOP_KEYS = ["name", "description", "env_id", "env_kwargs", "max_episode_steps", "batched",
             "success_return", "params", "fixed", "derived", "heldout", "distractors"]


def family_from_dict(raw: Any, source: str = "<dict>") -> Family:
    """Build a :class:`Family` from parsed YAML, rejecting unknown or ill-typed keys.

    Only the data is checked here; what needs the env (``env_id``, attributes, ``derived``
    values, stale caches) is :meth:`Family.check_env`, which :func:`load_family` runs.
    """
    r = _Reader(source)
    d = r.mapping(raw, "(top level)", _TOP_KEYS, ["name", "env_id", "params", "heldout"])
    name = r.string(d["name"], "name")
    env_id = r.string(d["env_id"], "env_id")
    env_kwargs = r.mapping(d.get("env_kwargs") or {}, "env_kwargs", list((d.get("env_kwargs") or {}).keys()))
    mes = d.get("max_episode_steps")
    if mes is not None and (isinstance(mes, bool) or not isinstance(mes, int) or mes < 1):
        raise r.fail("max_episode_steps", f"expected a positive integer, got {mes!r}")
    batched = d.get("batched")
    if batched is not None:
        batched = r.string(batched, "batched")
    success = d.get("success_return")
    if success is not None:
        success = r.number(success, "success_return")
    praw = d["params"]
    if not isinstance(praw, dict) or not praw:
        raise r.fail("params", "expected a non-empty mapping of parameter name -> spec")
    params = tuple(_parse_param(r, str(k), v) for k, v in praw.items())
    fixed_raw = d.get("fixed") or {}
    if not isinstance(fixed_raw, dict):
        raise r.fail("fixed", "expected a mapping of attribute -> number")
    fixed = {str(k): r.number(v, f"fixed.{k}") for k, v in fixed_raw.items()}
    for k in fixed:
        if k in [p.name for p in params]:
            raise r.fail(f"fixed.{k}", "is also a varying parameter")
    derived_raw = d.get("derived") or {}
    if not isinstance(derived_raw, dict):
        raise r.fail("derived", "expected a mapping of attribute -> expression")
    derived: dict[str, str] = {}
    for k, v in derived_raw.items():
        if not isinstance(v, (str, int, float)) or isinstance(v, bool):
            raise r.fail(f"derived.{k}", f"expected an expression string, got {v!r}")
        check_expr(str(v), f"family file {source}: derived.{k}")
        derived[str(k)] = str(v)
    distractors = d.get("distractors", 0)
    if isinstance(distractors, bool) or not isinstance(distractors, int) or not 0 <= distractors <= MAX_DISTRACTORS:
        raise r.fail("distractors", f"expected an integer in [0, {MAX_DISTRACTORS}], got {distractors!r}")
    held = r.mapping(d["heldout"], "heldout", list(SPLITS), list(SPLITS))
    heldout = {s: _parse_split(r, s, held[s], params) for s in SPLITS}
    return Family(name=name, env_id=env_id, params=params, heldout=heldout,
                  description=str(d.get("description", "")), env_kwargs=dict(env_kwargs),
                  max_episode_steps=mes, batched=batched, success_return=success,
                  fixed=fixed, derived=derived, distractors=distractors, source=source)


def _is_mujoco_id(env_id: str) -> bool:
    """Whether a registered id's entry point is a MuJoCo env (by its module path)."""
    import gymnasium as gym

    spec = gym.registry.get(env_id)
    entry = getattr(spec, "entry_point", None)
    return isinstance(entry, str) and "mujoco" in entry


def gym_make(env_id: str, **kwargs: Any) -> Any:
    """``gymnasium.make(env_id, **kwargs)``; for a MuJoCo env without MuJoCo's deprecation
    warning about Gymnasium's own model files (:func:`hyperrl.mujoco_params.quiet_compile`)."""
    import gymnasium as gym

    if _is_mujoco_id(env_id):
        with quiet_compile():
            return gym.make(env_id, **kwargs)
    return gym.make(env_id, **kwargs)


def family_path(name_or_path: str | os.PathLike) -> Path:
    """The YAML file of a built-in family name (``cartpole-mass``) or of a path; FamilyError
    when there is none."""
    s = str(name_or_path)
    path = Path(s)
    looks_like_path = s.endswith((".yaml", ".yml")) or os.sep in s or "/" in s
    if not looks_like_path:
        candidate = builtin_families_dir() / f"{s}.yaml"
        if not candidate.is_file():
            avail = ", ".join(list_families()) or "(none found)"
            raise FamilyError(
                f"unknown family '{s}'; available: {avail} (or pass the path of a family YAML file)"
            )
        path = candidate
    if not path.is_file():
        raise FamilyError(f"family file {s} does not exist")
    return path


def load_family(name_or_path: str | os.PathLike) -> Family:
    """Load a built-in family by name (``cartpole-mass``) or any family YAML by path.

    Everything is checked here, once, so a family that loads can run: the YAML
    (:mod:`hyperrl.yamlio`: no duplicate key, no alias bomb, at most 1 MiB), the schema
    (:func:`family_from_dict`) and the env (:meth:`Family.check_env`, one ``gym.make``).
    Every refusal is one :class:`FamilyError` line naming the file and the key.
    """
    path = family_path(name_or_path)
    try:
        raw = read_yaml_file(path)
    except YamlInputError as e:  # duplicate key, alias bomb, over 1 MiB, malformed
        raise FamilyError(f"family file {path}: {e}") from None
    except OSError as e:
        raise FamilyError(f"family file {path}: cannot read: {e}") from None
    family = family_from_dict(raw, source=str(path))
    family.check_env()
    return family
