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
COMPONENTS = {"api", "postgres", "postgres-replica", "migrate"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}


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
    template = workload["spec"]["template"]
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
        if workload["kind"] != "Job":
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
    assert container["ports"] == [{"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        grpc = container[probe]["grpc"]
        assert grpc["port"] == GRPC_PORT, probe
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


def test_configuration_and_secret_references(objects: list[dict[str, Any]]) -> None:
    config = named(objects, "ConfigMap", "cowrie-stats-config")
    assert set(config["data"]) <= set(SERVICE_ENV_VARS)
    assert not any("PASSWORD" in k and not k.endswith("_FILE") for k in config["data"])
    assert "@" in config["data"]["COWRIE_STATS_DATABASE_URL"]
    assert ":" not in config["data"]["COWRIE_STATS_DATABASE_URL"].split("//")[1].split("@")[0]
    password_file = config["data"]["COWRIE_STATS_DATABASE_PASSWORD_FILE"]
    example = load_yaml_all(K8S_DIR / "base" / "secrets.yaml.example")
    example_secrets = {
        s["metadata"]["name"]: set(s["stringData"])
        for docs in example.values()
        for s in docs
        if s["kind"] == "Secret"
    }
    for docs in example.values():
        for secret in docs:
            assert all(
                v.startswith(("CHANGE-ME", "example-")) for v in secret["stringData"].values()
            )
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
    api = named(objects, "Deployment", "cowrie-stats-api")
    mounts = {m["mountPath"] for c in containers(api) for m in c["volumeMounts"]}
    assert str(Path(password_file).parent) in mounts


def test_migration_job(objects: list[dict[str, Any]]) -> None:
    job = named(objects, "Job", "cowrie-stats-migrate")
    api = named(objects, "Deployment", "cowrie-stats-api")
    (container,) = pod_template(job)["spec"]["containers"]
    (api_container,) = pod_template(api)["spec"]["containers"]
    assert container["args"] == ["migrate"]
    assert container["image"] == api_container["image"]
    assert container["envFrom"] == api_container["envFrom"]
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
