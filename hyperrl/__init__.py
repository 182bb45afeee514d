"""hyperrl: a hypernetwork conditioned on environment parameters generates the weights of an
RL policy, trained across families of Gymnasium task variants.

Importing it registers every built-in family with Gymnasium as ``hyperrl/<family>-v0``
(:mod:`hyperrl.registration`). Users: README.md; measurements: benchmarks/README.md.

Code map (a module's name says its role):

- `train.py`, `evaluate.py`, `baselines.py`, `compare.py`, `adapt/`, `sweep.py`: the six
  commands (`python -m hyperrl.<name>`)
- `families.py`, `yamlio.py`, `resources.py`: family YAMLs: loading, validation, the shipped folders
- `gym_envs.py`, `mujoco_envs.py`: the Gymnasium envs hyperrl registers (Pendulum and Acrobot
  with a signed `torque_gain`; cheetah-vel)
- `mujoco_params.py`: MuJoCo model quantities as family parameters (`params.<p>.mujoco`),
  derived constants recomputed
- `registration.py`, `vector.py`, `sb3.py`: families as Gymnasium ids (`gym.make`,
  `gym.make_vec`); the family as a `gymnasium.vector.VectorEnv`; the SB3 `VecEnv` adapter
- `sim/`: batched simulators (`cartpole.py`, `pendulum.py`, `acrobot.py`, `mujoco.py`) and the
  `gymnasium.vector` backend (`generic.py`)
- `hypernet.py`, `archs.py`, `agent.py`: the hypernetwork, generated weights and their one apply
  function; the architectures (`model.arch`); actor and critic
- `ppo.py`: GAE, the PPO loss, `ppo_update`, action distributions, `clip_action`
- `episodes.py`: the one episode loop and zero-shot evaluation (`evaluate_values`)
- `runs.py`, `hyperrun.py`: reading run dirs: `hyperrl.load`, the loaders table, JSON files; a
  trained run as a policy source
- `policy.py`, `export.py`: one variant's generated policy (SB3 `predict`, `nn.Module`);
  TorchScript / ONNX export
- `adapt/`: few-episode adaptation: one module per mode (`context`, `ppo_modes`, `sim`,
  `references`) and per shared part
- `config.py`, `train_config.py`, `sweep_config.py`, `cli.py`: the config mechanism (frozen
  dataclasses, YAML, `--set`); the training and sweep configs; CLI plumbing
- `checkpoint.py`, `fileio.py`, `runlock.py`, `seeding.py`, `plots.py`, `wrappers.py`:
  crash-safe checkpoints and outputs, the one-writer lock on run dirs, seeding, figures, the SB3
  family env

Design:

- Parameters are data (`hyperrl/families.py`): `params` always means environment
  parameters; the generated policy tensors are `weights`. One function maps values to the
  context (`Family.context`) at train, evaluation and adaptation time.
- Generated weights (`hyperrl/hypernet.py`): the hypernetwork maps contexts `[B, C]`
  to a dict of batched tensors keyed like the target `nn.Sequential`'s `state_dict`
  (`"0.weight": [B, h, obs_dim]`, ...); one pure function, `functional_mlp`, applies them
  with batched matmuls. No loop over variants, no module storing generated weights.
  Initialisation: Bias-HyperInit (Beck et al., CoRL 2022; default) or hyperfan-in (Chang
  et al., ICLR 2020); optional chunked generation (`model.chunk_size`).
- Architectures (`model.arch`, `hyperrl/archs.py`): the field's baselines train in the
  same trainer (same PPO, simulators, critic and step budget), each as a module mapping
  contexts to the same per-variant weight dict for `functional_mlp`: `hyper` (default),
  `concat` (MLP on `[obs, context]`), `blind` (domain randomisation), `cgate` (Benjamins et
  al., TMLR 2023), `adapter` (Decision Adapter, Beukman et al., NeurIPS 2023; no standalone
  export, it is not a plain MLP).
- Variant slots (`env.variant_slots`, `hyperrl/agent.py`): each env column gets K
  pre-sampled variants per rollout and moves to the next when an episode ends, so weights
  are generated once per (column, slot) and applied to all T steps with one batched matmul.
  On an accelerator slot changes are branch-free selects (no host sync; `env.sync_free`);
  `make gpu-smoke` checks that CUDA path.
- PPO (`hyperrl/train.py:train`) reads top to bottom: draw variants, `collect_rollout`,
  `advantages`, one `ppo_update`, log, evaluate and checkpoint. The pieces are small tested
  functions; `hyperrl/ppo.py` holds GAE, the loss, the distributions and `ppo_update`, the
  one PPO update loop, which every PPO-based adaptation mode uses too. A time-limit
  truncation bootstraps from `V(final_obs)` computed with the context of the variant that
  produced it; a termination does not; the GAE trace stops at every episode end, so no
  autoreset transition is trained on.
- Configs are frozen dataclasses (`hyperrl/train_config.py`), loaded from YAML with
  unknown keys rejected; every key is documented once, in the code
  (`python -m hyperrl.train --help-config`).
- Seeding happens in one place (`hyperrl/seeding.py`); parameter sampling and action
  sampling have their own explicit generators. Resuming reproduces an uninterrupted run
  bit for bit (tested).
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
