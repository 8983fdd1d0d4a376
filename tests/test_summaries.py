"""Window summaries: kept exactly in any ingest order; answers are a function of the data.

The same events ingested as shuffled chunks in any order and batch size must
leave summaries equal to their recomputation from the raw rows
(tests/summaries_definition.py) and give bit-identical answers to every RPC.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import summaries_definition
from conftest import Database, StartServer, make_database
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy import text

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.sample import write_sample
from cowrie_stats.timeline import DAY, HOUR, MINUTE, Span, cut

US = 1_000_000


def _chunks(lines: list[bytes], rng: random.Random) -> list[list[bytes]]:
    """The lines shuffled into a random number of random-sized pieces."""
    shuffled = list(lines)
    rng.shuffle(shuffled)
    cuts = sorted(rng.sample(range(1, len(shuffled)), rng.randint(2, 6)))
    return [shuffled[a:b] for a, b in zip([0, *cuts], [*cuts, len(shuffled)], strict=True)]


def _answers(stub: object, low: int, high: int) -> list[bytes]:
    """Serialized answers of every RPC over a few windows (bytes compare every bit)."""
    answers = []
    for start, end in ((None, None), (low + 37 * US, high - 11 * US), (low, (low + high) // 2)):
        time_range = stats_pb2.TimeRange()
        if start is not None:
            time_range.start_time.CopyFrom(Timestamp(seconds=start // US, nanos=start % US * 1000))
        if end is not None:
            time_range.end_time.CopyFrom(Timestamp(seconds=end // US, nanos=end % US * 1000))
        for call, request in (
            (
                "GetSessionStats",
                stats_pb2.GetSessionStatsRequest(
                    time_range=time_range, bucket=stats_pb2.BUCKET_HOUR
                ),
            ),
            ("GetThreatStats", stats_pb2.GetThreatStatsRequest(time_range=time_range, top_n=50)),
            ("GetSensorStats", stats_pb2.GetSensorStatsRequest(time_range=time_range)),
        ):
            reply = getattr(stub, call)(request)
            if call == "GetSensorStats":
                for sensor in reply.sensors:
                    sensor.stale = False  # depends on the clock, not the data
            answers.append(reply.SerializeToString(deterministic=True))
    return answers


@pytest.mark.parametrize("seed", [1, 2])
def test_shuffled_chunks_and_batch_sizes_give_the_same_summaries_and_answers(
    db: Database,
    request: pytest.FixtureRequest,
    tmp_path: Path,
    start_server: StartServer,
    seed: int,
) -> None:
    rng = random.Random(seed)
    sample = tmp_path / "cowrie.json"
    write_sample(sample, seed=seed)
    lines = sample.read_bytes().splitlines(keepends=True)
    for index, chunk in enumerate(_chunks(lines, rng)):
        part = tmp_path / f"part-{index}.json"
        part.write_bytes(b"".join(chunk))
        db.ingest([part], batch_lines=rng.choice([7, 50, 5000]))
    stored = summaries_definition.stored(db.engine)
    assert stored == summaries_definition.defined(db.engine)

    (tmp_path / "clean").mkdir()
    clean = make_database(db.kind, tmp_path / "clean", request)
    clean.ingest([sample])
    assert summaries_definition.stored(clean.engine) == stored
    with db.engine.connect() as conn:
        low, high = conn.execute(text("SELECT min(ts_us), max(ts_us) FROM events")).one()
    shuffled_answers = _answers(start_server(db.settings()).stub, low, high)
    clean_answers = _answers(start_server(clean.settings()).stub, low, high)
    assert shuffled_answers == clean_answers
    clean.engine.dispose()


def test_a_window_is_cut_into_the_fewest_whole_pieces() -> None:
    start = 10 * DAY.width_us + 5 * HOUR.width_us + 7 * MINUTE.width_us + 3
    end = 13 * DAY.width_us + 2 * HOUR.width_us + 4 * MINUTE.width_us + 9
    pieces = cut(Span(start, end))
    assert pieces.edges == (
        Span(start, start - 3 + MINUTE.width_us),
        Span(end - 9, end),
    )
    covered = sorted((r.level.name, r.first, r.end) for r in pieces.pieces)
    assert covered == sorted(
        [
            ("minute", start // MINUTE.width_us + 1, (start // HOUR.width_us + 1) * 60),
            ("minute", (end // HOUR.width_us) * 60, end // MINUTE.width_us),
            ("hour", start // HOUR.width_us + 1, 11 * 24),
            ("hour", 13 * 24, end // HOUR.width_us),
            ("day", 11, 13),
        ]
    )
    # Every microsecond of the window is in exactly one piece or edge.
    spans = [r.span for r in pieces.pieces] + list(pieces.edges)
    spans.sort(key=lambda s: s.start_us or 0)
    assert spans[0].start_us == start and spans[-1].end_us == end
    assert all(a.end_us == b.start_us for a, b in itertools.pairwise(spans))


def test_unbounded_and_tiny_windows() -> None:
    assert cut(Span(None, None)).pieces[0].level is DAY
    assert cut(Span(None, None)).edges == ()
    inside_a_minute = Span(MINUTE.width_us + 1, MINUTE.width_us + 2)
    assert cut(inside_a_minute).pieces == () and cut(inside_a_minute).edges == (inside_a_minute,)
    open_end = cut(Span(HOUR.width_us + 1, None))
    assert open_end.edges == (Span(HOUR.width_us + 1, HOUR.width_us + MINUTE.width_us),)
    assert [r.end for r in open_end.pieces] == [120, 24, None]
