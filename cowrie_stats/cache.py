"""A small LRU of statistics responses keyed by request and data version.

Dashboards ask the same questions again and again. The data version is bumped
in every ingest transaction that stores something and is read in the same
snapshot as the figures, so a cached answer is exactly the answer a new query
would give -- never stale -- and costs one tiny query instead of a dozen.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cowrie_stats import metrics
from cowrie_stats.errors import DeadlineExceededError

T = TypeVar("T")


@dataclass
class _Flight:
    """One computation in progress that other callers of the same key wait for."""

    done: threading.Event = field(default_factory=threading.Event)
    value: Any = None
    failed: bool = False


class ResultCache:
    """Thread-safe least-recently-used mapping with a fixed number of entries.

    :meth:`get_or_compute` is single-flight: when many callers miss on the same
    key at once (a dashboard refreshed by many viewers after an ingest), one
    computes and the others wait for its answer instead of running the same
    queries side by side.
    """

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._flights: dict[Hashable, _Flight] = {}
        self._lock = threading.Lock()

    def get_or_compute(self, key: Hashable, compute: Callable[[], T], wait_seconds: float) -> T:
        with self._lock:
            if key in self._entries:
                self._entries.move_to_end(key)
                metrics.CACHE_HITS.inc()
                return self._entries[key]  # type: ignore[no-any-return]
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = _Flight()
        if not leader:
            if not flight.done.wait(wait_seconds):
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
        self.put(key, flight.value)
        return flight.value  # type: ignore[no-any-return]

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
