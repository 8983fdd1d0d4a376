"""Work repeated in the background: one daemon thread per job, stopped and joined on close.

The server's loops (the access-log flush, the data-version poll, the endpoint
checks, the health status) are each a :class:`Periodic`: a step, the wait
before the next one (fixed, or chosen after each step), a wake-up for work that
cannot wait, and a close that joins. A step that raises does not end its loop;
the first failure and the recovery are logged, not every failing round.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``step`` in thread ``name`` every ``interval`` seconds until :meth:`close`.

    ``next_delay``, when given, chooses each wait after a step instead. The first
    step runs after ``first_delay`` (default: the interval). ``failing`` and
    ``recovered`` are the log messages of a loop that starts and stops failing.
    """

    def __init__(
        self,
        name: str,
        step: Callable[[], object],
        interval: float,
        *,
        next_delay: Callable[[], float] | None = None,
        first_delay: float | None = None,
        failing: str | None = None,
        recovered: str | None = None,
        logger: logging.Logger = log,
    ) -> None:
        self.name = name
        self.step = step
        self.interval = interval
        self.next_delay = next_delay
        self.first_delay = interval if first_delay is None else first_delay
        self.failing_message = failing or f"{name} failing"
        self.recovered_message = recovered or f"{name} works again"
        self.logger = logger
        self.failing = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        return self._thread is not None

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def start(self) -> None:
        """Start the thread (once; later calls do nothing)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def wake(self) -> None:
        """Run the next step now rather than at the end of the wait."""
        self._wake.set()

    def run_now(self) -> bool:
        """One step in the calling thread; True when it did not raise."""
        try:
            self.step()
        except Exception as error:  # a loop outlives its failures; logged once each
            if not self.failing:
                self.logger.warning(
                    self.failing_message, extra={"worker": self.name, "error": type(error).__name__}
                )
            self.failing = True
            return False
        if self.failing:
            self.logger.info(self.recovered_message, extra={"worker": self.name})
            self.failing = False
        return True

    def _run(self) -> None:
        delay = self.first_delay
        while True:
            self._wake.wait(delay)
            # Cleared before stop is read: a close after this point leaves the wake set.
            self._wake.clear()
            if self._stop.is_set():
                return
            self.run_now()
            delay = self.interval if self.next_delay is None else self.next_delay()

    def stop(self) -> None:
        """Ask the loop to end after the step in progress, without waiting for it."""
        self._stop.set()
        self._wake.set()

    def close(self, timeout: float | None = None) -> None:
        """Stop, and wait for the thread to end: at most ``timeout`` seconds when given."""
        self.stop()
        if self._thread is not None:
            self._thread.join(timeout)
