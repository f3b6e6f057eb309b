"""The ``gcnet`` command line: one subcommand per job, each defined in its own module."""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from gcnet.errors import GCNetError

# Each module defines ``register(subparsers)``: it adds its parser and sets ``func(args) -> int``.
SUBCOMMANDS = ("info", "train", "eval", "demo", "predict", "export", "bench", "weights")


class _Parser(argparse.ArgumentParser):
    """Usage errors in two lines (the full usage of a subcommand is long): the error, then where help is."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n(run '{self.prog} --help' for the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="gcnet",
        description="GCNet real-time semantic segmentation: train, evaluate, reparameterize, export, benchmark.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        importlib.import_module(f"gcnet.cli.{name}").register(sub)
    return parser


def user_message(exc: GCNetError) -> str:
    """The message of a user-facing error, without the worker traceback torch adds when it crossed a DataLoader.

    A DataLoader re-raises a worker's exception in the main process as the same type whose message is
    "Caught X in DataLoader worker process N. Original Traceback ...": keep only the original message.
    """
    text = str(exc)
    if "Original Traceback (most recent call last):" not in text:
        return text
    marker = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    at = text.rfind(marker)
    return text[at + len(marker):].strip() if at >= 0 else text


_WRITE_FAILURES = ("No space left on device", "unexpected pos", "basic_ios::clear")  # torch's zip writer, C++ streams


def resource_message(exc: BaseException) -> str | None:
    """One line for running out of memory or disk space (the machine's limits, not a bug), for a folder
    where a file is to be written, or for a file name too long for the file system; else None."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and (
            "can't allocate memory" in text or "out of memory" in text.lower())):
        return f"out of memory ({text[:160]}); use a smaller input size or batch, or free memory"
    if isinstance(exc, IsADirectoryError) and exc.filename:  # raised by gcnet.fileio.atomic_path
        return f"cannot write {exc.filename}: a folder of that name is in the way; move or rename it"
    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return f"file name too long: {exc.filename}; give shorter names (inputs, --out, --name, --json)"
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"no space left on the device{where}; free some space and run again (finished files are kept)"
    if not isinstance(exc, OSError) and any(s in str(exc) for s in _WRITE_FAILURES):
        return f"could not write a file ({text[:160]}): disk full? free some space and run again"
    return None


@contextlib.contextmanager
def _sigterm_as_ctrl_c(terminated: list[int]) -> Iterator[None]:
    """Handle SIGTERM (``kill``, ``timeout``, a job scheduler) as Ctrl-C, so that the same clean-up runs:
    temporary files removed, a checkpoint being written finished first. Only where Ctrl-C raises
    KeyboardInterrupt in this, the main, thread (not where the shell made this process ignore it)."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return

    owner = os.getpid()

    def on_term(signum, frame) -> None:
        if os.getpid() != owner:  # a child forked by a library (it inherits handlers): SIGTERM as without gcnet
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        terminated.append(signum)
        signal.raise_signal(signal.SIGINT)  # through whatever SIGINT handler is in place now

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    terminated: list[int] = []
    prog = "gcnet"
    try:
        with _sigterm_as_ctrl_c(terminated):
            args, extra = build_parser().parse_known_args(argv)  # imports torch: seconds, Ctrl-C included
            prog = f"gcnet {args.command}"
            if extra and args.command != "train":
                _Parser(prog=prog).error(f"unrecognized arguments: {' '.join(extra)}")
            return _run(args, extra)
    except KeyboardInterrupt:
        print(f"{prog}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130
    except BrokenPipeError:  # the reader went away (gcnet weights | head): stop quietly, as a shell tool does
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error flushing at exit
        return 141


def _run(args: argparse.Namespace, extra: list[str]) -> int:
    """Run the subcommand; a user's mistake or the machine's limits become one line and exit status 2."""
    try:
        if extra:  # train: nested keys (--model.overrides.channels 8) and a clear message for unknown keys
            from gcnet.engine.config import parse_override_args

            args.set = parse_override_args(extra) + list(args.set)
        return int(args.func(args) or 0)
    except GCNetError as exc:
        print(f"gcnet {args.command}: error: {user_message(exc)}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - only the machine's limits are turned into a message
        message = resource_message(exc)
        if message is None:
            raise
        print(f"gcnet {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
