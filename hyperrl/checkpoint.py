"""Crash-safe checkpoints.

:func:`save_checkpoint` writes to a temporary file in the target's folder, flushes and
fsyncs it, renames it over the target with ``os.replace`` (atomic on POSIX and Windows)
and fsyncs the folder. Killing the process at any moment leaves either the previous good
checkpoint or the new one at the target path, never a partial file.

:func:`load_checkpoint` verifies the CRC-32 of every member of the archive (torch's
reader does not, so a flipped bit in a tensor would otherwise load silently) and uses
``torch.load(..., weights_only=True)``: a checkpoint cannot run code when it is loaded.
To make that work, :func:`save_checkpoint` converts the payload to types the weights-only unpickler accepts (NumPy arrays and scalars become
lists and Python numbers, paths become strings, ``torch.Generator`` objects become their
state tensors) and rejects anything else with a ``TypeError`` naming the key, so a
checkpoint that saves is one that loads. RNG states from :func:`hyperrl.seeding.rng_state`
are already in that form.

Payload keys the trainer uses: ``hypernet``, ``critic``, ``optimizer`` (state dicts),
``rng`` (:func:`hyperrl.seeding.rng_state`), ``generators`` (name -> generator state
tensor), ``step``, ``config``, ``family``, plus any extra keys. ``format``, ``version``
and ``git_commit`` are filled in by :func:`save_checkpoint` (``format`` always; the
other two only when the payload lacks them).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import pickle
import re
import subprocess
import zipfile
from collections import Counter, OrderedDict
from pathlib import Path, PurePath
from typing import Any, Mapping

import numpy as np
import torch

from hyperrl.errors import HyperrlError
from hyperrl.fileio import atomic_write as _atomic_write

__all__ = [
    "FORMAT_VERSION",
    "REQUIRED_KEYS",
    "CheckpointError",
    "CheckpointManager",
    "git_commit",
    "hyperrl_version",
    "load_checkpoint",
    "save_checkpoint",
]

FORMAT_VERSION = 1
"""Checkpoint layout version; bump when the meaning of payload keys changes."""

REQUIRED_KEYS = ("format", "step", "hypernet")
"""Keys every hyperrl checkpoint has; a file lacking one is not a hyperrl checkpoint."""


class CheckpointError(HyperrlError):
    """A checkpoint that does not exist, cannot be read, or is not a hyperrl checkpoint."""


# --------------------------------------------------------------------------------------
# Provenance
# --------------------------------------------------------------------------------------
def hyperrl_version() -> str:
    """``hyperrl.__version__`` if defined, else the installed distribution's version, else "unknown"."""
    try:
        import hyperrl

        v = getattr(hyperrl, "__version__", None)
        if v:
            return str(v)
    except Exception:
        pass
    try:
        from importlib.metadata import version

        return str(version("hyperrl"))
    except Exception:
        return "unknown"


def git_commit(path: str | os.PathLike | None = None) -> str | None:
    """The commit checked out in the git repository containing ``path`` (default: this
    package's source), or None when git, the repository or the commit is unavailable.
    Never raises and prints nothing."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        if not where.is_dir():
            where = where.parent
        out = subprocess.run(
            ["git", "rev-parse", "--verify", "--quiet", "HEAD"],
            cwd=where,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            timeout=5,
            check=False,
            text=True,
        )
    except Exception:
        return None
    commit = out.stdout.strip()
    if out.returncode != 0 or len(commit) < 7 or any(c not in "0123456789abcdef" for c in commit):
        return None
    return commit


# --------------------------------------------------------------------------------------
# Payload conversion to weights-only-loadable types
# --------------------------------------------------------------------------------------
_LEAVES = (type(None), bool, int, float, complex, str, bytes, bytearray,
           torch.Tensor, torch.Size, torch.device, torch.dtype)


def _safe(obj: Any, where: str) -> Any:
    """A copy of ``obj`` that ``torch.load(weights_only=True)`` can read (containers are
    rebuilt, tensors are shared, not copied)."""
    if isinstance(obj, _LEAVES):
        return obj
    if isinstance(obj, (OrderedDict, Counter)):
        return type(obj)((_safe(k, f"{where} key"), _safe(v, f"{where}[{k!r}]")) for k, v in obj.items())
    if isinstance(obj, Mapping):
        return {_safe(k, f"{where} key"): _safe(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set)):
        items = [_safe(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return tuple(items) if isinstance(obj, tuple) else set(items) if isinstance(obj, set) else items
    if isinstance(obj, frozenset):
        return {_safe(v, f"{where} item") for v in obj}
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    raise TypeError(
        f"checkpoint payload {where} has type {type(obj).__module__}.{type(obj).__qualname__}, "
        "which a weights-only torch.load cannot read; convert it to tensors, numbers, "
        "strings, lists or dicts"
    )


# --------------------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------------------
def save_checkpoint(path: str | os.PathLike, payload: Mapping[str, Any]) -> None:
    """Atomically write ``payload`` to ``path`` (parent folders are created).

    ``format``, ``version`` and ``git_commit`` are added unless the payload has them.
    Raises ``ValueError`` when ``step`` or ``hypernet`` is missing and ``TypeError`` for
    a value a weights-only load could not read (see the module docstring).
    """
    path = Path(path)
    missing = [k for k in REQUIRED_KEYS if k != "format" and k not in payload]
    if missing:
        raise ValueError(f"checkpoint payload is missing required key(s): {', '.join(missing)}")
    data = dict(payload)
    data["format"] = FORMAT_VERSION
    data.setdefault("version", hyperrl_version())
    if "git_commit" not in data:
        data["git_commit"] = git_commit()
    data = _safe(data, "payload")
    _atomic_write(path, lambda f: torch.save(data, f))


def _short(e: BaseException) -> str:
    """The first sentence of an exception message, on one line, at most 120 characters."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    first = lines[0] if lines else type(e).__name__
    first = first.split(". ")[0].rstrip(".")
    return first if len(first) <= 120 else first[:117] + "..."


_UNSUPPORTED_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_checkpoint(
    path: str | os.PathLike,
    map_location: Any = "cpu",
    required: tuple[str, ...] = REQUIRED_KEYS,
) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (weights-only, no code runs).

    Raises :class:`CheckpointError` with a one-line message naming ``path`` when the file
    is missing, unreadable, truncated, not a torch file, holds objects a weights-only
    load refuses, lacks a required key, or has a newer format than this hyperrl reads.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")

    def corrupt(reason: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {path} is corrupt or not a hyperrl checkpoint: {reason}")

    if not path.is_file():
        raise corrupt("not a regular file")
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or _short(e)}") from None
    if not head:
        raise corrupt("the file is empty")
    if head[:2] != b"PK":  # torch.save writes a zip archive
        raise corrupt("not a torch checkpoint file")
    # torch's zip reader does not check CRCs: a flipped bit in a tensor would load silently.
    # zipfile verifies every member's CRC-32 (fast: it runs at memory/disk bandwidth).
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
            is_torch = any(n == "data.pkl" or n.endswith("/data.pkl") for n in z.namelist())
    except PermissionError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or _short(e)}") from None
    except Exception as e:  # BadZipFile (truncated), EOFError, OSError, zlib.error, ...
        raise corrupt(f"truncated or damaged ({_short(e)})") from None
    if bad is not None:
        raise corrupt(f"checksum mismatch in {bad}")
    if not is_torch:
        raise corrupt("a zip archive, but not a torch checkpoint file")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {e.strerror or _short(e)}") from None
    except Exception as e:
        if isinstance(e, pickle.UnpicklingError) and "Weights only" in str(e):
            m = _UNSUPPORTED_GLOBAL.search(str(e))
            what = f" ({m.group(1)})" if m else ""
            raise corrupt(f"it holds objects a weights-only load refuses{what}") from None
        raise corrupt(f"truncated or damaged ({_short(e)})") from None
    if not isinstance(data, dict):
        raise corrupt(f"expected a dict payload, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise corrupt(f"missing key(s) {', '.join(repr(k) for k in missing)}")
    fmt = data.get("format")
    if "format" in data and (isinstance(fmt, bool) or not isinstance(fmt, int)):
        raise corrupt(f"format is {fmt!r}, expected an integer")
    if isinstance(fmt, int) and fmt > FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format {fmt}, but this hyperrl ({hyperrl_version()}) reads "
            f"formats up to {FORMAT_VERSION}; upgrade hyperrl"
        )
    return data


# --------------------------------------------------------------------------------------
# Run-directory manager
# --------------------------------------------------------------------------------------
class CheckpointManager:
    """``run_dir/checkpoints/latest.pt`` (resume point) and ``best.pt`` (best eval score).

    The best score is stored in the best checkpoint's payload (``best_score``) and in
    ``best.json`` beside it (score plus the size and mtime of ``best.pt`` it describes),
    both written atomically. If the two disagree after a crash between the two writes,
    the payload wins. A run directory has one writer at a time: stale temp files left by
    a killed writer are removed when the manager is created.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.dir = self.run_dir / "checkpoints"
        self._best_score: float | None = None  # cache; None = not read yet
        if self.dir.is_dir():
            for name in ("latest.pt", "best.pt", "best.json"):
                for stale in self.dir.glob(f".{name}.*.tmp"):
                    with contextlib.suppress(OSError):
                        stale.unlink()

    @property
    def latest_path(self) -> Path:
        return self.dir / "latest.pt"

    @property
    def best_path(self) -> Path:
        return self.dir / "best.pt"

    @property
    def best_json_path(self) -> Path:
        return self.dir / "best.json"

    def has_latest(self) -> bool:
        return self.latest_path.is_file()

    def has_best(self) -> bool:
        return self.best_path.is_file()

    def save_latest(self, payload: Mapping[str, Any]) -> Path:
        save_checkpoint(self.latest_path, payload)
        return self.latest_path

    def load_latest(self, map_location: Any = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.latest_path, map_location=map_location)

    def load_best(self, map_location: Any = "cpu") -> dict[str, Any]:
        return load_checkpoint(self.best_path, map_location=map_location)

    def _stat_key(self) -> list[int] | None:
        try:
            st = self.best_path.stat()
        except OSError:
            return None
        return [st.st_size, st.st_mtime_ns]

    def _read_best_score(self) -> float:
        if not self.best_path.is_file():
            return -math.inf
        key = self._stat_key()
        try:
            meta = json.loads(self.best_json_path.read_text())
            if meta.get("best_pt") == key and isinstance(meta.get("score"), (int, float)):
                return float(meta["score"])
        except (OSError, ValueError, AttributeError):
            pass
        # best.json missing or stale (crash between the two writes): the payload is the truth
        try:
            score = float(load_checkpoint(self.best_path).get("best_score", -math.inf))
        except CheckpointError:
            return -math.inf  # an unreadable best.pt is replaced by the next save_best
        self._write_json(score)
        return score

    def _write_json(self, score: float) -> None:
        text = json.dumps({"score": score, "best_pt": self._stat_key()}) + "\n"
        _atomic_write(self.best_json_path, lambda f: f.write(text.encode()))

    @property
    def best_score(self) -> float:
        """The best score saved so far in this run directory (``-inf`` if none)."""
        if self._best_score is None:
            self._best_score = self._read_best_score()
        return self._best_score

    def save_best(self, payload: Mapping[str, Any], score: float) -> bool:
        """Write ``best.pt`` if ``score`` beats the best so far (NaN never does).
        Returns whether it wrote."""
        score = float(score)
        if not score > self.best_score:
            return False
        data = dict(payload)
        data["best_score"] = score
        save_checkpoint(self.best_path, data)
        self._best_score = score
        self._write_json(score)
        return True
