"""Writing run outputs safely: atomic file and folder writes, fresh run dirs, and one-line
errors for outputs that cannot be written.

A file is written to a temporary name beside its target, flushed, fsynced and renamed over
it, so a process killed at any moment leaves either the old file or the new one, never a
torn one (checkpoints, configs, metrics all go through here). An output folder (an
evaluation, an adaptation, a comparison) is built under a temporary name and renamed into
place the same way (:func:`publish_dir`); an existing one is replaced only when asked
(``--force``), the one rule for every command. A folder that cannot be written (read-only,
full disk) is an :class:`OutputError`: one line naming the path, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from hyperrl.errors import HyperrlError
from hyperrl.runlock import LOCK_NAME, run_lock

__all__ = ["OutputError", "atomic_write", "atomic_write_path", "atomic_write_bytes", "atomic_write_text", "write_json",
           "check_writable", "refuse_existing", "publish_dir", "fresh_run_dir"]


class OutputError(HyperrlError):
    """An output that cannot be written (read-only folder, full disk) or would replace one."""


def _why(e: OSError) -> str:
    return e.strerror or str(e) or type(e).__name__


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


def atomic_write_path(path: str | os.PathLike, write_to: Callable[[Path], Any]) -> Path:
    """``write_to(tmp)`` writes a temporary file beside ``path`` (for libraries that write to
    a path: TorchScript, ONNX, matplotlib), which is fsynced and renamed over ``path``.
    An OS error (read-only folder, full disk) is an :class:`OutputError` naming ``path``."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_to(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {path}: {_why(e)}") from None
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(fileobj)`` on a temporary file beside ``path``, then as
    :func:`atomic_write_path`."""

    def write_to(tmp: Path) -> None:
        # os.open with 0o666 (not mkstemp's 0o600) so the file gets the usual umask permissions
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()

    atomic_write_path(path, write_to)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def check_writable(folder: str | os.PathLike) -> None:
    """Refuse (:class:`OutputError`) before any work when files cannot be created in
    ``folder``, or, while it does not exist, in its nearest existing ancestor (where it would
    be created). A real create-and-delete probe, not ``os.access``: root ignores permission
    bits but not a read-only file system. Leaves nothing behind."""
    target = Path(folder)
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"cannot write to {target}: {probe} is not a folder")
    tmp = tmp_name(probe / "write-check")
    try:
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(tmp)
    except OSError as e:
        raise OutputError(f"cannot write to {target}: {_why(e)}") from None


def _occupied(path: Path) -> bool:
    """Whether ``path`` holds something (an empty folder counts as free)."""
    return path.exists() and not (path.is_dir() and not any(path.iterdir()))


def refuse_existing(out: str | os.PathLike, force: bool, hint: str = "pick another --name or pass --force") -> None:
    """The one overwrite rule: an existing output is replaced only with ``force`` (an empty
    folder is free to fill)."""
    if _occupied(Path(out)) and not force:
        raise OutputError(f"{out} already exists; {hint}")


def publish_dir(out: str | os.PathLike, build: Callable[[Path], None], force: bool,
                hint: str = "pick another --name or pass --force") -> Path:
    """Build the folder ``out`` with ``build(tmp)`` under a temporary name beside it, then
    rename it into place: a reader never sees a half-written folder, and a failure leaves
    ``out`` as it was. An existing ``out`` is replaced only with ``force`` (moved aside, then
    deleted). Returns ``out``."""
    out = Path(out)
    refuse_existing(out, force, hint)
    check_writable(out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        tmp.mkdir()
        build(tmp)
        if _occupied(out):
            refuse_existing(out, force, hint)  # appeared meanwhile (another process)
            trash = out.parent / f".{out.name}.{secrets.token_hex(4)}.old"
            os.replace(out, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, out)  # onto an empty folder too (POSIX rename)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise OutputError(f"cannot write {out}: {_why(e)}") from None
        raise
    _fsync_dir(out.parent)
    return out


def _has_content(run_dir: Path) -> bool:
    """Whether a folder holds anything but a run-dir lock file."""
    return any(p.name != LOCK_NAME for p in run_dir.iterdir())


def _new_run_dir(family_name: str, name_prefix: str, seed: int, run_dir: str | os.PathLike | None,
                 exists_hint: str) -> tuple[Path, bool]:
    """(path, created): ``run_dir`` if given (created unless it is an empty folder; refused if
    it is a file or a non-empty folder), else a fresh ``runs/<family>/<prefix><timestamp>-s<seed>[-i]``."""
    if run_dir is not None:
        path = Path(run_dir)
        if path.exists() and not path.is_dir():
            raise OutputError(f"run dir {path} exists and is not a folder")
        if path.exists() and _has_content(path):
            raise OutputError(f"run dir {path} already exists and is not empty; {exists_hint}")
        existed = path.exists()
        check_writable(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create run dir {path}: {_why(e)}") from None
        return path, not existed
    base = Path("runs") / family_name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = base / (f"{name_prefix}{stamp}-s{seed}" + (f"-{i}" if i else ""))
        try:
            path.mkdir(parents=True)
            return path, True
        except FileExistsError:
            continue
        except OSError as e:
            raise OutputError(f"cannot create run dir {path}: {_why(e)}") from None
    raise OutputError(f"could not create a fresh run dir under {base}")


@contextlib.contextmanager
def fresh_run_dir(family_name: str, name_prefix: str, seed: int, run_dir: str | os.PathLike | None,
                  keep: Callable[[Path], bool], exists_hint: str = "pick another --run-dir") -> Iterator[Path]:
    """A new run dir (see :func:`_new_run_dir`; never reuses a non-empty folder) for the
    ``with`` block. If the block fails and ``keep(path)`` is false (nothing worth keeping was
    written yet, e.g. no checkpoint), what this run created is removed again, so the same
    ``--run-dir`` can be used once the problem is fixed."""
    path, created = _new_run_dir(family_name, name_prefix, seed, run_dir, exists_hint)
    try:
        # the trainer's exclusive lock (hyperrl.runlock), then the emptiness check again: a
        # second trainer that raced for the same new --run-dir is refused, never merged
        lock = run_lock(path, exclusive=True, what="train into")
        lock.__enter__()
    except BaseException:
        if created:  # mkdir raced with another trainer's: its folder, left alone
            with contextlib.suppress(OSError):
                path.rmdir()  # only if still empty
        raise
    try:
        if _has_content(path):
            raise OutputError(f"run dir {path} already exists and is not empty; {exists_hint}")
        try:
            yield path
        except BaseException:
            if not keep(path):
                if created:
                    shutil.rmtree(path, ignore_errors=True)
                else:  # a folder that was empty before this run: empty it again
                    for child in list(path.iterdir()):
                        if child.is_dir() and not child.is_symlink():
                            shutil.rmtree(child, ignore_errors=True)
                        else:
                            child.unlink(missing_ok=True)
            raise
    finally:
        lock.__exit__(None, None, None)
