"""What ends a tune and when: stop signals (finish the batch, then stop) and the clock that
estimates whether another round fits in the time budget."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("tvmopt.tuning")


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
