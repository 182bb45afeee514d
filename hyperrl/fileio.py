"""Writing run outputs safely: atomic file writes and fresh run dirs.

A file is written to a temporary name beside its target, flushed, fsynced and renamed over
it, so a process killed at any moment leaves either the old file or the new one, never a
torn one (checkpoints, configs, metrics, evaluation results all go through here).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

from hyperrl.errors import HyperrlError

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "write_json", "new_run_dir"]


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def tmp_name(path: Path) -> Path:
    """A unique hidden temporary name beside ``path`` (``.name.<pid>.<hex>.tmp``)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, fsync, rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_name(path)
    # os.open with 0o666 (not mkstemp's 0o600) so the file gets the usual umask permissions
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def new_run_dir(family_name: str, name_prefix: str, seed: int, run_dir: str | os.PathLike | None,
                exists_hint: str = "pick another --run-dir") -> Path:
    """``run_dir`` if given (created; refused if it is a file or a non-empty folder), else a
    fresh ``runs/<family>/<prefix><timestamp>-s<seed>[-i]``. Never reuses a folder."""
    if run_dir is not None:
        path = Path(run_dir)
        if path.exists() and not path.is_dir():
            raise HyperrlError(f"run dir {path} exists and is not a folder")
        if path.exists() and any(path.iterdir()):
            raise HyperrlError(f"run dir {path} already exists and is not empty; {exists_hint}")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise HyperrlError(f"cannot create run dir {path}: {e.strerror}") from None
        return path
    base = Path("runs") / family_name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = base / (f"{name_prefix}{stamp}-s{seed}" + (f"-{i}" if i else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as e:
            raise HyperrlError(f"cannot create run dir {path}: {e.strerror}") from None
    raise HyperrlError(f"could not create a fresh run dir under {base}")
