"""Static checks of docker-compose.yml, .env.example and the compose helper scripts."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from deploy_tools import (
    COMPOSE_FILE,
    DEPLOY_DIR,
    GRPC_PORT,
    REPO_ROOT,
    SERVICE_ENV_VARS,
    load_yaml,
    run,
    tool,
)

COMPOSE_DIR = DEPLOY_DIR / "compose"
INIT_SCRIPT = COMPOSE_DIR / "initdb" / "10-cowrie-stats-roles.sh"
OWNER_ROLE = "cowrie_stats"
READER_ROLE = "cowrie_stats_reader"
ENV_EXAMPLE = REPO_ROOT / ".env.example"
APP_SERVICES = ("migrate", "api", "ingest")
OBSERVABILITY = ("prometheus", "grafana")
METRICS_PORT = "9464"
INTERPOLATION = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::-([^}]*))?\}")
SECRET_WORDS = re.compile(r"PASSWORD|SECRET|TOKEN|PRIVATE|API_KEY", re.IGNORECASE)
CREDENTIALS_IN_URL = re.compile(r"://[^/@:\s]+:[^/@\s]+@")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        return dict(item.partition("=")[::2] for item in env)
    assert isinstance(env, dict)
    return {str(k): str(v) for k, v in env.items()}


def test_compose_file_matches_the_compose_spec_schema() -> None:
    checker = tool("check-jsonschema")
    result = run([checker, "--builtin-schema", "vendor.compose-spec", COMPOSE_FILE])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok -- validation done" in result.stdout


def with_defaults(value: str) -> str:
    """``value`` with every ``${NAME:-default}`` replaced by its default (no .env)."""
    return INTERPOLATION.sub(lambda match: match.group(2) or "", value)


def test_services(services: dict[str, dict[str, Any]]) -> None:
    assert set(services) == {
        "postgres",
        "postgres-replica",
        "migrate",
        "api",
        "ingest",
        *OBSERVABILITY,
    }
    assert "redis" not in services


def test_single_node_by_default_and_the_rest_under_profiles(
    services: dict[str, dict[str, Any]],
) -> None:
    profiles = {name: service.get("profiles") for name, service in services.items()}
    assert profiles == {
        "postgres": None,
        "migrate": None,
        "api": None,
        "ingest": None,
        "postgres-replica": ["replica"],
        "prometheus": ["observability"],
        "grafana": ["observability"],
    }
    # Without the replica profile the api reads the primary: no replica URL by default.
    api = environment(services["api"])
    assert with_defaults(api["COWRIE_STATS_REPLICA_URLS"]) == ""
    assert services["api"]["depends_on"]["postgres-replica"]["required"] is False


def test_ingest_watches_the_logs(services: dict[str, dict[str, Any]]) -> None:
    ingest = services["ingest"]
    command = [with_defaults(part) for part in ingest["command"]]
    assert command[:3] == ["ingest", "--watch", "60"]
    assert command[-1] == "/var/log/cowrie"
    assert ingest["restart"] == "unless-stopped"
    assert ingest["stop_signal"] == "SIGTERM"
    # The logs' group (docs/deploy.md): the uid 1001 process gets it as a supplementary group.
    assert [with_defaults(g) for g in ingest["group_add"]] == ["1001"]


def test_metrics_are_scraped_on_their_own_network(services: dict[str, dict[str, Any]]) -> None:
    on_metrics = {name for name, s in services.items() if "metrics" in s.get("networks", [])}
    assert on_metrics == {"api", "ingest", *OBSERVABILITY}
    for name in OBSERVABILITY:
        assert services[name]["networks"] == ["metrics"], f"{name} must not reach the databases"
    for name in ("api", "ingest"):
        assert environment(services[name])["COWRIE_STATS_METRICS_PORT"] == METRICS_PORT
    config = load_yaml(DEPLOY_DIR / "prometheus" / "prometheus.yml")
    targets = {
        job["job_name"]: [t for c in job["static_configs"] for t in c["targets"]]
        for job in config["scrape_configs"]
    }
    assert targets == {
        "cowrie-stats-api": [f"api:{METRICS_PORT}"],
        "cowrie-stats-ingest": [f"ingest:{METRICS_PORT}"],
    }
    grafana = services["grafana"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]
    assert "./deploy/grafana/dashboards:/etc/grafana/dashboards:ro" in grafana["volumes"]
    datasource = load_yaml(
        DEPLOY_DIR / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    provider = load_yaml(
        DEPLOY_DIR / "grafana" / "provisioning" / "dashboards" / "cowrie-stats.yaml"
    )
    assert provider["providers"][0]["options"]["path"] == "/etc/grafana/dashboards"


def test_startup_order(services: dict[str, dict[str, Any]]) -> None:
    def conditions(name: str) -> dict[str, str]:
        depends = services[name].get("depends_on", {})
        assert isinstance(depends, dict), f"{name}: use the long depends_on syntax"
        return {dep: spec["condition"] for dep, spec in depends.items()}

    assert conditions("postgres") == {}
    assert conditions("postgres-replica") == {"postgres": "service_healthy"}
    assert conditions("migrate") == {"postgres": "service_healthy"}
    api = conditions("api")
    assert api["postgres"] == "service_healthy"
    assert api["migrate"] == "service_completed_successfully"
    assert api.get("postgres-replica") == "service_healthy"
    assert conditions("ingest") == {
        "postgres": "service_healthy",
        "migrate": "service_completed_successfully",
    }
    assert conditions("prometheus") == {}
    assert conditions("grafana") == {"prometheus": "service_healthy"}


def test_healthchecks(services: dict[str, dict[str, Any]]) -> None:
    for name in ("postgres", "postgres-replica"):
        test = services[name]["healthcheck"]["test"]
        assert test[:2] == ["CMD", "pg_isready"], name
    api_test = services["api"]["healthcheck"]["test"]
    assert api_test[:3] == ["CMD", "cowrie-stats", "healthcheck"]
    for name in ("migrate", "ingest"):
        assert services[name]["healthcheck"] == {"disable": True}
    assert services["migrate"]["restart"] == "no", "migrate is a one-shot job"
    for name in OBSERVABILITY:
        assert services[name]["healthcheck"]["test"][:2] == ["CMD", "wget"], name


def test_commands(services: dict[str, dict[str, Any]]) -> None:
    assert services["api"]["command"] == ["serve"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["ingest"]["command"][0] == "ingest"
    for name in APP_SERVICES:
        build = services[name]["build"]
        assert build["dockerfile"] == "deploy/Dockerfile"
        assert build["context"] == "."


def parse_port(entry: Any) -> tuple[str, str, str]:
    """(host_ip, published, target) of a short or long syntax port entry."""
    if isinstance(entry, dict):
        return (
            str(entry.get("host_ip", "")),
            str(entry.get("published", "")),
            str(entry.get("target", "")),
        )
    text = str(entry).split("/")[0]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]:")
        published, _, target = rest.partition(":")
        return host, published, target
    parts = text.split(":")
    if len(parts) == 3:
        return parts[0], parts[1], parts[2]
    if len(parts) == 2:
        return "", parts[0], parts[1]
    return "", "", parts[0]


def test_only_grpc_and_grafana_published_and_on_localhost_by_default(
    services: dict[str, dict[str, Any]],
) -> None:
    published: dict[str, list[tuple[str, str, str]]] = {}
    for name, service in services.items():
        assert service.get("network_mode") != "host", name
        ports = [parse_port(with_defaults(p)) for p in service.get("ports", [])]
        if ports:
            published[name] = ports
    assert published == {
        "api": [("127.0.0.1", str(GRPC_PORT), str(GRPC_PORT))],
        "grafana": [("127.0.0.1", "3000", "3000")],
    }
    # The address and port come from .env.
    (api_port,) = services["api"]["ports"]
    assert api_port.startswith("${COWRIE_STATS_PUBLISH_ADDRESS:-127.0.0.1}:")
    assert "${COWRIE_STATS_PUBLISH_PORT:-50051}:" in api_port


def test_no_secret_in_the_compose_file(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    assert not CREDENTIALS_IN_URL.search(text), "a URL carries a password"
    for name, service in services.items():
        for key, value in environment(service).items():
            if SECRET_WORDS.search(key):
                assert key.endswith("_FILE"), f"{name}: {key} must be a *_FILE variable"
                assert value.startswith("/run/secrets/"), f"{name}: {key}={value}"
    secret_dir = (COMPOSE_DIR / "secrets").resolve()
    for name, secret in compose["secrets"].items():
        assert set(secret) == {"file"}, f"secret {name} must come from a file"
        path = (REPO_ROOT / secret["file"]).resolve()
        assert path.parent == secret_dir, f"secret {name} outside {secret_dir}"


def test_secret_files_are_gitignored() -> None:
    ignore = (COMPOSE_DIR / "secrets" / ".gitignore").read_text(encoding="utf-8").splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]
    assert rules[0] == "*"
    assert set(rules[1:]) <= {"!.gitignore", "!README.md"}


def test_app_containers_are_locked_down(services: dict[str, dict[str, Any]]) -> None:
    for name in (*APP_SERVICES, *OBSERVABILITY):
        service = services[name]
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name
    for name in APP_SERVICES:
        env = environment(services[name])
        assert env["COWRIE_STATS_DATABASE_PASSWORD_FILE"].startswith("/run/secrets/")
        assert env["COWRIE_STATS_DATABASE_URL"].startswith("postgresql+psycopg://")
    ingest_volumes = services["ingest"]["volumes"]
    assert len(ingest_volumes) == 1
    assert ingest_volumes[0].endswith(":/var/log/cowrie:ro")


def test_streaming_replica_bootstraps_with_pg_basebackup(
    services: dict[str, dict[str, Any]],
) -> None:
    replica = services["postgres-replica"]
    script = COMPOSE_DIR / "replica-entrypoint.sh"
    mount = f"./{script.relative_to(REPO_ROOT)}:/usr/local/bin/replica-entrypoint.sh:ro"
    assert mount in replica["volumes"]
    assert replica["entrypoint"] == ["/usr/local/bin/replica-entrypoint.sh"]
    text = script.read_text(encoding="utf-8")
    assert "pg_basebackup" in text
    assert "--write-recovery-conf" in text
    assert 'exec docker-entrypoint.sh "$@"' in text
    assert replica["image"] == services["postgres"]["image"]
    assert (
        "./deploy/compose/initdb:/docker-entrypoint-initdb.d:ro"
        in (services["postgres"]["volumes"])
    )


def url_user(url: str) -> str:
    """The user of a password-less ``scheme://user@host/db`` URL (fails on a password)."""
    userinfo, at, _ = url.partition("//")[2].partition("@")
    assert at, f"{url} names no user"
    assert ":" not in userinfo, f"{url} carries a password"
    return userinfo


def test_api_uses_the_read_only_database_role(services: dict[str, dict[str, Any]]) -> None:
    api = services["api"]
    env = environment(api)
    assert url_user(env["COWRIE_STATS_DATABASE_URL"]) == READER_ROLE
    assert "@postgres:5432/" in env["COWRIE_STATS_DATABASE_URL"]
    # With the replica profile, .env names the replica (as the reader, .env.example says how).
    said = re.search(r"postgresql\+psycopg://\S+", env_example_entries()["API_REPLICA_URLS"][2])
    assert said, ".env.example names the replica URL to set"
    replicas = said.group(0).split(",")
    assert [url_user(u) for u in replicas] == [READER_ROLE]
    assert "@postgres-replica:5432/" in replicas[0]
    # The password file is injected into the primary and the replica URLs alike.
    assert env["COWRIE_STATS_DATABASE_PASSWORD_FILE"] == "/run/secrets/db_reader_password"
    # Only the reader's secret is mounted: the api cannot use the owner's password.
    assert api["secrets"] == ["db_reader_password"]


def test_migrate_and_ingest_use_the_owner_role(services: dict[str, dict[str, Any]]) -> None:
    for name in ("migrate", "ingest"):
        env = environment(services[name])
        assert url_user(env["COWRIE_STATS_DATABASE_URL"]) == OWNER_ROLE, name
        assert "@postgres:5432/" in env["COWRIE_STATS_DATABASE_URL"], name
        assert "COWRIE_STATS_REPLICA_URLS" not in env, f"{name} writes: primary only"
        assert env["COWRIE_STATS_DATABASE_PASSWORD_FILE"] == "/run/secrets/db_password", name
        assert services[name]["secrets"] == ["db_password"], name


def test_postgres_gets_every_role_password(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """The init script creates each role with the password of its own secret file."""
    postgres = services["postgres"]
    env = environment(postgres)
    expected = {
        "POSTGRES_PASSWORD_FILE": "postgres_password",
        "COWRIE_STATS_DB_PASSWORD_FILE": "db_password",
        "COWRIE_STATS_DB_READER_PASSWORD_FILE": "db_reader_password",
        "POSTGRES_REPLICATION_PASSWORD_FILE": "replication_password",
    }
    for variable, secret in expected.items():
        assert env[variable] == f"/run/secrets/{secret}", variable
    assert sorted(postgres["secrets"]) == sorted(expected.values())
    assert set(compose["secrets"]) == {*expected.values(), "grafana_admin_password"}
    assert services["grafana"]["secrets"] == ["grafana_admin_password"]
    assert environment(services["grafana"])["GF_SECURITY_ADMIN_PASSWORD__FILE"] == (
        "/run/secrets/grafana_admin_password"
    )
    script = INIT_SCRIPT.read_text(encoding="utf-8")
    for variable in expected:
        if variable != "POSTGRES_PASSWORD_FILE":  # read by the postgres image itself
            assert f"${{{variable}:?" in script, variable


def init_sql_statements() -> list[str]:
    """The SQL statements of the init script's here-document, comments dropped, one line."""
    text = INIT_SCRIPT.read_text(encoding="utf-8")
    match = re.search(r"<<'EOSQL'\n(.*?)\nEOSQL\n", text, re.DOTALL)
    assert match, "the init script runs its SQL from a quoted EOSQL here-document"
    sql = "\n".join(line.split("--")[0] for line in match.group(1).splitlines())
    return [" ".join(part.split()) for part in sql.split(";") if part.strip()]


def test_init_script_grants_the_reader_only_select() -> None:
    statements = init_sql_statements()
    reader = [s for s in statements if READER_ROLE in s]
    assert reader == [
        f"CREATE ROLE {READER_ROLE} WITH LOGIN PASSWORD :'reader_password'",
        f"ALTER ROLE {READER_ROLE} SET default_transaction_read_only = on",
        f'GRANT CONNECT ON DATABASE :"dbname" TO {READER_ROLE}',
        f"GRANT USAGE ON SCHEMA public TO {READER_ROLE}",
        f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {READER_ROLE}",
        # Tables that later migrations create (as the owner) are readable too.
        f"ALTER DEFAULT PRIVILEGES FOR ROLE {OWNER_ROLE} IN SCHEMA public "
        f"GRANT SELECT ON TABLES TO {READER_ROLE}",
    ]
    # Nothing else is granted to anyone but the owner: no role membership, no write right.
    for statement in statements:
        if statement.startswith("GRANT") and not statement.endswith(f"TO {READER_ROLE}"):
            assert statement.endswith(f"TO {OWNER_ROLE}"), statement
    # The owner owns the database and the schema; PUBLIC keeps no right on either.
    assert f'ALTER DATABASE :"dbname" OWNER TO {OWNER_ROLE}' in statements
    assert f"ALTER SCHEMA public OWNER TO {OWNER_ROLE}" in statements
    assert 'REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC' in statements
    assert "REVOKE CREATE ON SCHEMA public FROM PUBLIC" in statements


def test_shell_scripts_pass_shellcheck() -> None:
    shellcheck = tool("shellcheck")
    scripts = sorted([*COMPOSE_DIR.rglob("*.sh"), REPO_ROOT / "scripts" / "compose-secrets.sh"])
    assert scripts
    result = run([shellcheck, "--severity=style", *scripts])
    assert result.returncode == 0, result.stdout + result.stderr


def env_example_entries() -> dict[str, tuple[str, bool, str]]:
    """NAME -> (value, active, comment above) for every ``NAME=`` line of .env.example."""
    entries: dict[str, tuple[str, bool, str]] = {}
    previous_comment = ""
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"(# )?([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            entries[match.group(2)] = (match.group(3), match.group(1) is None, previous_comment)
            previous_comment = ""
        elif line.startswith("# ") and not line.startswith("# ---"):
            previous_comment = line[2:].strip()
        else:
            previous_comment = ""
    return entries


def test_env_example_documents_every_setting() -> None:
    entries = env_example_entries()
    missing = [name for name in SERVICE_ENV_VARS if name not in entries]
    assert not missing, f".env.example lacks {missing}"
    for name, (_, _, comment) in entries.items():
        assert comment, f"{name} needs a one-line comment above it"


def test_env_example_covers_every_interpolated_variable() -> None:
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    interpolated = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    entries = env_example_entries()
    assert interpolated <= {name for name, (_, active, _) in entries.items() if active}


def test_env_example_holds_no_secret() -> None:
    for name, (value, active, _) in env_example_entries().items():
        if SECRET_WORDS.search(name) and not name.endswith("_FILE"):
            assert (active, value) == (False, ""), f"{name} must stay commented out and empty"


def test_env_file_is_optional_for_app_services(services: dict[str, dict[str, Any]]) -> None:
    for name in APP_SERVICES:
        assert services[name]["env_file"] == [{"path": ".env", "required": False}]


def test_compose_scripts_exist_and_are_executable() -> None:
    for script in (
        COMPOSE_DIR / "replica-entrypoint.sh",
        COMPOSE_DIR / "primary-entrypoint.sh",
        COMPOSE_DIR / "initdb" / "10-cowrie-stats-roles.sh",
        REPO_ROOT / "scripts" / "compose-secrets.sh",
    ):
        assert script.is_file()
        assert Path(script).stat().st_mode & 0o111, f"{script} must be executable"
