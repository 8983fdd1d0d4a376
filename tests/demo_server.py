"""A real server over the demo log (SQLite), for the client and `query` tests."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from certs import Pki

from cowrie_stats.db.engines import create_db_engine
from cowrie_stats.db.schema import upgrade
from cowrie_stats.ingest.reader import Ingester
from cowrie_stats.sample import write_sample
from cowrie_stats.server import StatsServer
from cowrie_stats.settings import Settings


@dataclass(frozen=True)
class Demo:
    server: StatsServer
    database_url: str

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.server.port}"


def migrated_sqlite(directory: Path, logs: Sequence[Path]) -> str:
    """The URL of a migrated SQLite database in ``directory`` holding ``logs``."""
    url = f"sqlite:///{directory / 'stats.db'}"
    engine = create_db_engine(url, Settings(database_url=url), writer=True)
    try:
        upgrade(engine)
        Ingester(engine).ingest([str(path) for path in logs])
    finally:
        engine.dispose()
    return url


def write_events(path: Path, events: Sequence[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(e) + "\n" for e in events), encoding="utf-8")
    return path


def tls_settings(pki: Pki, *, mutual: bool) -> dict[str, Any]:
    """Server settings for TLS with the test PKI; ``mutual``: clients need a certificate."""
    settings = {"tls_cert_file": str(pki.server.cert), "tls_key_file": str(pki.server.key)}
    return {**settings, "tls_client_ca_file": str(pki.ca.cert)} if mutual else settings


@contextmanager
def demo_server(
    directory: Path, *, logs: Sequence[Path] | None = None, **overrides: Any
) -> Iterator[Demo]:
    """A started server on loopback over ``logs`` (default: the demo log)."""
    if logs is None:
        logs = [directory / "sample" / "cowrie.json"]
        write_sample(logs[0])
    url = migrated_sqlite(directory, logs)
    settings = Settings(
        database_url=url,
        grpc_host="127.0.0.1",
        grpc_port=0,
        probe_port=0,
        shutdown_grace_seconds=0,
    )
    server = StatsServer(replace(settings, **overrides))
    server.start()
    try:
        yield Demo(server, url)
    finally:
        server.stop(grace=0)
