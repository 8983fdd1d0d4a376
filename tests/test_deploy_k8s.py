"""Static checks of the kustomize layout in deploy/k8s (no cluster, no kustomize binary).

Every manifest listed by a kustomization.yaml is schema-validated with kubernetes-validate
(offline, strict) against a pinned Kubernetes version; every YAML file of the tree must be
listed; the hardening, probes and label conventions are asserted on the parsed objects.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from deploy_tools import (
    DEPLOY_DIR,
    GRPC_PORT,
    K8S_DIR,
    KUBERNETES_VERSION,
    SERVICE_ENV_VARS,
    SHUTDOWN_GRACE_SECONDS,
    load_yaml,
    load_yaml_all,
    run,
    tool,
)

NAMESPACE = "cowrie-stats"
NAME_LABEL = "app.kubernetes.io/name"
COMPONENT_LABEL = "app.kubernetes.io/component"
COMPONENTS = {"api", "postgres", "postgres-replica", "migrate", "ingest"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "CronJob"}
OWNER_ROLE = "cowrie_stats"
READER_ROLE = "cowrie_stats_reader"
DB_SECRET = "cowrie-stats-db"
METRICS_PORT = 9464
PROBE_PORT = 50052


def kustomization_dirs() -> list[Path]:
    return sorted(p.parent for p in K8S_DIR.rglob("kustomization.yaml"))


def listed_manifests() -> list[Path]:
    """Files (not directories) listed as resources by the kustomizations, in order."""
    files: list[Path] = []
    pending = [K8S_DIR]
    while pending:
        directory = pending.pop(0)
        kustomization = load_yaml(directory / "kustomization.yaml")
        for resource in kustomization["resources"]:
            path = (directory / resource).resolve()
            if path.is_dir():
                pending.append(path)
            else:
                files.append(path)
    return files


@pytest.fixture(scope="module")
def manifests() -> list[Path]:
    return listed_manifests()


@pytest.fixture(scope="module")
def objects(manifests: list[Path]) -> list[dict[str, Any]]:
    loaded = load_yaml_all(*manifests)
    return [doc for path in manifests for doc in loaded[path]]


def by_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in by_kind(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}"
    return found[0]


def pod_template(workload: dict[str, Any]) -> dict[str, Any]:
    spec = workload["spec"]
    if workload["kind"] == "CronJob":
        spec = spec["jobTemplate"]["spec"]
    template = spec["template"]
    assert isinstance(template, dict)
    return template


def containers(workload: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = pod_template(workload)["spec"]
    yield from spec.get("initContainers", [])
    yield from spec["containers"]


def test_every_yaml_file_is_listed_in_a_kustomization(manifests: list[Path]) -> None:
    listed = set(manifests)
    for directory in kustomization_dirs():
        for path in directory.iterdir():
            if path.name == "kustomization.yaml" or path.is_dir():
                continue
            if path.suffix in {".yaml", ".yml", ".json"}:
                assert path.resolve() in listed, f"{path} is not in {directory}/kustomization.yaml"
            else:
                assert path.name.endswith(".example"), f"unexpected file {path}"
    for path in manifests:
        assert path.is_file(), f"kustomization lists missing {path}"
    top = load_yaml(K8S_DIR / "kustomization.yaml")
    assert top["resources"] == ["base", "network-policies"]
    assert top["namespace"] == NAMESPACE


def test_manifests_pass_kubernetes_validate(manifests: list[Path], tmp_path: Path) -> None:
    validator = tool("kubernetes-validate")
    # The Secret example is not applied, but it must be a valid object too.
    examples = []
    for example in sorted(K8S_DIR.rglob("*.yaml.example")):
        copy = tmp_path / example.name.removesuffix(".example")
        shutil.copyfile(example, copy)
        examples.append(copy)
    result = run(
        [validator, "--strict", "-k", KUBERNETES_VERSION, *manifests, *examples],
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    failures = [line for line in result.stdout.splitlines() if not line.startswith("INFO")]
    assert not failures, "\n".join(failures)
    passed = [line for line in result.stdout.splitlines() if " passed for resource " in line]
    documents = load_yaml_all(*manifests)
    assert len(passed) == sum(len(docs) for docs in documents.values()) + sum(
        len(docs) for docs in load_yaml_all(*examples).values()
    )


def test_kinds_present(objects: list[dict[str, Any]]) -> None:
    kinds = {o["kind"] for o in objects}
    assert {
        "Namespace",
        "ServiceAccount",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Job",
        "CronJob",
        "StatefulSet",
        "NetworkPolicy",
    } <= kinds
    assert "Secret" not in kinds, "no Secret (and so no secret value) is committed"


def test_namespace_and_labels_are_consistent(objects: list[dict[str, Any]]) -> None:
    namespace = named(objects, "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for obj in objects:
        meta = obj["metadata"]
        where = f"{obj['kind']}/{meta['name']}"
        if obj["kind"] != "Namespace":
            assert meta["namespace"] == NAMESPACE, where
        assert meta["labels"][NAME_LABEL] == "cowrie-stats", where
        component = meta["labels"].get(COMPONENT_LABEL)
        assert component is None or component in COMPONENTS, where
    for workload in (o for o in objects if o["kind"] in WORKLOAD_KINDS):
        labels = pod_template(workload)["metadata"]["labels"]
        assert labels[NAME_LABEL] == "cowrie-stats"
        assert labels[COMPONENT_LABEL] in COMPONENTS
        assert labels[COMPONENT_LABEL] == workload["metadata"]["labels"][COMPONENT_LABEL]
        selector = workload["spec"].get("selector")
        if workload["kind"] in {"Deployment", "StatefulSet"}:
            assert selector == {"matchLabels": labels}, workload["metadata"]["name"]


def test_services_select_existing_pods(objects: list[dict[str, Any]]) -> None:
    templates = [pod_template(w) for w in objects if w["kind"] in WORKLOAD_KINDS]
    for service in by_kind(objects, "Service"):
        selector = service["spec"]["selector"]
        matches = [
            t
            for t in templates
            if all(t["metadata"]["labels"].get(k) == v for k, v in selector.items())
        ]
        assert matches, f"Service {service['metadata']['name']} selects no pod"
        port_names = {
            p["name"] for t in matches for c in t["spec"]["containers"] for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in port_names


def test_api_service_is_grpc(objects: list[dict[str, Any]]) -> None:
    service = named(objects, "Service", "cowrie-stats")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["ports"] == [
        {
            "name": "grpc",
            "port": GRPC_PORT,
            "targetPort": "grpc",
            "protocol": "TCP",
            "appProtocol": "grpc",
        }
    ]


def test_service_accounts_mount_no_token(objects: list[dict[str, Any]]) -> None:
    accounts = {sa["metadata"]["name"]: sa for sa in by_kind(objects, "ServiceAccount")}
    for account in accounts.values():
        assert account["automountServiceAccountToken"] is False
    for workload in (o for o in objects if o["kind"] in WORKLOAD_KINDS):
        spec = pod_template(workload)["spec"]
        assert spec["serviceAccountName"] in accounts
        assert spec["automountServiceAccountToken"] is False


def test_every_pod_is_hardened(objects: list[dict[str, Any]]) -> None:
    """The restricted Pod Security Standard, enforced on the namespace, for every pod."""
    for workload in (o for o in objects if o["kind"] in WORKLOAD_KINDS):
        where = workload["metadata"]["name"]
        pod_security = pod_template(workload)["spec"]["securityContext"]
        assert pod_security["runAsNonRoot"] is True, where
        assert pod_security["runAsUser"] > 0, where
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for container in containers(workload):
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["runAsNonRoot"] is True, where
            assert security["capabilities"] == {"drop": ["ALL"]}, where
            assert security.get("privileged", False) is False, where
            resources = container["resources"]
            assert resources["requests"].keys() >= {"cpu", "memory"}, where
            assert resources["limits"]["memory"], where


def test_api_deployment(objects: list[dict[str, Any]]) -> None:
    deployment = named(objects, "Deployment", "cowrie-stats-api")
    assert deployment["spec"]["replicas"] == 2
    spec = pod_template(deployment)["spec"]
    assert spec["securityContext"]["runAsUser"] == 1001
    (container,) = spec["containers"]
    assert container["args"] == ["serve"]
    assert container["ports"] == [
        {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        {"name": "probe", "containerPort": PROBE_PORT, "protocol": "TCP"},
    ]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    assert env["COWRIE_STATS_METRICS_PORT"] == str(METRICS_PORT)
    annotations = pod_template(deployment)["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = container[probe]["grpc"]
        assert grpc["port"] == PROBE_PORT, probe  # health without a key
        assert grpc.get("service", "") in {"", "cowrie.stats.v1.CowrieStatsService"}
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert spec["terminationGracePeriodSeconds"] > SHUTDOWN_GRACE_SECONDS + pre_stop
    keys = {c["topologyKey"] for c in spec["topologySpreadConstraints"]}
    assert "kubernetes.io/hostname" in keys
    for constraint in spec["topologySpreadConstraints"]:
        assert constraint["labelSelector"] == deployment["spec"]["selector"]
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0


def test_pod_disruption_budget(objects: list[dict[str, Any]]) -> None:
    deployment = named(objects, "Deployment", "cowrie-stats-api")
    (pdb,) = by_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    assert 0 < pdb["spec"]["minAvailable"] < deployment["spec"]["replicas"]


def secret_examples() -> dict[str, set[str]]:
    """Secret name -> keys, from deploy/k8s/base/secrets.yaml.example."""
    example = load_yaml_all(K8S_DIR / "base" / "secrets.yaml.example")
    for docs in example.values():
        for secret in docs:
            assert all(
                v.startswith(("CHANGE-ME", "example-")) for v in secret["stringData"].values()
            )
    return {
        s["metadata"]["name"]: set(s["stringData"])
        for docs in example.values()
        for s in docs
        if s["kind"] == "Secret"
    }


def url_user(url: str) -> str:
    """The user of a password-less ``scheme://user@host/db`` URL (fails on a password)."""
    userinfo, at, _ = url.partition("//")[2].partition("@")
    assert at, f"{url} names no user"
    assert ":" not in userinfo, f"{url} carries a password"
    return userinfo


def pod_environment(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The container's environment: its ConfigMaps (envFrom, in order), then ``env``."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        config = named(objects, "ConfigMap", source["configMapRef"]["name"])
        env.update(config["data"])
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def mounted_secret_files(workload: dict[str, Any], container: dict[str, Any]) -> dict[str, str]:
    """Mounted file path -> ``secret-name/key`` of every Secret item the container sees."""
    volumes = {v["name"]: v for v in pod_template(workload)["spec"].get("volumes", [])}
    files: dict[str, str] = {}
    for mount in container.get("volumeMounts", []):
        secret = volumes.get(mount["name"], {}).get("secret")
        if secret is None:
            continue
        assert mount.get("readOnly") is True, mount
        for item in secret["items"]:
            files[f"{mount['mountPath']}/{item['path']}"] = f"{secret['secretName']}/{item['key']}"
    return files


def database_access(objects: list[dict[str, Any]], workload: dict[str, Any]) -> dict[str, Any]:
    """Users of the database URLs and the Secret key of the password file, of a workload."""
    (container,) = pod_template(workload)["spec"]["containers"]
    env = pod_environment(objects, container)
    replicas = [u for u in env.get("COWRIE_STATS_REPLICA_URLS", "").split(",") if u.strip()]
    password_file = env["COWRIE_STATS_DATABASE_PASSWORD_FILE"]
    files = mounted_secret_files(workload, container)
    assert password_file in files, f"{password_file} is not mounted"
    return {
        "primary": url_user(env["COWRIE_STATS_DATABASE_URL"]),
        "replicas": {url_user(u) for u in replicas},
        "password": files[password_file],
        "db_secret_keys": {f for f in files.values() if f.startswith(f"{DB_SECRET}/")},
    }


def test_configuration_and_secret_references(objects: list[dict[str, Any]]) -> None:
    example_secrets = secret_examples()
    settings = {
        source["configMapRef"]["name"]
        for workload in objects
        if workload["kind"] in WORKLOAD_KINDS
        for container in containers(workload)
        for source in container.get("envFrom", [])
    }
    assert settings == {"cowrie-stats-config", "cowrie-stats-db-reader", "cowrie-stats-db-owner"}
    for name in settings:
        data = named(objects, "ConfigMap", name)["data"]
        assert set(data) <= set(SERVICE_ENV_VARS), name
        assert not any("PASSWORD" in k and not k.endswith("_FILE") for k in data), name
        for key in ("COWRIE_STATS_DATABASE_URL", "COWRIE_STATS_REPLICA_URLS"):
            for url in filter(None, data.get(key, "").split(",")):
                url_user(url)
    for workload in (o for o in objects if o["kind"] in WORKLOAD_KINDS):
        volumes = pod_template(workload)["spec"].get("volumes", [])
        for volume in volumes:
            if "secret" in volume:
                secret = volume["secret"]
                assert secret["secretName"] in example_secrets
                assert {i["key"] for i in secret["items"]} <= example_secrets[secret["secretName"]]
        for container in containers(workload):
            for env in container.get("env", []):
                assert "value" in env or "valueFrom" in env
                if "SECRET" in env["name"] or "PASSWORD" in env["name"]:
                    assert env["name"].endswith("_FILE"), env["name"]


def test_secret_files_are_readable_by_the_pod_user(objects: list[dict[str, Any]]) -> None:
    """Secret files are root-owned: a mode without "other" read needs fsGroup."""
    for workload in (o for o in objects if o["kind"] in WORKLOAD_KINDS):
        spec = pod_template(workload)["spec"]
        for volume in spec.get("volumes", []):
            secret = volume.get("secret")
            if secret is None or secret.get("defaultMode", 0o644) & 0o004:
                continue
            assert secret["defaultMode"] & 0o040, volume["name"]
            assert spec["securityContext"].get("fsGroup") == spec["securityContext"].get(
                "runAsGroup"
            ), f"{workload['metadata']['name']}: set fsGroup to read {volume['name']}"


def test_api_uses_the_read_only_database_role(objects: list[dict[str, Any]]) -> None:
    access = database_access(objects, named(objects, "Deployment", "cowrie-stats-api"))
    assert access["primary"] == READER_ROLE
    assert access["replicas"] == {READER_ROLE}, "the api reads from the replica as reader"
    assert access["password"] == f"{DB_SECRET}/reader-password"
    # The api holds no other database credential: not the owner's password.
    assert access["db_secret_keys"] == {f"{DB_SECRET}/reader-password"}


def test_migrate_and_ingest_use_the_owner_role(objects: list[dict[str, Any]]) -> None:
    for workload in (
        named(objects, "Job", "cowrie-stats-migrate"),
        named(objects, "CronJob", "cowrie-stats-ingest"),
    ):
        access = database_access(objects, workload)
        where = workload["metadata"]["name"]
        assert access["primary"] == OWNER_ROLE, where
        assert access["replicas"] == set(), f"{where} writes: primary only"
        assert access["password"] == f"{DB_SECRET}/password", where
        assert access["db_secret_keys"] == {f"{DB_SECRET}/password"}, where


def test_postgres_primary_gets_every_role_password(objects: list[dict[str, Any]]) -> None:
    """The init script (postgres-scripts.yaml) reads one file per role it creates."""
    primary = named(objects, "StatefulSet", "postgres")
    (container,) = pod_template(primary)["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    files = mounted_secret_files(primary, container)
    assert files[env["COWRIE_STATS_DB_PASSWORD_FILE"]] == f"{DB_SECRET}/password"
    assert files[env["COWRIE_STATS_DB_READER_PASSWORD_FILE"]] == f"{DB_SECRET}/reader-password"
    assert files[env["POSTGRES_REPLICATION_PASSWORD_FILE"]] == f"{DB_SECRET}/replication-password"
    assert files[env["POSTGRES_PASSWORD_FILE"]] == f"{DB_SECRET}/postgres-password"


def test_ingest_cronjob(objects: list[dict[str, Any]]) -> None:
    cronjob = named(objects, "CronJob", "cowrie-stats-ingest")
    api = named(objects, "Deployment", "cowrie-stats-api")
    spec = cronjob["spec"]
    assert spec["schedule"] == "*/5 * * * *"
    assert spec["concurrencyPolicy"] == "Forbid", "never two runs over the same files"
    assert spec["jobTemplate"]["spec"]["activeDeadlineSeconds"] > 0
    template = pod_template(cronjob)
    assert template["metadata"]["labels"] == {
        NAME_LABEL: "cowrie-stats",
        COMPONENT_LABEL: "ingest",
    }
    pod = template["spec"]
    assert pod["restartPolicy"] in {"OnFailure", "Never"}
    # The same hardening as the api pods (test_every_pod_is_hardened checks the rest).
    (api_container,) = pod_template(api)["spec"]["containers"]
    (container,) = pod["containers"]
    assert container["securityContext"] == api_container["securityContext"]
    api_pod_security = pod_template(api)["spec"]["securityContext"]
    for key in ("runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "seccompProfile"):
        assert pod["securityContext"][key] == api_pod_security[key], key
    assert container["image"] == api_container["image"]
    assert container["args"] == ["ingest", "--json", "/var/log/cowrie"]
    # The logs: a PersistentVolumeClaim (no hostPath under Pod Security "restricted"),
    # mounted read-only where the command reads them.
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert not any("hostPath" in v for v in volumes.values())
    (logs,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/var/log/cowrie"]
    assert logs["readOnly"] is True
    claim = volumes[logs["name"]]["persistentVolumeClaim"]
    assert claim == {"claimName": "cowrie-logs", "readOnly": True}
    example = load_yaml_all(K8S_DIR / "base" / "cowrie-logs-pvc.yaml.example")
    claims = [d for docs in example.values() for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert [(c["metadata"]["name"], c["metadata"]["namespace"]) for c in claims] == [
        ("cowrie-logs", NAMESPACE)
    ]


def test_migration_job(objects: list[dict[str, Any]]) -> None:
    job = named(objects, "Job", "cowrie-stats-migrate")
    api = named(objects, "Deployment", "cowrie-stats-api")
    (container,) = pod_template(job)["spec"]["containers"]
    (api_container,) = pod_template(api)["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert container["image"] == api_container["image"]
    # The common settings of the api, the owner role's database settings instead of the
    # reader's.
    assert container["envFrom"][0] == api_container["envFrom"][0]
    assert container["envFrom"][1:] == [{"configMapRef": {"name": "cowrie-stats-db-owner"}}]
    assert api_container["envFrom"][1:] == [{"configMapRef": {"name": "cowrie-stats-db-reader"}}]
    assert pod_template(job)["spec"]["restartPolicy"] in {"OnFailure", "Never"}


def test_postgres_primary_and_streaming_replica(objects: list[dict[str, Any]]) -> None:
    primary = named(objects, "StatefulSet", "postgres")
    replica = named(objects, "StatefulSet", "postgres-replica")
    assert pod_template(primary)["metadata"]["labels"][COMPONENT_LABEL] == "postgres"
    assert pod_template(replica)["metadata"]["labels"][COMPONENT_LABEL] == "postgres-replica"
    (replica_container,) = replica["spec"]["template"]["spec"]["containers"]
    assert replica_container["command"] == ["/opt/cowrie-stats/replica-entrypoint.sh"]
    env = {e["name"]: e["value"] for e in replica_container["env"]}
    assert env["PRIMARY_HOST"] == "postgres"
    named(objects, "Service", "postgres")
    named(objects, "Service", "postgres-replica")


def test_postgres_scripts_match_the_compose_ones(objects: list[dict[str, Any]]) -> None:
    compose = DEPLOY_DIR / "compose"
    init = named(objects, "ConfigMap", "cowrie-stats-postgres-init")
    bootstrap = named(objects, "ConfigMap", "cowrie-stats-postgres-replica-bootstrap")
    roles = (compose / "initdb" / "10-cowrie-stats-roles.sh").read_text(encoding="utf-8")
    replica = (compose / "replica-entrypoint.sh").read_text(encoding="utf-8")
    assert init["data"] == {"10-cowrie-stats-roles.sh": roles}
    assert bootstrap["data"] == {"replica-entrypoint.sh": replica}
    assert "pg_basebackup" in replica


def test_images_are_set_by_the_kustomization(objects: list[dict[str, Any]]) -> None:
    top = load_yaml(K8S_DIR / "kustomization.yaml")
    (image,) = top["images"]
    for workload in (o for o in objects if o["kind"] in WORKLOAD_KINDS):
        for container in containers(workload):
            if container["image"].startswith("postgres"):
                assert container["image"] == "postgres:16"
            else:
                assert container["image"] == image["name"]
                assert image["newTag"]
                assert image["newTag"] != "latest"
