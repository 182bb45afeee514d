"""Seeding and RNG state in one place.

* :func:`seed_everything` seeds Python's ``random``, NumPy's global RNG and torch (CPU and
  every CUDA device).
* :func:`make_generator` builds the explicit ``torch.Generator`` used for parameter
  sampling, so that sampling environment parameters does not depend on how many other
  random numbers the rest of the program drew.
* :func:`rng_state` / :func:`set_rng_state` capture and restore all global RNG states for
  checkpointing. The captured state holds only tensors, ints, floats, strings, lists and
  tuples (NumPy's key array is stored as a list of ints), so a checkpoint containing it
  loads with ``torch.load(..., weights_only=True)``.
* :func:`generator_states` / :func:`restore_generators` do the same for a dict of named
  explicit generators.
* :func:`stream_seed` derives the seed of one named random stream from a user's seed.
"""

from __future__ import annotations

import random
import zlib
from typing import Any, Mapping

import numpy as np
import torch

__all__ = [
    "MAX_SEED",
    "seed_everything",
    "make_generator",
    "rng_state",
    "set_rng_state",
    "generator_states",
    "restore_generators",
    "stream_seed",
]


MAX_SEED = 2**31 - 1
"""The largest seed any entry point accepts (the smallest is 0). Gymnasium's resets refuse
negative seeds and NumPy's legacy seeding (stable-baselines3's ``set_random_seed``) takes
only [0, 2**32); derived seeds add offsets (``seed + i`` for env i, evaluation rounds), which
stay inside that range from any seed up to 2**31 - 1."""


def seed_everything(seed: int) -> None:
    """Seed Python ``random``, NumPy's global RNG and torch (CPU and all CUDA devices)."""
    seed = int(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy's legacy seeding accepts only [0, 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device (lazily if CUDA is not initialised)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def make_generator(seed: int, device: torch.device | str | None = None) -> torch.Generator:
    """An explicit ``torch.Generator`` on ``device`` (CPU when None), seeded with ``seed``."""
    gen = torch.Generator(device=torch.device(device) if device is not None else "cpu")
    gen.manual_seed(int(seed))
    return gen


def _numpy_state() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "bit_generator": str(name),
        "keys": [int(k) for k in np.asarray(keys).tolist()],
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _set_numpy_state(state: Mapping[str, Any]) -> None:
    keys = state["keys"]
    if isinstance(keys, torch.Tensor):
        keys = keys.tolist()
    np.random.set_state((
        str(state["bit_generator"]),
        np.asarray(keys, dtype=np.uint32),
        int(state["pos"]),
        int(state["has_gauss"]),
        float(state["cached_gaussian"]),
    ))


def rng_state() -> dict[str, Any]:
    """Every global RNG state: ``{"python", "numpy", "torch", "cuda"}``.

    ``cuda`` is a list with one state per visible CUDA device (empty without CUDA).
    Only weights-only-loadable types are used (see the module docstring).
    """
    version, internal, gauss_next = random.getstate()
    cuda: list[torch.Tensor] = []
    # Only once CUDA is in use: querying would otherwise create a CUDA context in a CPU run
    # on a GPU machine. Before that no CUDA random numbers were drawn, so there is nothing
    # to capture beyond the seed that seed_everything queued.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = [s.cpu() for s in torch.cuda.get_rng_state_all()]
    return {
        "python": (int(version), tuple(int(x) for x in internal), gauss_next),
        "numpy": _numpy_state(),
        "torch": torch.get_rng_state(),
        "cuda": cuda,
    }


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` captured.

    Missing entries are left alone. CUDA states are restored for the devices present in
    both the state and this machine; without CUDA they are ignored, so a checkpoint from a
    GPU machine resumes on a CPU one. Tensors may be on any device (a checkpoint loaded
    with ``map_location="cuda"``); CUDA states are set lazily, like ``torch.cuda.manual_seed``.
    """
    if "python" in state and state["python"] is not None:
        version, internal, gauss_next = state["python"]
        random.setstate((int(version), tuple(int(x) for x in internal),
                         None if gauss_next is None else float(gauss_next)))
    if "numpy" in state and state["numpy"] is not None:
        _set_numpy_state(state["numpy"])
    if "torch" in state and state["torch"] is not None:
        torch.set_rng_state(torch.as_tensor(state["torch"]).cpu().to(torch.uint8))
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available():
        for i in range(min(len(cuda), torch.cuda.device_count())):
            torch.cuda.set_rng_state(torch.as_tensor(cuda[i]).cpu().to(torch.uint8), device=i)


def generator_states(generators: Mapping[str, torch.Generator]) -> dict[str, torch.Tensor]:
    """``{name: generator}`` -> ``{name: state tensor}`` (CPU uint8, also for CUDA generators)."""
    return {str(k): g.get_state() for k, g in generators.items()}


def restore_generators(
    generators: Mapping[str, torch.Generator], states: Mapping[str, torch.Tensor]
) -> None:
    """Set each generator in ``generators`` to its saved state in ``states``.

    Raises ``KeyError`` naming a generator whose state is missing (a checkpoint from a
    different trainer configuration); extra saved states are ignored.
    """
    missing = [k for k in generators if k not in states]
    if missing:
        raise KeyError(f"no saved state for generator(s): {', '.join(missing)}")
    for k, g in generators.items():
        g.set_state(torch.as_tensor(states[k]).cpu().to(torch.uint8))


def stream_seed(seed: int, stream: str) -> int:
    """The seed of the random stream named ``stream`` for a user's ``seed``, in [0, 2**63).

    Two torch generators seeded with the same number draw the same numbers, so two streams
    fed from one seed (a simulator's start states and the parameter values of its variants)
    would be correlated; NumPy's ``SeedSequence`` mixes the seed with the stream's name."""
    entropy = [int(seed) % 2**64, zlib.crc32(stream.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0] >> np.uint64(1))
