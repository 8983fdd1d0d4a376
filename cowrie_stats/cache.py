"""A small LRU of statistics responses keyed by request and data version.

Dashboards ask the same questions again and again. The data version is bumped
in every ingest transaction that stores something and is read in the same
snapshot as the figures, so a cached answer is exactly the answer a new query
would give -- never stale -- and costs one tiny query instead of a dozen.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any

from cowrie_stats import metrics


class ResultCache:
    """Thread-safe least-recently-used mapping with a fixed number of entries."""

    def __init__(self, max_entries: int) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[Hashable, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> Any | None:
        with self._lock:
            value = self._entries.get(key)
            if value is not None:
                self._entries.move_to_end(key)
        (metrics.CACHE_HITS if value is not None else metrics.CACHE_MISSES).inc()
        return value

    def put(self, key: Hashable, value: Any) -> None:
        with self._lock:
            self._entries[key] = value
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
