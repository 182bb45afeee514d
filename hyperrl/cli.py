"""Shared command-line plumbing: one-line errors, argparse setup, config flags, ``--device``.

Every entry point is wrapped in :func:`main_guard`, so a :class:`HyperrlError` (bad
family, config key, run dir, checkpoint...) or an allocation the machine cannot serve prints
``error: <message>`` on one line and exits with status 2, Ctrl-C exits with 130, and only
real bugs show a traceback.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any, Callable, NoReturn, TypeVar

import torch

from hyperrl.errors import HyperrlError, one_line

__all__ = [
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "HyperrlArgumentParser",
    "main_guard",
    "make_parser",
    "parse_device",
    "int_range",
    "seed_arg",
]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
F = TypeVar("F", bound=Callable[..., Any])


def main_guard(fn: F) -> F:
    """Wrap a CLI entry point: ``HyperrlError`` -> ``error: <msg>`` on stderr, exit 2;
    ``KeyboardInterrupt`` -> one line, exit 130. Other exceptions propagate (real bugs).

    Use as a decorator (``@main_guard``) or call ``main_guard(main)(argv)``.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except HyperrlError as e:
            sys.stdout.flush()
            print(f"error: {one_line(e) or type(e).__name__}", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except (MemoryError, RuntimeError) as e:
            if not _out_of_memory(e):
                raise
            sys.stdout.flush()
            print(f"error: out of memory ({_allocation(e)}); use fewer envs, variants, episodes or steps per "
                  "rollout, or smaller networks", file=sys.stderr)
            sys.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            sys.stdout.flush()
            print("interrupted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)

    return wrapper  # type: ignore[return-value]


def _out_of_memory(e: BaseException) -> bool:
    """An allocation the machine cannot serve (host or accelerator memory): a setting that
    asks for too much, not a bug."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError
        return True
    text = str(e)
    return "can't allocate memory" in text or "out of memory" in text.lower()


def _allocation(e: BaseException) -> str:
    """``tried to allocate 8.0 GiB`` when the message says how much, else the message."""
    import re

    m = re.search(r"allocate (\d+) bytes", str(e)) or re.search(r"allocate ([\d.]+ [KMGT]i?B)", str(e))
    if m is None:
        return one_line(e, 200) or type(e).__name__
    amount = m.group(1)
    if amount.isdigit():
        amount = f"{int(amount) / 2**30:.1f} GiB"
    return f"tried to allocate {amount}"


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults and keeps the description/epilog line breaks (e.g. config key docs)."""


class HyperrlArgumentParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors read like every other error: ``error: ...``."""

    def error(self, message: str) -> NoReturn:
        """Print ``error: <message>`` and a ``--help`` hint to stderr, exit 2."""
        self.exit(EXIT_USAGE, f"error: {one_line(message)}\nrun '{self.prog} --help' for usage\n")


def make_parser(prog: str, description: str, *, epilog: str | None = None) -> HyperrlArgumentParser:
    """An argument parser with one-line usage errors (exit 2) and defaults shown in ``--help``.

    Subparsers made with ``add_subparsers()`` inherit the same behaviour.
    """
    return HyperrlArgumentParser(
        prog=prog, description=description, epilog=epilog, formatter_class=_HelpFormatter
    )


def int_range(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    """An argparse ``type``: an integer in ``[lo, hi]`` (an end left open when None). A bad
    value becomes the parser's one-line error naming the option (``argument --seed: ...``)."""

    def integer(text: str) -> int:
        try:
            value = int(str(text).strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            span = f"[{lo}, {hi}]" if lo is not None and hi is not None else f">= {lo}" if lo is not None \
                else f"<= {hi}"
            raise argparse.ArgumentTypeError(f"must be an integer {span}, got {value}")
        return value

    return integer


def seed_arg(text: str) -> int:
    """An argparse ``type`` for every ``--seed``: an integer in [0, MAX_SEED]."""
    from hyperrl.seeding import MAX_SEED

    return int_range(0, MAX_SEED)(text)


def parse_device(s: str) -> torch.device:
    """``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` -> ``torch.device``; HyperrlError if unavailable.

    ``auto`` picks ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``.
    """
    text = str(s).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index: int | None = None
        if text != "cuda":
            idx = text[len("cuda:"):]
            if not idx.isdigit():
                raise HyperrlError(f"invalid --device {s!r}; expected auto, cpu, cuda or cuda:N")
            index = int(idx)
        if not torch.cuda.is_available():
            raise HyperrlError(f"--device {text} requested but CUDA is not available")
        if index is not None:
            count = torch.cuda.device_count()
            if index >= count:
                raise HyperrlError(
                    f"--device {text} requested but only {count} CUDA device(s) are visible "
                    f"(cuda:0..cuda:{count - 1})"
                )
            return torch.device("cuda", index)
        return torch.device("cuda")
    raise HyperrlError(f"invalid --device {s!r}; expected auto, cpu, cuda or cuda:N")

