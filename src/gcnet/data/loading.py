"""DataLoader worker processes: stopping a run is the main process's job."""

from __future__ import annotations

import os
import signal


def worker_init(worker_id: int) -> None:
    """A DataLoader worker's ``worker_init_fn``: on SIGTERM or SIGINT it leaves at once and quietly.

    ``timeout``, a job scheduler and Ctrl-C signal the whole process group. The main process handles the
    stop (a checkpoint finished, temporary files removed, "interrupted" and exit status 130/143). A worker
    killed by the signal would turn the stop into a "DataLoader worker is killed by signal" traceback, and
    one that ignored it would hang the main process's exit (which terminates its workers with SIGTERM)."""
    signal.signal(signal.SIGTERM, _leave)
    signal.signal(signal.SIGINT, _leave)


def _leave(signum: int, frame: object) -> None:
    os._exit(0)  # no clean-up to run in a worker, no thread left to print a broken connection
