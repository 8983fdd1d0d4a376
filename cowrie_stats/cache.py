"""A small LRU of statistics responses keyed by request and data version, bounded in bytes.

Dashboards ask the same questions again and again. The data version is bumped
in every ingest transaction that stores something, and an answer is cached
under the version of the snapshot it was computed from, so a cached answer is
exactly what a query of that version gives. Which version a call asks for
comes either from the call's own snapshot (one tiny query, never stale) or from
:class:`DataVersionWatch`, a background poll, so that a hit costs no database
round trip at all and answers trail an ingest by at most the poll interval.

Attackers write what the answers hold, and callers write the requests, so the
cache is bounded by the bytes of its entries as well as by their number, and no
entry may take more than a fraction of the bound: a few huge answers cannot push
out everything else, nor grow the process.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cowrie_stats import metrics
from cowrie_stats.deadline import Deadline
from cowrie_stats.errors import DeadlineExceededError
from cowrie_stats.periodic import Periodic

T = TypeVar("T")
log = logging.getLogger(__name__)
#: An entry larger than this share of the cache's bytes is not kept (1/8: 2 MiB of 16).
MAX_ENTRY_SHARE = 8
DEFAULT_MAX_BYTES = 16 * 1024 * 1024


@dataclass
class _Flight:
    """One computation in progress that other callers of the same key wait for."""

    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    failed: bool = False


class ResultCache:
    """Thread-safe least-recently-used mapping bounded by entries and by bytes.

    The size of an entry is what the caller's ``size_of`` says (the statistics
    servicer counts the serialized bytes of the answer and of its request key);
    an entry larger than ``max_bytes / MAX_ENTRY_SHARE`` is returned but not kept.

    :meth:`get_or_compute` is single-flight: when many callers miss on the same
    key at once (a dashboard refreshed by many viewers after an ingest), one
    computes and the others wait for its answer instead of running the same
    queries side by side.
    """

    def __init__(self, max_entries: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_bytes // MAX_ENTRY_SHARE
        self._entries: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()

    def get_or_compute(
        self,
        key: Hashable,
        compute: Callable[[], T],
        deadline: Deadline,
        keep: Callable[[T], bool] = lambda _value: True,
        size_of: Callable[[T], int] = sys.getsizeof,
    ) -> T:
        """The cached value of ``key``, else ``compute()``, stored when ``keep`` says so
        and it is small enough (``size_of`` bytes).

        A caller that finds the same key being computed waits for that answer
        until ``deadline`` (then DeadlineExceededError).
        """
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                metrics.CACHE_HITS.inc()
                return self._entries[key][0]  # type: ignore[no-any-return]
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            if not flight.done.wait(deadline.remaining()):
                raise DeadlineExceededError("deadline passed waiting for the same query")
            if not flight.failed:
                metrics.CACHE_HITS.inc()
                return flight.value  # type: ignore[no-any-return]
            return compute()  # the leader failed (its endpoint, say): try ourselves
        metrics.CACHE_MISSES.inc()
        try:
            flight.value = compute()
        except BaseException:
            flight.failed = True
            raise
        finally:
            with self._lock:
                self._flights.pop(key, None)
            flight.done.set()
        if keep(flight.value):
            self.put(key, flight.value, size_of(flight.value))
        return flight.value  # type: ignore[no-any-return]

    def put(self, key: Hashable, value: Any, size: int) -> bool:
        """Keep ``value`` (``size`` bytes) under ``key``, evicting the least recently used
        entries to stay within both bounds; False when it is too large to keep."""
        if size > self.max_entry_bytes:
            return False
        with self._lock:
            self._forget(key)
            self._entries[key] = (value, size)
            self._bytes += size
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                self._forget(next(iter(self._entries)))
        return True

    def _forget(self, key: Hashable) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= entry[1]

    @property
    def bytes(self) -> int:
        """The bytes of the entries kept, as their ``size_of`` counted them."""
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)


class DataVersionWatch:
    """The data version as a background thread last read it.

    :meth:`current` is None until the first read succeeds and again when the
    last good read is older than a few intervals (database down, poll stuck):
    callers then read the version themselves and see the failure themselves.

    When the version changes, ``before_publishing(new)`` runs first (in this
    thread): it warms the cache for the new version while calls keep getting
    the answers of the old one, so a dashboard never waits for the queries an
    ingest made necessary.
    """

    STALE_AFTER_INTERVALS = 3

    def __init__(
        self,
        read_version: Callable[[], int],
        interval_seconds: float,
        before_publishing: Callable[[int], None] = lambda _version: None,
    ) -> None:
        self.read_version = read_version
        self.interval_seconds = interval_seconds
        self.before_publishing = before_publishing
        self._version: int | None = None
        self._read_at = 0.0
        self._warming = False
        # A failing poll logs once per outage: the router logs its reasons.
        self._polls = Periodic(
            "data-version",
            self.poll,
            interval_seconds,
            failing="data version unknown",
            recovered="data version known again",
            logger=log,
        )

    def current(self) -> int | None:
        age = time.monotonic() - self._read_at
        if not self._warming and age > self.interval_seconds * self.STALE_AFTER_INTERVALS:
            return None
        return self._version

    def poll(self) -> None:
        """Read the version (warming the cache when it changed); a failure raises."""
        version = self.read_version()
        self._read_at = time.monotonic()
        if self._version is not None and version != self._version:
            self._warming = True
            try:
                self.before_publishing(version)
            finally:
                self._warming = False
        self._version, self._read_at = version, time.monotonic()

    def start(self) -> None:
        """Read the version now (a failure only means "unknown"), then every interval."""
        self._polls.run_now()
        self._polls.start()

    @property
    def stopping(self) -> bool:
        return self._polls.stopping

    def close(self) -> None:
        # A warm-up query may still run; the thread is a daemon and stops at the
        # next request, so shutdown does not wait for it.
        self._polls.close(timeout=self.interval_seconds)
