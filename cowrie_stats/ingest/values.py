"""Ids of counted values in ``value_dictionary``, found by digest and cached across batches."""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from cowrie_stats.ingest.parse import HASH_BYTES

if TYPE_CHECKING:
    from cowrie_stats.ingest.bulk import BulkOps

# A (kind, text) pair: what value_dictionary holds one row for.
Value = tuple[int, str]

# Attackers repeat themselves (a few usernames, passwords and IPs make most of
# the traffic): a bounded cache answers most lookups without the database.
MAX_CACHED = 100_000
MAX_CACHED_CHARS = 256  # longer values are looked up each time rather than held


def value_digest(kind: int, text: str) -> bytes:
    """The fixed-size key of a value: attacker-written text never goes into an index."""
    return hashlib.blake2b(
        kind.to_bytes(2, "big") + text.encode("utf-8"), digest_size=HASH_BYTES
    ).digest()


class ValueIds:
    """Resolves values to dictionary ids, adding the new ones.

    Only ids read back from the database are cached, never the ones a batch
    assigns: a batch that rolls back must not leave ids behind that no row holds.
    """

    def __init__(self) -> None:
        self._cached: dict[Value, int] = {}

    @classmethod
    def of(cls, engine: Engine) -> ValueIds:
        """The cache shared by every batch written through ``engine``."""
        known = _BY_ENGINE.get(engine)
        if known is None:
            known = _BY_ENGINE[engine] = cls()
        return known

    def resolve(self, bulk: BulkOps, values: Iterable[Value]) -> dict[Value, int]:
        wanted = set(values)
        ids = {value: self._cached[value] for value in wanted if value in self._cached}
        missing = [value for value in wanted if value not in ids]
        if not missing:
            return ids
        digests = {value_digest(kind, text): (kind, text) for kind, text in missing}
        for digest, value_id in bulk.dictionary_ids(list(digests)):
            value = digests.pop(digest)
            ids[value] = value_id
            self._remember(value, value_id)
        if digests:
            new_ids = bulk.new_ids("value_dictionary", len(digests))
            rows = [
                (value_id, kind, digest, text, len(text))
                for value_id, (digest, (kind, text)) in zip(new_ids, digests.items(), strict=True)
            ]
            bulk.insert_dictionary(rows)
            ids.update(((kind, text), value_id) for value_id, kind, _, text, _ in rows)
        return ids

    def _remember(self, value: Value, value_id: int) -> None:
        if len(value[1]) > MAX_CACHED_CHARS:
            return
        if len(self._cached) >= MAX_CACHED:
            self._cached.clear()  # crude, and rare: a run sees few distinct values
        self._cached[value] = value_id


_BY_ENGINE: weakref.WeakKeyDictionary[Engine, ValueIds] = weakref.WeakKeyDictionary()
