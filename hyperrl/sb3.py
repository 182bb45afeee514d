"""stable-baselines3 on a family: PPO trained on Gymnasium envs that re-draw parameters per
episode, scored by the same evaluation code as the hypernetwork (:mod:`hyperrl.evaluation`).

Used by the benchmarks (and the baselines): ``dr`` (no context) and ``concat`` (context
appended to the observation).
"""

from __future__ import annotations

import time
from typing import Any, Callable

import torch

from hyperrl.evaluation import Actor, ActorFactory, evaluate_values
from hyperrl.families import SPLITS, Family
from hyperrl.wrappers import FamilyEnv

__all__ = ["ZOO_HYPERPARAMS", "sb3_actor", "make_sb3_ppo", "train_sb3_until"]

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
                low = torch.as_tensor(model.action_space.low, device=action.device)
                high = torch.as_tensor(model.action_space.high, device=action.device)
                action = torch.max(torch.min(action, high), low)
            return action.to(obs.device)

        return policy

    return factory


def _schedule(v: Any) -> Any:
    if isinstance(v, tuple) and v[0] == "lin":
        start = v[1]
        return lambda progress: progress * start
    return v


def make_sb3_ppo(family: Family, method: str, seed: int, device: str = "cpu",
                 values: torch.Tensor | None = None, **overrides: Any):
    """SB3 PPO with the zoo hyperparameters for the family's env id. ``dr``/``concat``:
    FamilyEnvs that draw a new variant every episode (``concat`` appends the context);
    ``oracle``: FamilyEnvs fixed to ``values``."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    if method not in ("dr", "concat", "oracle"):
        raise ValueError(f"method must be 'dr', 'concat' or 'oracle', got {method!r}")
    if (method == "oracle") != (values is not None):
        raise ValueError("values are required for 'oracle' and only for it")
    hp = dict(ZOO_HYPERPARAMS.get(family.env_id, {}))
    hp.update(overrides)
    n_envs = hp.pop("n_envs", 1)
    venv = make_vec_env(
        lambda rank=0: FamilyEnv(family, values=values, append_context=(method == "concat"),
                                 seed=seed * 1000 + rank),
        n_envs=n_envs, seed=seed)
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
    seed: int = 0,
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
            st = evaluate_values(actor, family, family.heldout_values(split), episodes, seed=10_000 + len(history))
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
            self.reached = False

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next:
                self.next += eval_every
                row = evaluate(self.num_timesteps)
                if target is not None and min(row["interpolation"], row["extrapolation"]) >= target:
                    self.reached = True
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
