"""Stable-baselines3 baselines on a family, written as run dirs that :func:`hyperrl.load` reads.

    python -m hyperrl.baselines --env-family cartpole-mass --method dr|concat|oracle
        [--total-steps N] [--seed N] [--run-dir DIR] [--device cpu|auto|cuda]
        [--oracle-split extrapolation|interpolation|all] [--oracle-max-variants K]
        [--eval-episodes E] [--eval-interval-steps S] [--threads T] [--vec-env auto|batched|dummy]
        [--set KEY=VALUE ...]

Every method is SB3 PPO (``MlpPolicy``) with rl-baselines3-zoo's tuned hyperparameters for
the family's env id (:data:`ZOO_HYPERPARAMS`, those of the Gymnasium env a hyperrl env
extends; SB3's defaults for an env id the zoo table lacks), on the family's batched simulator
through :class:`hyperrl.sb3.SB3VecEnv` where that trains faster (CartPole and Acrobot
families; ``--vec-env``), else on real Gymnasium envs (:class:`hyperrl.wrappers.FamilyEnv`)
in SB3's ``DummyVecEnv``; the simulators step as Gymnasium's envs do (to 1e-10 in float64):

* ``dr`` (domain randomisation): one policy; the parameters are re-drawn from the train
  distribution every episode; the policy never sees them.
* ``concat``: the same, with the family's context vector (the one the hypernetwork is
  conditioned on) appended to the observation.
* ``oracle``: one separate policy per held-out variant, trained on that variant alone
  (fixed values), each with the full ``--total-steps`` budget: the budget is **per
  variant**, so the run's ``env_steps`` is K times it. Variants: the ``--oracle-split``
  held-out set (default ``extrapolation``: the adaptation comparison scores against
  per-variant oracles there), or an evenly spaced subset of ``--oracle-max-variants K``
  of it (indices ``round(linspace(0, M-1, K))`` in the family YAML's order; recorded in
  ``run.json`` and ``metrics.json``).

SB3 finishes its last rollout, so ``env_steps`` may exceed ``--total-steps`` by less than one
rollout (``n_envs * n_steps``). The run dir (default ``runs/<family>/<method>-<timestamp>-s<seed>``;
an existing non-empty dir is refused) holds ``run.json`` (method, family, seed, total_steps,
hyperparameters; oracle: the variants and their model files), ``family.yaml``, ``model.zip``
(oracle: ``models/<i>.zip``), ``metrics.json`` (``env_steps``, ``wall_clock_s``, the final
zero-shot held-out returns ``eval_interpolation_return``/``eval_extrapolation_return`` and
per variant ``heldout``; oracle: only the variants it has, the other split is ``null``),
TensorBoard scalars ``eval/<split>/return_mean`` in the run dir and SB3's own logs under
``sb3/``. The held-out evaluation is :func:`hyperrl.episodes.evaluate_values`, the code
that scores the hypernetwork (batched simulator, deterministic actions). Training runs on
``--threads 1`` by default: SB3's small MLPs are fastest single-threaded (5x faster than two
threads on a busy 2-core machine).
"""

from __future__ import annotations

import inspect
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hyperrl import __version__
from hyperrl.cli import int_range, main_guard, make_parser, parse_device, seed_arg
from hyperrl.episodes import HELDOUT_EVAL_SEED, Actor, ActorFactory, evaluate_values
from hyperrl.errors import HyperrlError
from hyperrl.families import SPLITS, Family, load_family
from hyperrl.fileio import fresh_run_dir, write_json
from hyperrl.gym_envs import base_env_id
from hyperrl.ppo import clip_action
from hyperrl.runs import Values, read_metrics, read_run_info
from hyperrl.wrappers import FamilyEnv

__all__ = [
    "METHODS",
    "ORACLE_SPLITS",
    "BaselineRun",
    "ZOO_HYPERPARAMS",
    "load_baseline_run",
    "make_sb3_ppo",
    "sb3_vec_env",
    "resolve_vec_env",
    "sb3_actor",
    "train_sb3_until",
    "select_variants",
    "make_ppo",
    "model_actor",
    "run_baseline",
    "main",
]

METHODS = ("dr", "concat", "oracle")
ORACLE_SPLITS = ("extrapolation", "interpolation", "all")
DEFAULT_TOTAL_STEPS = 100_000
MATCH_RTOL = 1e-9  # an oracle model serves values equal to its variant's within this relative tolerance


# --------------------------------------------------------------------------------------
# SB3 PPO on a family: dr (no context) and concat (context appended to the observation),
# scored by the same evaluation code as the hypernetwork; also used by the benchmarks
# --------------------------------------------------------------------------------------
# rl-baselines3-zoo's tuned PPO hyperparameters (hyperparams/ppo.yml); lin_X = linear decay.
ZOO_HYPERPARAMS: dict[str, dict[str, Any]] = {
    "CartPole-v1": dict(n_envs=8, n_steps=32, batch_size=256, gae_lambda=0.8, gamma=0.98, n_epochs=20,
                        ent_coef=0.0, learning_rate=("lin", 1e-3), clip_range=("lin", 0.2)),
    "Pendulum-v1": dict(n_envs=4, n_steps=1024, gae_lambda=0.95, gamma=0.9, n_epochs=10, ent_coef=0.0,
                        learning_rate=1e-3, clip_range=0.2, use_sde=True, sde_sample_freq=4),
    "Acrobot-v1": dict(n_envs=16, n_steps=256, gae_lambda=0.94, gamma=0.99, n_epochs=4, ent_coef=0.0),
}


def sb3_actor(model: Any, append_context: bool, deterministic: bool = True, seed: int = 0) -> ActorFactory:
    """Actor factory for an SB3 model on any VecEnv backend.

    Continuous actions are clipped and stay float32, as Gymnasium receives them. Stochastic
    actions are sampled with torch's RNG re-seeded from (seed, call number) inside
    ``fork_rng``: reproducible, and the global RNG is left alone.
    """

    def factory(context: torch.Tensor, values: torch.Tensor | None = None) -> Actor:
        calls = [0]

        def policy(obs: torch.Tensor) -> torch.Tensor:
            x = torch.cat([obs, context.to(obs.dtype)], -1) if append_context else obs
            dev = torch.device(model.device)
            with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []), torch.no_grad():
                torch.manual_seed(seed * 1_000_003 + calls[0])
                action = model.policy._predict(x.to(dev, torch.float32), deterministic=deterministic)
            calls[0] += 1
            if action.dtype.is_floating_point:
                action = clip_action(action, torch.as_tensor(model.action_space.low, device=action.device),
                                     torch.as_tensor(model.action_space.high, device=action.device))
            return action.to(obs.device)

        return policy

    return factory


def _schedule(v: Any) -> Any:
    if isinstance(v, tuple) and v[0] == "lin":
        start = v[1]
        return lambda progress: progress * start
    return v


VEC_ENVS = ("auto", "batched", "dummy")
# Simulators on which SB3 PPO with the zoo's envs collects rollouts faster through
# hyperrl.sb3.SB3VecEnv than through a DummyVecEnv of Gymnasium envs (benchmarks/README.md,
# bench_gym_api.py --part sb3): CartPole's 8 and Acrobot's 16 envs; Pendulum's 4 cheap envs
# step faster one by one than through the torch simulator's fixed per-step cost.
SB3_BATCHED = ("cartpole", "acrobot")


def resolve_vec_env(family: Family, vec_env: str = "auto") -> str:
    """``batched`` or ``dummy``: the VecEnv :func:`sb3_vec_env` builds for ``vec_env``."""
    if vec_env not in VEC_ENVS:
        raise HyperrlError(f"--vec-env must be one of {', '.join(VEC_ENVS)}, got {vec_env!r}")
    if vec_env == "auto":
        return "batched" if family.batched in SB3_BATCHED else "dummy"
    if vec_env == "batched" and family.batched is None:
        raise HyperrlError(f"--vec-env batched: family '{family.name}' has no batched simulator")
    return vec_env


def sb3_vec_env(family: Family, method: str, n_envs: int, seed: int, values: torch.Tensor | None = None,
                vec_env: str = "auto"):
    """The SB3 ``VecEnv`` a baseline trains on: ``batched`` -- :class:`hyperrl.sb3.SB3VecEnv`
    over the family's batched simulator (float64, the precision Gymnasium computes in) in a
    ``VecMonitor``, seeded by the model; ``dummy`` -- SB3's ``DummyVecEnv`` of
    :class:`FamilyEnv`s (one Gymnasium env each, seeded ``seed * 1000 + rank``); ``auto`` --
    :func:`resolve_vec_env`. Both draw a variant per episode (``dr``/``concat``) or run
    ``values`` (``oracle``), ``concat`` with the context appended to the observation."""
    if resolve_vec_env(family, vec_env) == "batched":
        from stable_baselines3.common.vec_env import VecMonitor

        from hyperrl.sb3 import SB3VecEnv

        return VecMonitor(SB3VecEnv(family, n_envs, values=values, append_context=(method == "concat"),
                                    dtype=torch.float64))
    from stable_baselines3.common.env_util import make_vec_env

    return make_vec_env(
        lambda rank=0: FamilyEnv(family, values=values, append_context=(method == "concat"),
                                 seed=seed * 1000 + rank),
        n_envs=n_envs, seed=seed)


def make_sb3_ppo(family: Family, method: str, seed: int, device: str = "cpu",
                 values: torch.Tensor | None = None, vec_env: str = "auto", **overrides: Any):
    """SB3 PPO with the zoo hyperparameters for the family's env id on :func:`sb3_vec_env`:
    ``dr``/``concat`` draw a new variant every episode (``concat`` appends the context);
    ``oracle`` runs ``values``."""
    from stable_baselines3 import PPO

    if method not in ("dr", "concat", "oracle"):
        raise ValueError(f"method must be 'dr', 'concat' or 'oracle', got {method!r}")
    if (method == "oracle") != (values is not None):
        raise ValueError("values are required for 'oracle' and only for it")
    hp = hyperparams(family, overrides)
    n_envs = hp.pop("n_envs", 1)
    venv = sb3_vec_env(family, method, n_envs, seed, values, vec_env)
    hp = {k: _schedule(v) for k, v in hp.items()}
    return PPO("MlpPolicy", venv, seed=seed, device=device, verbose=0, **hp)


def train_sb3_until(
    model: Any,
    family: Family,
    method: str,
    target: float | None,
    max_steps: int,
    eval_every: int,
    episodes: int = 2,
    on_eval: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train ``model`` and evaluate it zero-shot on the held-out splits every ``eval_every``
    steps; stop at ``max_steps`` or once both split means reach ``target``."""
    from stable_baselines3.common.callbacks import BaseCallback

    history: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    eval_time = [0.0]
    actor = sb3_actor(model, method == "concat")

    def evaluate(step: int) -> dict[str, Any]:
        te = time.perf_counter()
        row: dict[str, Any] = {"step": step}
        for split in SPLITS:
            st = evaluate_values(actor, family, family.heldout_values(split), episodes, seed=HELDOUT_EVAL_SEED + len(history))
            row[split] = float(st.mean.mean())
        eval_time[0] += time.perf_counter() - te
        row["time_s"] = time.perf_counter() - t0
        row["train_time_s"] = row["time_s"] - eval_time[0]
        history.append(row)
        if on_eval:
            on_eval(row)
        return row

    class Every(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.next = eval_every

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                self.next += eval_every
                row = evaluate(self.num_timesteps)
                if target is not None and min(row["interpolation"], row["extrapolation"]) >= target:
                    return False
            return True

    cb = Every()
    model.learn(total_timesteps=max_steps, callback=cb)
    if not history or history[-1]["step"] != model.num_timesteps:
        evaluate(model.num_timesteps)
    hit = next((h for h in history if target is not None and min(h["interpolation"], h["extrapolation"]) >= target), None)
    return {"history": history, "reached": hit is not None,
            "time_to_target_s": hit["time_s"] if hit else None,
            "steps_to_target": hit["step"] if hit else None,
            "final": history[-1], "steps": model.num_timesteps,
            "wall_s": time.perf_counter() - t0,
            "steps_per_second": model.num_timesteps / max(time.perf_counter() - t0 - eval_time[0], 1e-9)}


# --------------------------------------------------------------------------------------
# Hyperparameters and model construction
# --------------------------------------------------------------------------------------
def _hp_text(v: Any) -> Any:
    """JSON-friendly hyperparameter: the zoo's ('lin', x) schedule as 'lin_x'."""
    if isinstance(v, tuple) and len(v) == 2 and v[0] == "lin":
        return f"lin_{v[1]}"
    return v


def _parse_hp_value(text: str) -> Any:
    from hyperrl.config import scalar_from_text

    v = scalar_from_text(text)
    if isinstance(v, str) and v.startswith("lin_"):
        try:
            return ("lin", float(v[4:]))
        except ValueError:
            raise HyperrlError(f"bad schedule {v!r}; expected lin_<number>, e.g. lin_0.001") from None
    return v


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings -> PPO keyword overrides (values parsed as YAML; ``lin_X`` is a
    linear schedule from X), checked against ``stable_baselines3.PPO``'s arguments."""
    from stable_baselines3 import PPO

    sig = inspect.signature(PPO.__init__).parameters
    defaults = {k: p.default for k, p in sig.items()
                if k not in {"self", "policy", "env", "seed", "device", "tensorboard_log", "verbose",
                             "_init_setup_model", "rollout_buffer_class"}}
    defaults["n_envs"] = 1
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise HyperrlError(f"--set expects KEY=VALUE, got {item!r}")
        if key not in defaults:
            raise HyperrlError(f"--set {key}: not a PPO hyperparameter; allowed: {', '.join(sorted(defaults))}")
        out[key] = _check_hp(key, _parse_hp_value(text), defaults[key], text)
    return out


_SCHEDULES = ("learning_rate", "clip_range", "clip_range_vf")  # number or lin_X
_DICTS = ("policy_kwargs", "rollout_buffer_kwargs")
_MAY_BE_NEGATIVE = ("sde_sample_freq",)  # -1: sample once per rollout
# Ranges beyond "a non-negative number" / "a positive integer", as PPO reads them: discount and
# GAE lambda are fractions; a zero grad-norm clip or KL target would stop every update.
_AT_MOST_ONE = ("gamma", "gae_lambda")
_POSITIVE = ("max_grad_norm", "target_kl")
_AT_LEAST_TWO = ("batch_size",)  # SB3 normalises advantages per minibatch: one sample is refused


def _check_hp(key: str, value: Any, default: Any, text: str) -> Any:
    """A ``--set`` value checked against the type of PPO's default for ``key`` (SB3 itself
    would fail much later, after the run dir exists, or with a bare TypeError)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)
    if key in _DICTS:
        ok = value is None or isinstance(value, dict)
        want = "a mapping, e.g. {net_arch: [64, 64]}"
    elif key in _SCHEDULES:
        ok = (number and value > 0) or (isinstance(value, tuple) and value[0] == "lin") or \
            (value is None and default is None)
        want = "a positive number or lin_<number>" + (" or null" if default is None else "")
    elif isinstance(default, bool):
        ok = isinstance(value, bool)
        want = "true or false"
    elif isinstance(default, int):
        if number and float(value).is_integer():
            value = int(value)
        least = 2 if key in _AT_LEAST_TWO else 1
        ok = isinstance(value, int) and not isinstance(value, bool) and (value >= least or key in _MAY_BE_NEGATIVE)
        want = "an integer" if key in _MAY_BE_NEGATIVE else f"an integer >= {least}"
    else:  # floats, and target_kl (None by default)
        low_ok = number and (value > 0 if key in _POSITIVE else value >= 0)
        ok = (low_ok and (key not in _AT_MOST_ONE or value <= 1)) or (value is None and default is None)
        want = ("a number in [0, 1]" if key in _AT_MOST_ONE else "a positive number" if key in _POSITIVE
                else "a non-negative number") + (" or null" if default is None else "")
        value = float(value) if number else value
    if not ok:
        raise HyperrlError(f"--set {key}: expected {want}, got {text!r}")
    return value


def hyperparams(family: Family, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """The zoo hyperparameters for the family's env id (``{}`` -> SB3 defaults), overridden.
    A hyperrl env (``hyperrl/PendulumActuator-v1``) takes those of the Gymnasium env it extends."""
    hp = dict(ZOO_HYPERPARAMS.get(base_env_id(family.env_id), {}))
    hp.update(overrides or {})
    return hp


def make_ppo(family: Family, method: str, seed: int, device: str = "cpu",
             values: torch.Tensor | None = None, tensorboard_log: str | None = None,
             overrides: dict[str, Any] | None = None, vec_env: str = "auto"):
    """SB3 PPO for ``method``: 'dr'/'concat' via :func:`make_sb3_ppo` (variants
    re-drawn every episode); 'oracle' on envs fixed to ``values``, same hyperparameters."""

    if method not in ("dr", "concat", "oracle") or ((method == "oracle") != (values is not None)):
        raise ValueError(f"make_ppo: method {method!r} (oracle needs values)")
    return make_sb3_ppo(family, method, seed, device=device, values=values, vec_env=vec_env,
                        tensorboard_log=tensorboard_log, **dict(overrides or {}))


# --------------------------------------------------------------------------------------
# Actors (for evaluate_values) and SB3-style policies
# --------------------------------------------------------------------------------------
def _on_device(model: Any, device: torch.device | str) -> Any:
    dev = torch.device(device)
    if torch.device(model.device) != dev:
        model.policy.to(dev)
        model.device = dev
    return model


def model_actor(model: Any, append_context: bool, deterministic: bool = True, seed: int = 0) -> ActorFactory:
    """Actor factory for one SB3 model (see :func:`sb3_actor`)."""

    return sb3_actor(model, append_context, deterministic, seed)


class ContextPolicy:
    """An SB3 model trained with the context appended (``concat``), fixed to one variant:
    ``predict`` takes the env's own observation and appends the variant's context."""

    def __init__(self, model: Any, context: np.ndarray, observation_space: Any):
        self.model = model
        self.context = context
        self.observation_space = observation_space
        self.action_space = model.action_space

    def predict(self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = True):
        obs = np.asarray(observation, dtype=np.float32)
        ctx = np.broadcast_to(self.context.astype(np.float32), (*obs.shape[:-1], self.context.shape[-1]))
        return self.model.predict(np.concatenate([obs, ctx], -1), state, episode_start, deterministic)


def _load_model(path: Path, device: torch.device | str) -> Any:
    from stable_baselines3 import PPO

    if not path.is_file():
        raise HyperrlError(f"{path} is missing: the run did not finish (or the file was removed)")
    try:
        return PPO.load(str(path), device=str(device))
    except Exception as e:  # zipfile, pickle, torch, KeyError...: all mean 'not a usable SB3 model'
        raise HyperrlError(f"{path} is corrupt or not an SB3 PPO model: {type(e).__name__}: {e}") from None


class BaselineRun:
    """A ``dr``/``concat``/``oracle`` run dir, implementing :class:`hyperrl.runs.LoadedRun`."""

    def __init__(self, run_dir: str | Path, run_info: dict[str, Any] | None = None,
                 device: torch.device | str = "cpu"):
        self.run_dir = Path(run_dir)
        self.run_info = run_info if run_info is not None else read_run_info(self.run_dir)
        self.method = str(self.run_info["method"])
        if self.method not in METHODS:
            raise HyperrlError(f"{self.run_dir}: method '{self.method}' is not a baseline ({', '.join(METHODS)})")
        self.family = load_family(self.run_dir / "family.yaml")
        self.info: dict[str, Any] = read_metrics(self.run_dir)
        self.append_context = self.method == "concat"
        if self.method == "oracle":
            variants = self.run_info.get("variants")
            if not isinstance(variants, list) or not variants:
                raise HyperrlError(f"{self.run_dir / 'run.json'} is corrupt: an oracle run needs its 'variants'")
            try:
                self.variants = torch.stack([self.family.values_tensor(v["values"]) for v in variants])
                files = [str(v["model"]) for v in variants]
            except (KeyError, TypeError) as e:
                raise HyperrlError(f"{self.run_dir / 'run.json'} is corrupt: bad 'variants' entry ({e})") from None
            self.models = [_load_model(self.run_dir / f, device) for f in files]
        else:
            self.variants = None
            self.models = [_load_model(self.run_dir / "model.zip", device)]
        self.model = self.models[0]

    # ---- oracle lookup -----------------------------------------------------------------
    def _available(self) -> str:
        return "; ".join(self.family.label(v) for v in self.variants)

    def model_index(self, values: torch.Tensor) -> list[int]:
        """[B, P] -> the oracle model trained on exactly each row's values (relative tolerance
        1e-9); HyperrlError naming the variants it has for any other."""
        v = torch.as_tensor(values, dtype=torch.float64).reshape(-1, self.family.num_params).cpu()
        close = torch.isclose(v[:, None, :], self.variants[None, :, :], rtol=MATCH_RTOL, atol=0.0).all(-1)
        missing = ~close.any(1)
        if bool(missing.any()):
            bad = v[int(missing.nonzero()[0, 0])]
            raise HyperrlError(f"oracle run {self.run_dir} has no model for ({self.family.label(bad)}); "
                               f"it has models for: {self._available()}")
        return close.to(torch.int8).argmax(1).tolist()

    # ---- LoadedRun -----------------------------------------------------------------------
    def actor_factory(self, deterministic: bool = True, seed: int = 0,
                      device: torch.device | str = "cpu") -> ActorFactory:
        for m in self.models:
            _on_device(m, device)
        if self.method != "oracle":
            return model_actor(self.model, self.append_context, deterministic, seed)
        per_model = [model_actor(m, False, deterministic, seed + i) for i, m in enumerate(self.models)]

        def factory(context: torch.Tensor, values: torch.Tensor | None = None) -> Actor:
            if values is None:
                raise HyperrlError("an oracle run needs each env's parameter values to pick its model")
            idx = torch.tensor(self.model_index(values), dtype=torch.long)
            groups = [(m, (idx == m).nonzero().flatten()) for m in sorted(set(idx.tolist()))]
            actors = [(rows, per_model[m](context[rows.to(context.device)], values[rows.to(values.device)]))
                      for m, rows in groups]

            def policy(obs: torch.Tensor) -> torch.Tensor:
                out = None
                for rows, actor in actors:
                    r = rows.to(obs.device)
                    a = actor(obs[r])
                    if out is None:
                        out = torch.empty((obs.shape[0], *a.shape[1:]), dtype=a.dtype, device=a.device)
                    out[r] = a
                return out

            return policy

        return factory

    def policy(self, values: Values, device: torch.device | str = "cpu") -> Any:
        v = self.family.values_tensor(values)
        if self.method == "oracle":
            return _on_device(self.models[self.model_index(v)[0]], device)
        model = _on_device(self.model, device)
        if self.method == "dr":
            return model
        base = self.family.make_env(v)
        try:
            space = base.observation_space
        finally:
            base.close()
        return ContextPolicy(model, self.family.context(v.reshape(1, -1))[0].numpy(), space)

    def __repr__(self) -> str:
        return f"BaselineRun({self.method}, family={self.family.name}, run_dir={self.run_dir})"


def load_baseline_run(run_dir: Path, info: dict[str, Any], device: torch.device | str = "cpu") -> BaselineRun:
    """The loader :func:`hyperrl.runs.load` calls for ``dr``, ``concat`` and ``oracle``."""
    return BaselineRun(run_dir, info, device=device)


# --------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------
def select_variants(family: Family, split: str, max_variants: int | None) -> list[dict[str, Any]]:
    """The oracle's held-out variants: ``split`` ('all': interpolation then extrapolation),
    thinned to ``max_variants`` evenly spaced ones (indices round(linspace(0, M-1, K)))."""
    if split not in ORACLE_SPLITS:
        raise HyperrlError(f"--oracle-split must be one of {', '.join(ORACLE_SPLITS)}, got {split!r}")
    rows = [{"split": s, "index": i, "values": v}
            for s in (SPLITS if split == "all" else (split,))
            for i, v in enumerate(family.heldout_values(s))]
    if max_variants is not None:
        if max_variants < 1:
            raise HyperrlError(f"--oracle-max-variants must be at least 1, got {max_variants}")
        if max_variants < len(rows):
            keep = sorted(set(np.round(np.linspace(0, len(rows) - 1, max_variants)).astype(int).tolist()))
            rows = [rows[i] for i in keep]
    return rows


def _heldout_rows(family: Family, stats_by_split: dict[str, Any], labels: dict[str, list[int]] | None = None):
    rows = []
    for split, st in stats_by_split.items():
        for j in range(st.values.shape[0]):
            row = {"split": split, "values": family.as_dict(st.values[j]),
                   "mean": float(st.mean[j]), "std": float(st.std[j])}
            if labels is not None:
                row["model"] = labels[split][j]
            rows.append(row)
    return rows


def train_shared(family: Family, method: str, run_dir: Path, seed: int, total_steps: int, device: str,
                 overrides: dict[str, Any], eval_episodes: int, eval_interval: int,
                 vec_env: str = "auto", report: Callable[[dict[str, Any]], None] | None = None
                 ) -> dict[str, Any]:
    """dr / concat: one PPO policy across the family; periodic and final held-out evaluation
    (each row also passed to ``report``, e.g. a sweep's Ray Tune report)."""
    from torch.utils.tensorboard import SummaryWriter


    t0 = time.perf_counter()
    model = make_ppo(family, method, seed, device, tensorboard_log=str(run_dir / "sb3"), overrides=overrides,
                     vec_env=vec_env)
    writer = SummaryWriter(str(run_dir))

    def on_eval(row: dict[str, Any]) -> None:
        for split in SPLITS:
            writer.add_scalar(f"eval/{split}/return_mean", row[split], row["step"])
        print(f"step {row['step']:>10,}  eval interpolation {row['interpolation']:8.1f}  "
              f"extrapolation {row['extrapolation']:8.1f}", file=sys.stderr)
        if report is not None:
            report(dict(row))

    try:
        result = train_sb3_until(model, family, method, None, max_steps=total_steps,
                                 eval_every=eval_interval, episodes=eval_episodes, on_eval=on_eval)
        # Per-variant detail of the final evaluation: the same seed as its last row, so the
        # split means equal result["final"] (deterministic actions, seeded envs).
        actor = model_actor(model, method == "concat")
        final_seed = HELDOUT_EVAL_SEED + len(result["history"]) - 1
        stats = {s: evaluate_values(actor, family, family.heldout_values(s), eval_episodes, seed=final_seed)
                 for s in SPLITS}
        model.save(str(run_dir / "model.zip"))
    finally:
        writer.close()
        model.get_env().close()
    return {
        "env_steps": int(model.num_timesteps),
        "wall_clock_s": time.perf_counter() - t0,
        "steps_per_second": result["steps_per_second"],
        "eval_interpolation_return": float(stats["interpolation"].mean.mean()),
        "eval_extrapolation_return": float(stats["extrapolation"].mean.mean()),
        "eval_seed": final_seed,
        "heldout": _heldout_rows(family, stats),
        "history": result["history"],
    }


def train_oracle(family: Family, run_dir: Path, seed: int, total_steps: int, device: str,
                 overrides: dict[str, Any], eval_episodes: int, variants: list[dict[str, Any]],
                 vec_env: str = "auto") -> dict[str, Any]:
    """oracle: one PPO policy per variant, each with ``total_steps``; then one evaluation of
    every variant with its own model."""
    from torch.utils.tensorboard import SummaryWriter

    t0 = time.perf_counter()
    (run_dir / "models").mkdir(exist_ok=True)
    steps, train_s = [], 0.0
    for i, var in enumerate(variants):
        tv = time.perf_counter()
        model = make_ppo(family, "oracle", seed, device, values=var["values"],
                         tensorboard_log=str(run_dir / "sb3"), overrides=overrides, vec_env=vec_env)
        try:
            model.learn(total_timesteps=total_steps, tb_log_name=f"variant-{i}")
            model.save(str(run_dir / var["model"]))
        finally:
            model.get_env().close()
        steps.append(int(model.num_timesteps))
        train_s += time.perf_counter() - tv
        print(f"oracle {i + 1}/{len(variants)} ({var['split']}: {family.label(var['values'])}): "
              f"{model.num_timesteps:,} steps in {time.perf_counter() - tv:.1f} s", file=sys.stderr)
    # evaluate through the loader, exactly as any consumer will
    run = BaselineRun(run_dir, read_run_info(run_dir), device=device)
    actor = run.actor_factory(deterministic=True, device=device)
    stats, labels = {}, {}
    for split in SPLITS:
        mine = [(i, v) for i, v in enumerate(variants) if v["split"] == split]
        if mine:
            stats[split] = evaluate_values(actor, family, torch.stack([v["values"] for _, v in mine]),
                                           eval_episodes, seed=HELDOUT_EVAL_SEED)
            labels[split] = [variants[i]["model"] for i, _ in mine]
    writer = SummaryWriter(str(run_dir))
    try:
        for split, st in stats.items():
            writer.add_scalar(f"eval/{split}/return_mean", float(st.mean.mean()), sum(steps))
    finally:
        writer.close()
    rows = _heldout_rows(family, stats, labels)
    by_model = {r["model"]: r for r in rows}
    return {
        "env_steps": sum(steps),
        "env_steps_per_variant": steps,
        "num_variants": len(variants),
        "wall_clock_s": time.perf_counter() - t0,
        "steps_per_second": sum(steps) / max(train_s, 1e-9),
        "eval_interpolation_return": float(stats["interpolation"].mean.mean()) if "interpolation" in stats else None,
        "eval_extrapolation_return": float(stats["extrapolation"].mean.mean()) if "extrapolation" in stats else None,
        "eval_seed": HELDOUT_EVAL_SEED,
        "heldout": rows,
        "variants": [{"model": v["model"], "split": v["split"], "index": v["index"],
                      "values": family.as_dict(v["values"]), "env_steps": s,
                      "eval_return": by_model[v["model"]]["mean"]} for v, s in zip(variants, steps)],
    }


def run_baseline(family: Family, method: str, total_steps: int = DEFAULT_TOTAL_STEPS, seed: int = 0,
                 run_dir: str | Path | None = None, device: str = "cpu", overrides: Sequence[str] = (),
                 eval_episodes: int = 2, eval_interval: int = 131_072, threads: int = 1,
                 oracle_split: str = "extrapolation", oracle_max_variants: int | None = None,
                 run_info: dict[str, Any] | None = None, report: Callable[[dict[str, Any]], None] | None = None,
                 vec_env: str = "auto") -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """Train one baseline into a new run dir (locked for this process while it trains, as
    every trainer's; :mod:`hyperrl.runlock`): what ``python -m hyperrl.baselines`` runs, and
    a sweep's baseline trials. ``overrides`` are ``KEY=VALUE`` SB3 PPO settings; ``run_info``
    extra ``run.json`` entries; ``report`` receives each periodic evaluation (dr, concat);
    ``vec_env`` the SB3 vector env (``--vec-env``: auto, batched, dummy).
    Returns ``(run_dir, metrics, oracle variants)``; every error is raised before anything
    is written."""
    if method not in METHODS:
        raise HyperrlError(f"unknown baseline method '{method}'; expected one of: {', '.join(METHODS)}")
    if method != "oracle" and oracle_max_variants is not None:
        raise HyperrlError("--oracle-max-variants only applies to --method oracle")
    device = str(parse_device(device))
    hp_overrides = parse_overrides(overrides)
    vec_env = resolve_vec_env(family, vec_env)
    variants = []
    if method == "oracle":
        variants = select_variants(family, oracle_split, oracle_max_variants)
        for i, v in enumerate(variants):
            v["model"] = f"models/{i}.zip"

    from hyperrl.seeding import seed_everything

    if hp_overrides:  # SB3 checks some combinations only when the model is built: build one first,
        try:          # so a rejected --set writes nothing
            trial = make_ppo(family, method, seed, device,
                             values=variants[0]["values"] if variants else None, overrides=hp_overrides,
                             vec_env=vec_env)
            trial.get_env().close()
        except (TypeError, ValueError, AssertionError, KeyError) as e:
            raise HyperrlError(f"--set: stable-baselines3 PPO rejects these hyperparameters: "
                               f"{type(e).__name__}: {e}") from None

    # A run that fails before any model is saved leaves nothing worth keeping: its files go
    # again, so the same --run-dir is free once the problem is fixed.
    models_saved = lambda d: (d / "models").is_dir() and any((d / "models").iterdir())  # noqa: E731
    with fresh_run_dir(family.name, f"{method}-", seed, run_dir, keep=models_saved) as out:
        shutil.copyfile(family.source, out / "family.yaml")
        hp = hyperparams(family, hp_overrides)
        info: dict[str, Any] = {
            "method": method, "family": family.name, "seed": seed, "total_steps": total_steps,
            "algorithm": "stable-baselines3 PPO MlpPolicy",
            "hyperparams": {k: _hp_text(v) for k, v in hp.items()},
            "hyperparams_source": ("rl-baselines3-zoo" if base_env_id(family.env_id) in ZOO_HYPERPARAMS
                                   else "sb3-defaults") + (" + --set" if hp_overrides else ""),
            "vec_env": vec_env,
            "device": device, "torch_threads": torch.get_num_threads() if not threads else threads,
            "eval_episodes": eval_episodes, "version": __version__, **(run_info or {}),
        }
        if method == "oracle":
            info.update({
                "budget": "per variant: each oracle model trains for total_steps env steps",
                "oracle_split": oracle_split, "oracle_max_variants": oracle_max_variants,
                "variants": [{"model": v["model"], "split": v["split"], "index": v["index"],
                              "values": family.as_dict(v["values"])} for v in variants],
            })
        write_json(out / "run.json", info)

        if threads:
            torch.set_num_threads(threads)
        seed_everything(seed)
        if method == "oracle":
            result = train_oracle(family, out, seed, total_steps, device, hp_overrides, eval_episodes, variants,
                                  vec_env)
        else:
            result = train_shared(family, method, out, seed, total_steps, device, hp_overrides, eval_episodes,
                                  eval_interval, vec_env, report)
        metrics = {"family": family.name, "method": method, "total_steps": total_steps, **result,
                   "device": device, "seed": seed}
        write_json(out / "metrics.json", metrics)
    return out, metrics, variants


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(
        "python -m hyperrl.baselines",
        "Train a stable-baselines3 PPO baseline (rl-zoo hyperparameters) on an environment family.",
        epilog="methods: dr = domain randomisation (no context); concat = context appended to the "
               "observation; oracle = one policy per held-out variant, --total-steps EACH.")
    parser.add_argument("--env-family", required=True, help="built-in family name (see envs/) or a family YAML")
    parser.add_argument("--method", required=True, choices=METHODS)
    parser.add_argument("--total-steps", type=int_range(1), default=DEFAULT_TOTAL_STEPS,
                        help="env steps (oracle: per variant); SB3 rounds up to whole rollouts")
    parser.add_argument("--seed", type=seed_arg, default=0)
    parser.add_argument("--run-dir", help="output folder (default: runs/<family>/<method>-<timestamp>-s<seed>)")
    parser.add_argument("--device", default="cpu", help="auto | cpu | cuda | cuda:N (SB3 MlpPolicy: cpu is fastest)")
    parser.add_argument("--oracle-split", default="extrapolation", choices=ORACLE_SPLITS,
                        help="held-out set the oracle trains one policy per variant of")
    parser.add_argument("--oracle-max-variants", type=int_range(1), metavar="K",
                        help="train K evenly spaced variants of the split (default: all of them)")
    parser.add_argument("--eval-episodes", type=int_range(1), default=2, help="episodes per held-out variant")
    parser.add_argument("--eval-interval-steps", type=int_range(1), default=131_072,
                        help="held-out evaluation every this many steps (dr/concat; always at the end)")
    parser.add_argument("--threads", type=int_range(0), default=1,
                        help="torch CPU threads (0: torch's default); one is fastest for SB3's small MLPs")
    parser.add_argument("--vec-env", default="auto", choices=VEC_ENVS,
                        help="what SB3 steps: batched = the family's batched simulator through "
                             "hyperrl.sb3.SB3VecEnv, dummy = a DummyVecEnv of Gymnasium envs, auto = batched "
                             f"where it trains faster (simulators: {', '.join(SB3_BATCHED)})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a PPO hyperparameter, e.g. --set n_steps=64 --set learning_rate=lin_3e-4")
    args = parser.parse_args(argv)

    family = load_family(args.env_family)
    run_dir, metrics, variants = run_baseline(family, args.method, args.total_steps, args.seed, args.run_dir,
                                              args.device, args.overrides, args.eval_episodes,
                                              args.eval_interval_steps, args.threads, args.oracle_split,
                                              args.oracle_max_variants, vec_env=args.vec_env)

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.1f}"

    print(f"run dir: {run_dir}")
    steps = f"{metrics['env_steps']:,} steps"
    if args.method == "oracle":
        steps = (f"{len(variants)} {args.oracle_split} variant(s) x {args.total_steps:,} steps each "
                 f"({metrics['env_steps']:,} in all)")
    print(f"{args.method} held-out return: interpolation {fmt(metrics['eval_interpolation_return'])}, "
          f"extrapolation {fmt(metrics['eval_extrapolation_return'])}; {steps} in {metrics['wall_clock_s']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main_guard(main)())
