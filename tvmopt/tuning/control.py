"""What ends a tune and when: stop signals (finish the batch, then stop), the clock that
estimates whether another round fits in the time budget, and how long a measured round waits for
a database another process is writing."""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..database import DatabaseUnavailable
from ..errors import TvmoptError
from ..formatting import duration

log = logging.getLogger("tvmopt.tuning")

# How long a measured round waits, in memory, for the database's write lock while another process
# holds it (a long `db merge`), before the tune stops with the command that resumes it.
LOCK_WAIT_S = 600.0


def store_round(store, write: Callable[[], None], n: int,
                should_stop: Callable[[], bool] = lambda: False) -> None:
    """Run `write` (a round's `n` results) in one write transaction. While another process holds
    the lock past SQLite's busy timeout, keep the results and try again with backoff, for up to
    LOCK_WAIT_S or until a stop signal; then raise the DatabaseUnavailable (`waited_s` set).
    A full disk is raised at once."""
    start = time.monotonic()
    pause = 1.0
    while True:
        try:
            with store.write():
                write()
            if pause > 1.0:
                log.info("the round is stored, after %s waiting for the database",
                         duration(time.monotonic() - start))
            return
        except DatabaseUnavailable as e:
            waited = time.monotonic() - start
            if not e.locked or should_stop() or waited + pause > LOCK_WAIT_S:
                e.waited_s = waited
                raise
            if pause == 1.0:
                log.warning("database %s is locked by another process: keeping this round's %d "
                            "results in memory and trying again for up to %s", store.path, n,
                            duration(LOCK_WAIT_S))
            time.sleep(pause)
            pause = min(pause * 2, 30.0)


def round_not_stored(e: DatabaseUnavailable, n: int, command: str) -> TvmoptError:
    """The one line a tune ends with when its measured round cannot be written."""
    resume = f"resume with: {command}" if command else "run the tune again to resume"
    if e.locked:
        return TvmoptError(
            f"database {e.path} is locked by another process (a merge, prune, import or tune "
            f"writing to it) and stayed locked for {duration(e.waited_s)}; this round's {n} "
            f"results were not stored, every round before it was; {resume}")
    where = e.path.parent if str(e.path.parent) else "."
    return TvmoptError(f"database {e.path}: the disk is full; this round's {n} results were not "
                       f"stored, every round before it was; free space on {where}, then {resume}")


class StopAfterBatch:
    """First Ctrl-C or SIGTERM: finish the batch being measured, then stop. Second: stop now.

    SIGTERM is what `timeout`, systemd and CI runners send; it gets the same clean stop. The build
    and measurement workers ignore both (`measure.ignore_stop_signals`), so a terminal's Ctrl-C,
    which reaches the whole process group, does not kill the batch in flight.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, stop_now: Callable[[int], None]):
        self.signal_name: str | None = None  # the first stop signal received
        self.stop_now = stop_now  # called with the signal number on a second one; exits
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def __enter__(self):
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def _handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested:
            log.warning("%s again: stopping now; the batch in flight is not recorded", name)
            self.stop_now(signum)
        self.signal_name = name
        log.warning("%s: stopping after the current batch (send it again to stop at once)",
                    "Ctrl-C" if name == "SIGINT" else name)

    def __exit__(self, *exc):
        # After a stop signal these handlers stay: the tune is ending, a further signal means
        # "stop now", and a handler restored now could still be given the first signal by the
        # CLI's watcher thread (tvmopt.cli.process), which would report it as an interruption.
        if self.requested:
            return
        for s, previous in self._previous.items():
            signal.signal(s, previous)


@dataclass
class RoundClock:
    """Estimates of how long a round takes, for the time budget and the ETA."""

    search_s: float | None = None  # per round
    per_candidate_s: float | None = None  # build + measure + database, per candidate

    def observe(self, search_s: float | None, rest_s: float, n: int) -> None:
        """A round's search time (None for a round that was not searched) and the rest."""
        blend = (lambda old, new: new if old is None else 0.7 * old + 0.3 * new)
        if search_s is not None:
            self.search_s = blend(self.search_s, search_s)
        self.per_candidate_s = blend(self.per_candidate_s, rest_s / max(n, 1))

    def round_s(self, n: int) -> float | None:
        if self.search_s is None:
            return None
        return self.search_s + n * self.per_candidate_s
