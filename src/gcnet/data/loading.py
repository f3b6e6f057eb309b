"""DataLoader worker processes: stopping a run is the main process's job."""

from __future__ import annotations

import signal
import threading


def worker_init(worker_id: int) -> None:
    """Ignore SIGTERM and SIGINT in a DataLoader worker (its ``worker_init_fn``).

    ``timeout``, a job scheduler and Ctrl-C signal the whole process group. The main process handles the
    stop (a checkpoint finished, temporary files removed, "interrupted" and exit status 130/143) and then
    shuts its workers down; a worker killed by the signal itself would instead turn the stop into a
    "DataLoader worker is killed by signal" traceback. A worker outlives nothing: it exits when its
    loader shuts down or its main process is gone."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.excepthook = _quiet_when_main_gone


def _quiet_when_main_gone(args: threading.ExceptHookArgs) -> None:
    """A worker's helper threads (handing batches to the main process) fail with a connection error when
    the main process stopped first: nothing to report then."""
    if not issubclass(args.exc_type, ConnectionError):
        threading.__excepthook__(args)
