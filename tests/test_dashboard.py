"""The Grafana dashboard and the Prometheus alerts ask only for series the service exports.

The exported series are not a list kept here: they are scraped from a real
server (after calls of every kind, with a read replica, the activity series
on) and from a real ``ingest --watch``, so a metric renamed in the code fails
this test until the dashboard follows. Every query is parsed as PromQL
(promql-parser); each metric it names must be exported, and each label it
names must be a label of the series it selects or aggregates. The gRPC
families are checked by name only: their labels are the go-grpc-prometheus
ones (grpc_type, grpc_service, grpc_method, grpc_code), which the server's own
metric tests pin.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import promql_parser
import pytest
from conftest import Database, StartServer
from deploy_tools import DEPLOY_DIR, load_yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.metrics_core import Metric
from prometheus_scrape import cowrie_stats, free_port, scrape, wait_for_metrics

from cowrie_stats._gen.cowrie.stats.v1 import stats_pb2
from cowrie_stats.sample import write_sample

DASHBOARD = DEPLOY_DIR / "grafana" / "dashboards" / "cowrie-stats.json"
RULES = DEPLOY_DIR / "prometheus" / "rules" / "cowrie-stats.yml"
# Grafana's variables, as Grafana would send them.
VARIABLES = {
    r"\$__rate_interval|\$__interval|\$__range": "5m",
    r"\$\{?sensor(:\w+)?\}?": ".*",
}
LABEL_VALUES = re.compile(r"label_values\((?P<metric>\w+),\s*(?P<label>\w+)\)")
SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
}
BY_NAME_ONLY = "grpc_server_"
WRAPPERS = (promql_parser.ParenExpr, promql_parser.UnaryExpr, promql_parser.SubqueryExpr)

Exported = dict[str, set[str]]  # series name -> its label names


def exported_series(families: dict[str, Metric]) -> Exported:
    """Every series name a scrape offers (family names with their suffixes) and its labels."""
    series: Exported = {}
    for family in families.values():
        names = [family.name, *(family.name + s for s in SUFFIXES.get(family.type, ()))]
        for name in names:
            series.setdefault(name, set())
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


@dataclass
class Selected:
    """What a query selects and names: (metric, matcher labels) and aggregation labels."""

    selectors: list[tuple[str, set[str]]] = field(default_factory=list)
    grouping: list[tuple[set[str], list[str]]] = field(default_factory=list)  # labels, metrics


def _children(node: Any) -> Iterator[Any]:
    if isinstance(node, promql_parser.MatrixSelector):
        yield node.vector_selector
    elif isinstance(node, promql_parser.Call):
        yield from node.args
    elif isinstance(node, promql_parser.BinaryExpr):
        yield from (node.lhs, node.rhs)
    elif isinstance(node, promql_parser.AggregateExpr):
        yield from (n for n in (node.param, node.expr) if n is not None)
    elif isinstance(
        node, promql_parser.ParenExpr | promql_parser.UnaryExpr | promql_parser.SubqueryExpr
    ):
        yield node.expr


def _name(selector: promql_parser.VectorSelector) -> str:
    if selector.name is not None:
        return selector.name
    return next((m.value for m in selector.matchers.matchers if m.name == "__name__"), "")


def _metrics(node: Any) -> list[str]:
    if isinstance(node, promql_parser.VectorSelector):
        return [_name(node)]
    return [name for child in _children(node) for name in _metrics(child)]


def selected(query: str) -> Selected:
    """Parse a dashboard or alert query and collect its metrics and labels."""
    for pattern, value in VARIABLES.items():
        query = re.sub(pattern, value, query)
    found = Selected()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            labels = {m.name for m in node.matchers.matchers if m.name != "__name__"}
            found.selectors.append((_name(node), labels))
        if isinstance(node, promql_parser.AggregateExpr) and node.modifier is not None:
            found.grouping.append((set(node.modifier.labels), _metrics(node.expr)))
        matching = getattr(getattr(node, "modifier", None), "matching", None)
        if isinstance(node, promql_parser.BinaryExpr) and matching is not None:
            found.grouping.append((set(matching.labels), _metrics(node)))
        for child in _children(node):
            visit(child)

    visit(promql_parser.parse(query))
    return found


def problems(query: str, exported: Exported) -> list[str]:
    """What in ``query`` the service does not export: unknown metrics and labels."""
    found = selected(query)
    wrong = [f"no metric {name}" for name, _ in found.selectors if name not in exported]
    for name, labels in found.selectors:
        if name in exported and not name.startswith(BY_NAME_ONLY):
            wrong += [f"{name} has no label {label}" for label in labels - exported[name]]
    for labels, metrics in found.grouping:
        if any(m.startswith(BY_NAME_ONLY) for m in metrics):
            continue
        known = set().union(*(exported.get(m, set()) for m in metrics))
        wrong += [f"no label {label} on {metrics}" for label in labels - known]
    return wrong


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, query) of every panel target and variable of the dashboard."""
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    queries = []
    panels = [*board["panels"], *(p for row in board["panels"] for p in row.get("panels", []))]
    for panel in panels:
        for target in panel.get("targets", []):
            queries.append((f"panel {panel['title']!r} {target['refId']}", target["expr"]))
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            match = LABEL_VALUES.fullmatch(variable["query"]["query"])
            assert match, variable
            queries.append(
                (f"variable {variable['name']}", f"{match['metric']}{{{match['label']}!=''}}")
            )
    return queries


def alert_queries() -> list[tuple[str, str]]:
    rules = load_yaml(RULES)
    return [(f"alert {r['alert']}", r["expr"]) for g in rules["groups"] for r in g["rules"]]


def _call_everything(address: str, stub: Any) -> None:
    """Calls that make every labelled series of the server appear."""
    stub.GetSessionStats(stats_pb2.GetSessionStatsRequest())
    stub.GetThreatStats(stats_pb2.GetThreatStatsRequest())
    stub.GetSensorStats(stats_pb2.GetSensorStatsRequest())
    with pytest.raises(grpc.RpcError):
        stub.GetSensorStats(stats_pb2.GetSensorStatsRequest(sensors=["no-such-sensor"]))
    with grpc.insecure_channel(address) as channel:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())


@pytest.fixture
def exported(pg_db: Database, tmp_path: Path, start_server: StartServer) -> Exported:
    """The series of a real server with a replica, and of a real watching ingest."""
    pg_db.ingest_sample(tmp_path)
    port = free_port()
    running = start_server(pg_db.settings(metrics_port=port, metrics_host="127.0.0.1"))
    _call_everything(running.address, running.stub)
    series = exported_series(scrape(port))
    logs = tmp_path / "more" / "cowrie.json"
    write_sample(logs, seed=5)
    ingest_port = free_port()
    with cowrie_stats(
        "ingest", "--watch", "60", "--json", str(logs),
        COWRIE_STATS_DATABASE_URL=pg_db.url, COWRIE_STATS_METRICS_PORT=str(ingest_port),
        COWRIE_STATS_METRICS_HOST="127.0.0.1",
    ) as ingest:  # fmt: skip
        assert ingest.stdout is not None
        ingest.stdout.readline()
        for name, labels in exported_series(wait_for_metrics(ingest_port)).items():
            series.setdefault(name, set()).update(labels)
    return series


def test_every_query_names_exported_series(exported: Exported) -> None:
    queries = dashboard_queries() + alert_queries()
    assert len(queries) > 30
    wrong = {where: found for where, query in queries if (found := problems(query, exported))}
    assert wrong == {}
    # The dashboard covers every part: service, database, ingest and fleet activity.
    named = {name for _, query in queries for name, _ in selected(query).selectors}
    for family in (
        "grpc_server_handled_total",
        "grpc_server_handling_seconds_bucket",
        "grpc_server_started_total",
        "cowrie_stats_db_pool_checked_out",
        "cowrie_stats_replica_lag_seconds",
        "cowrie_stats_ingest_events_stored_total",
        "cowrie_stats_sensor_sessions",
        "cowrie_stats_sensor_last_event_timestamp_seconds",
    ):
        assert family in named, family
    # A mistake is found: the checks are not vacuous.
    assert problems('sum by (sensr) (cowrie_stats_sensor_sessions{sensor="x"})', exported)
    assert problems("rate(cowrie_stats_sensor_session_total[5m])", exported)
    assert problems('cowrie_stats_db_pool_size{replica="x"}', exported)


def test_the_dashboard_is_well_formed() -> None:
    board = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert board["uid"] == "cowrie-stats" and board["editable"] is False
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["description"], panel["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["query"] == "prometheus"
    for group in load_yaml(RULES)["groups"]:
        for rule in group["rules"]:
            assert rule["labels"]["severity"] in {"warning", "info"}
            assert rule["annotations"]["summary"]
