"""The result cache: LRU bounds in entries and bytes, single flight, a failing leader, keys."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.cache import MAX_ENTRY_SHARE, DataVersionWatch, ResultCache
from cowrie_stats.deadline import NO_DEADLINE, Deadline
from cowrie_stats.errors import DeadlineExceededError
from cowrie_stats.servicer import request_key
from cowrie_stats.validation import Filters, Limits, Window, threat_request


def test_lru_keeps_the_most_recent_entries() -> None:
    cache = ResultCache(max_entries=2)
    for key in ("a", "b", "a", "c"):  # the hit on "a" makes "b" the oldest
        cache.get_or_compute(key, key.upper, NO_DEADLINE)
    assert len(cache) == 2
    assert cache.get_or_compute("a", lambda: "recomputed", NO_DEADLINE) == "A"
    assert cache.get_or_compute("c", lambda: "recomputed", NO_DEADLINE) == "C"
    assert cache.get_or_compute("b", lambda: "recomputed", NO_DEADLINE) == "recomputed"


def test_bytes_bound_evicts_the_least_recently_used() -> None:
    cache = ResultCache(max_entries=100, max_bytes=800)  # entries of at most 100 bytes
    for key in ("a", "b", "c", "d", "e", "f", "g", "h"):
        cache.get_or_compute(key, lambda: "x" * 100, NO_DEADLINE, size_of=len)
    assert (len(cache), cache.bytes) == (8, 800)
    cache.get_or_compute(
        "a", lambda: "recomputed", NO_DEADLINE, size_of=len
    )  # a hit: "b" is oldest
    cache.get_or_compute("i", lambda: "y" * 60, NO_DEADLINE, size_of=len)
    assert (len(cache), cache.bytes) == (8, 760)
    assert cache.get_or_compute("b", lambda: "gone", NO_DEADLINE, size_of=len) == "gone"
    assert cache.get_or_compute("a", lambda: "recomputed", NO_DEADLINE, size_of=len) == "x" * 100


def test_an_entry_over_its_share_of_the_bytes_is_returned_not_kept() -> None:
    cache = ResultCache(max_entries=100, max_bytes=8 * MAX_ENTRY_SHARE)
    huge = "z" * (cache.max_entry_bytes + 1)
    assert cache.get_or_compute("k", lambda: huge, NO_DEADLINE, size_of=len) == huge
    assert (len(cache), cache.bytes) == (0, 0)
    assert cache.put("k", "12345678", 8) and cache.bytes == 8
    assert cache.put("k", "1234", 4) and (len(cache), cache.bytes) == (1, 4)  # replaced


def test_keys_are_the_normalised_requests() -> None:
    limits = Limits()

    def key(request: stats_pb2.GetThreatStatsRequest) -> tuple[str, bytes]:
        filters, top_n = threat_request(request, limits)
        return request_key(stats_pb2.GetThreatStatsRequest(top_n=top_n), filters)

    plain = stats_pb2.GetThreatStatsRequest(sensors=["b", "a"])
    assert key(plain) == key(stats_pb2.GetThreatStatsRequest(sensors=["a", "b", "a"], top_n=10))
    assert key(plain) != key(stats_pb2.GetThreatStatsRequest(sensors=["a"]))
    with_unknown = stats_pb2.GetThreatStatsRequest.FromString(
        plain.SerializeToString() + b"\xfa\x06\x03abc"  # field 111, 3 bytes
    )
    assert with_unknown.SerializeToString() != plain.SerializeToString()  # kept, re-sent
    assert key(with_unknown) == key(plain)
    name, raw = request_key(
        stats_pb2.GetThreatStatsRequest(top_n=10), Filters(Window(1_500_000, None), ())
    )
    decoded = stats_pb2.GetThreatStatsRequest.FromString(raw)
    assert name == "GetThreatStatsRequest"
    assert decoded.time_range.start_time.ToMicroseconds() == 1_500_000
    assert not decoded.time_range.HasField("end_time")


def test_concurrent_misses_compute_once() -> None:
    cache = ResultCache(max_entries=8)
    calls = 0
    started = threading.Event()

    def slow() -> str:
        nonlocal calls
        calls += 1
        started.set()
        time.sleep(0.3)
        return "answer"

    with ThreadPoolExecutor(8) as pool:
        futures = [
            pool.submit(cache.get_or_compute, "k", slow, Deadline.after(5)) for _ in range(8)
        ]
        answers = [f.result() for f in futures]
    assert answers == ["answer"] * 8
    assert calls == 1


def test_waiters_compute_themselves_when_the_leader_fails() -> None:
    cache = ResultCache(max_entries=8)
    gate = threading.Event()

    def failing() -> str:
        gate.wait(5)
        raise RuntimeError("endpoint lost")

    with ThreadPoolExecutor(2) as pool:
        leader = pool.submit(cache.get_or_compute, "k", failing, Deadline.after(5))
        time.sleep(0.1)
        waiter = pool.submit(
            cache.get_or_compute, "k", lambda: "from the waiter", Deadline.after(5)
        )
        time.sleep(0.1)
        gate.set()
        with pytest.raises(RuntimeError):
            leader.result()
        assert waiter.result() == "from the waiter"


def test_waiting_is_bounded_by_the_deadline() -> None:
    cache = ResultCache(max_entries=8)
    release = threading.Event()
    with ThreadPoolExecutor(2) as pool:
        pool.submit(
            cache.get_or_compute, "k", lambda: release.wait(5) and "late", Deadline.after(5)
        )
        time.sleep(0.1)
        with pytest.raises(DeadlineExceededError):
            cache.get_or_compute("k", lambda: "never", Deadline.after(0.1))
        release.set()


def test_values_keep_refuses_are_returned_not_stored() -> None:
    cache = ResultCache(max_entries=8)
    assert cache.get_or_compute("k", lambda: "odd", NO_DEADLINE, keep=lambda v: v != "odd") == "odd"
    assert len(cache) == 0
    assert (
        cache.get_or_compute("k", lambda: "even", NO_DEADLINE, keep=lambda v: v != "odd") == "even"
    )
    assert cache.get_or_compute("k", lambda: "later", NO_DEADLINE) == "even"


def test_watched_version_is_unknown_before_a_read_and_after_failing_reads() -> None:
    versions = iter([7, 8])
    failing = threading.Event()

    def read_version() -> int:
        if failing.is_set():
            raise ConnectionError("database gone")  # the fault a lost endpoint raises
        return next(versions)

    watch = DataVersionWatch(read_version, interval_seconds=0.05)
    assert watch.current() is None
    watch.start()
    try:
        assert watch.current() == 7
        deadline = time.monotonic() + 5
        while watch.current() != 8:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        failing.set()
        while watch.current() is not None:  # three intervals without a good read
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        watch.close()
