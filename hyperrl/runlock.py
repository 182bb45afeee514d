"""One writer per run dir: an OS lock on ``RUN_DIR/.lock``.

The process that trains into a run dir (``hyperrl.train``, its ``--resume``,
``hyperrl.baselines``, a sweep trial) holds an **exclusive** lock on it for its whole
lifetime and writes who it is into the lock file (pid, host, command, start time). A process
that writes its own outputs into a finished run (``hyperrl.evaluate`` into
``RUN_DIR/eval/<name>``, ``hyperrl.adapt`` into ``RUN_DIR/adapt/<name>``) holds a **shared**
lock while it works: any number of them may run side by side, but none while a trainer
holds the dir, and no trainer while one of them works. The loser is refused at once with
one line naming the holder (:class:`RunLockedError`). Reading a run (``hyperrl.load``,
``hyperrl.compare``, ``hyperrl.evaluate``'s Python API with ``write=False``) takes no lock,
so a reader is never refused.

The lock is ``fcntl.flock`` on the open lock file: the OS drops it when its holder exits,
however it exits, so a lock left by a killed process never blocks (the holder details still
in the file are then simply stale and ignored). On a cluster the run dirs live on a shared
file system; Linux maps ``flock`` to POSIX byte-range locks on NFS, which the server
arbitrates across hosts.

Locks are re-entrant within a process: a sweep trial that holds a run dir may call the
trainer and the evaluator, which take the same lock again. The lock file is never deleted
while in use (deleting it would let a second process lock a fresh inode under the same
name); an acquirer checks that the file it locked is still the one at the path.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hyperrl.errors import HyperrlError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no flock; run dirs are then unguarded
    fcntl = None  # type: ignore[assignment]

__all__ = ["LOCK_NAME", "RunLockedError", "run_lock", "holder", "describe_holder"]

LOCK_NAME = ".lock"
_POLL_S = 0.2


class RunLockedError(HyperrlError):
    """The run dir is locked by another process (a trainer, or an evaluation or adaptation
    writing into it)."""


@dataclass
class _Held:
    fd: int
    exclusive: bool
    count: int


_HELD: dict[str, _Held] = {}
_GUARD = threading.Lock()


def _key(run_dir: str | os.PathLike) -> str:
    return os.path.realpath(run_dir)


def _command() -> str:
    """``python -m hyperrl.train --resume runs/x`` for this process (cut to 300 characters)."""
    argv = list(sys.argv) or ["python"]
    head = argv[0]
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    if spec is not None and getattr(spec, "name", None):
        head = f"python -m {spec.name.removesuffix('.__main__')}"
    text = " ".join([head, *argv[1:]])
    return text if len(text) <= 300 else text[:297] + "..."


def _read_info(fd: int) -> dict[str, Any] | None:
    """The holder details in the lock file (None when empty or unreadable)."""
    try:
        data = os.pread(fd, 64 * 1024, 0)
        info = json.loads(data.decode("utf-8")) if data.strip() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return info if isinstance(info, dict) else None


def _local_holders(fd: int) -> list[tuple[int, str]] | None:
    """(pid, READ|WRITE) of the processes on this host holding a flock on ``fd``'s file,
    from ``/proc/locks``; None where that table is not available."""
    try:
        st = os.fstat(fd)
        with open("/proc/locks", encoding="ascii", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    out = []
    for line in lines:
        parts = line.split()
        if "->" in parts:  # a waiter, not a holder
            continue
        try:
            i = parts.index("FLOCK")
            mode, pid, where = parts[i + 2], int(parts[i + 3]), parts[i + 4]
        except (ValueError, IndexError):
            continue
        maj, mnr, ino = (where.split(":") + ["", "", ""])[:3]
        try:
            same = (int(maj, 16), int(mnr, 16), int(ino)) == (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino)
        except ValueError:
            same = where == want
        if same:
            out.append((pid, mode))
    return out


def _proc_command(pid: int) -> str | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    text = " ".join(p.decode("utf-8", "replace") for p in raw.split(b"\0") if p)
    return text[:200] or None


def describe_holder(info: dict[str, Any] | None) -> str:
    """``pid 123 on host h (python -m hyperrl.train ..., since 2026-11-29 10:00:00)``."""
    if not info:
        return "another process (no details recorded)"
    bits = [f"pid {info.get('pid', '?')}"]
    if info.get("host"):
        bits.append(f"on host {info['host']}")
    extra = [str(info[k]) for k in ("command",) if info.get(k)]
    if info.get("started"):
        extra.append(f"since {info['started']}")
    return " ".join(bits) + (f" ({', '.join(extra)})" if extra else "")


def holder(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The trainer holding ``run_dir``'s exclusive lock now (its recorded details, or a holder
    found in ``/proc/locks``), or None when no trainer holds it. Reads only."""
    path = Path(run_dir) / LOCK_NAME
    if fcntl is None or not path.is_file():
        return None
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _holder_of(fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _holder_of(fd: int) -> dict[str, Any]:
    """The details of whoever blocks us: the trainer's recorded details when they belong to
    a live holder (or to another host, which /proc/locks cannot see), else a local holder
    read from /proc/locks (an evaluation or adaptation records nothing)."""
    info = _read_info(fd)
    local = _local_holders(fd)
    if info and (local is None or info.get("host") != socket.gethostname()
                 or any(pid == info.get("pid") for pid, _ in local)):
        return info
    for pid, mode in local or []:
        if pid != os.getpid():
            return {"pid": pid, "host": socket.gethostname(), "command": _proc_command(pid),
                    "mode": "exclusive" if mode == "WRITE" else "shared"}
    return info or {}


def _refusal(run_dir: Path, exclusive: bool, who: dict[str, Any], what: str) -> RunLockedError:
    role = "trains into it" if who.get("mode", "exclusive") == "exclusive" else "writes into it"
    hint = ("wait for it to finish or stop it (a lock left by a killed process is released by the OS)")
    return RunLockedError(f"cannot {what} run dir {run_dir}: {describe_holder(who)} {role}; {hint}")


def _open_lock_file(path: Path, flags: int, run_dir: Path) -> int:
    """The lock file opened for flock; -1 for a read-only folder without one (there the
    command's own write check reports the folder, in its usual words)."""
    try:
        return os.open(path, flags, 0o644)
    except OSError as e:
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            try:
                return os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))  # flock needs no write access
            except FileNotFoundError:
                return -1
            except OSError:
                pass
        from hyperrl.fileio import OutputError

        raise OutputError(f"cannot lock run dir {run_dir}: {e.strerror or e}") from None


def _acquire(run_dir: Path, exclusive: bool, wait_s: float, what: str) -> None:
    key = _key(run_dir)
    with _GUARD:
        held = _HELD.get(key)
        if held is not None:
            if exclusive and not held.exclusive:
                raise RuntimeError(f"{run_dir}: a shared run-dir lock cannot be upgraded to an exclusive one")
            held.count += 1
            return
    path = run_dir / LOCK_NAME
    deadline = time.monotonic() + max(0.0, wait_s)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
    while True:
        fd = _open_lock_file(path, flags, run_dir)
        if fd < 0:  # a folder nobody can write into: nobody trains into it either
            with _GUARD:
                _HELD[key] = _Held(-1, exclusive, 1)
            return
        try:
            fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                from hyperrl.fileio import OutputError

                raise OutputError(f"cannot lock run dir {run_dir}: {e.strerror or e}") from None
            who = _holder_of(fd)
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(_POLL_S)
                continue
            raise _refusal(run_dir, exclusive, who, what) from None
        # The file may have been deleted (its run dir removed) between open and flock: a
        # lock on an unlinked inode guards nothing, so start again on the path's file.
        try:
            now, ours = os.stat(path), os.fstat(fd)
            same = (now.st_dev, now.st_ino) == (ours.st_dev, ours.st_ino)
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    if exclusive:
        info = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S"), "mode": "exclusive"}
        with contextlib.suppress(OSError):  # the details are for messages only
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    with _GUARD:
        _HELD[key] = _Held(fd, exclusive, 1)


def _release(run_dir: Path) -> None:
    key = _key(run_dir)
    with _GUARD:
        held = _HELD.get(key)
        if held is None:
            return
        held.count -= 1
        if held.count > 0:
            return
        del _HELD[key]
    if held.fd < 0:
        return
    try:
        if not held.exclusive:
            # the last shared holder may clear stale details; losing the shared lock in the
            # attempt is fine, it is being released anyway
            try:
                fcntl.flock(held.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return
        with contextlib.suppress(OSError):
            os.ftruncate(held.fd, 0)
        fcntl.flock(held.fd, fcntl.LOCK_UN)
    finally:
        os.close(held.fd)


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, exclusive: bool = True, wait_s: float = 0.0,
             what: str = "train into") -> Iterator[Path]:
    """Hold ``run_dir``'s lock for the ``with`` block (the folder must exist).

    ``exclusive``: a trainer; otherwise a process writing its outputs into the run (many may
    share). Refused with :class:`RunLockedError` (one line naming the holder) when the lock
    is taken, after retrying for up to ``wait_s`` seconds. Re-entrant within a process."""
    path = Path(run_dir)
    if fcntl is None:  # pragma: no cover
        yield path
        return
    _acquire(path, exclusive, wait_s, what)
    try:
        yield path
    finally:
        _release(path)
