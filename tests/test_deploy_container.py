"""Static checks of deploy/Dockerfile and .dockerignore (no Docker engine needed)."""

from __future__ import annotations

import json
import re

import pytest
from deploy_tools import (
    DOCKERFILE,
    GRPC_PORT,
    REPO_ROOT,
    Instruction,
    dockerfile_global_args,
    parse_dockerfile,
    run,
    tool,
)

UBI9_PYTHON = "registry.access.redhat.com/ubi9/python-312"


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE)


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    last = max(ins.stage for ins in instructions)
    return [ins for ins in instructions if ins.stage == last]


def only(instructions: list[Instruction], keyword: str) -> Instruction:
    found = [ins for ins in instructions if ins.keyword == keyword]
    assert len(found) == 1, f"expected exactly one {keyword}, found {len(found)}"
    return found[0]


def test_hadolint_reports_nothing() -> None:
    hadolint = tool("hadolint")
    result = run([hadolint, "--no-color", "--format", "json", DOCKERFILE])
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout) == []


def test_no_hadolint_rules_ignored() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "hadolint ignore" not in text
    for config in (".hadolint.yaml", ".hadolint.yml", "deploy/.hadolint.yaml"):
        assert not (REPO_ROOT / config).exists(), f"{config} would change the hadolint rules"


def test_multi_stage_build_on_ubi9(instructions: list[Instruction]) -> None:
    args = dockerfile_global_args(instructions)
    froms = [ins for ins in instructions if ins.keyword == "FROM"]
    assert len(froms) >= 2, "the image must be a multi-stage build"
    stage_names: list[str] = []
    for ins in froms:
        image, _, alias = ins.value.partition(" AS ")
        resolved = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)
        assert resolved.startswith(f"{UBI9_PYTHON}:"), resolved
        tag = resolved.split(":", 1)[1]
        assert tag not in {"", "latest"}, "pin the base image by tag (or digest)"
        stage_names.append(alias.strip())
    assert stage_names[0] == "build"
    # The runtime stage copies only the virtual environment from the build stage.
    copies = [ins for ins in final_stage(instructions) if ins.keyword == "COPY"]
    assert [c.value for c in copies] == ["--from=build /opt/venv /opt/venv"]


def test_build_stage_builds_a_wheel_into_a_venv(instructions: list[Instruction]) -> None:
    build = [ins for ins in instructions if ins.stage == 0]
    runs = " ".join(ins.value for ins in build if ins.keyword == "RUN")
    assert "-m venv /opt/venv" in runs
    assert "pip wheel" in runs
    assert "/opt/venv/bin/pip install" in runs
    sources = [ins.value for ins in build if ins.keyword == "COPY"]
    assert any("pyproject.toml" in s for s in sources)
    assert any("cowrie_stats" in s for s in sources)


def test_runs_as_numeric_non_root_user(instructions: list[Instruction]) -> None:
    users = [ins.value for ins in final_stage(instructions) if ins.keyword == "USER"]
    assert users, "the runtime stage must set USER"
    assert users[-1] == "1001"
    # Every stage ends as the unprivileged user.
    for stage in {ins.stage for ins in instructions if ins.stage >= 0}:
        stage_users = [i.value for i in instructions if i.stage == stage and i.keyword == "USER"]
        assert stage_users[-1:] == ["1001"], f"stage {stage} ends as root"


def test_port_and_stop_signal(instructions: list[Instruction]) -> None:
    runtime = final_stage(instructions)
    assert only(runtime, "EXPOSE").value == str(GRPC_PORT)
    assert only(runtime, "STOPSIGNAL").value == "SIGTERM"


def test_healthcheck_uses_grpc_health_subcommand(instructions: list[Instruction]) -> None:
    health = only(final_stage(instructions), "HEALTHCHECK")
    command = health.exec_form()
    assert command[:2] == ["cowrie-stats", "healthcheck"]
    assert "--interval=" in health.value
    assert "--timeout=" in health.value


def test_entrypoint_serves_in_exec_form(instructions: list[Instruction]) -> None:
    runtime = final_stage(instructions)
    entrypoint = only(runtime, "ENTRYPOINT").exec_form()
    cmd = only(runtime, "CMD").exec_form()
    assert entrypoint + cmd == ["cowrie-stats", "serve"]
    # Migrations are a separate command (`cowrie-stats migrate`), never run implicitly.
    assert "migrate" not in " ".join(ins.value for ins in runtime)


def test_read_only_root_filesystem_friendly(instructions: list[Instruction]) -> None:
    env = " ".join(ins.value for ins in final_stage(instructions) if ins.keyword == "ENV")
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    assert "PATH=/opt/venv/bin:" in env
    assert not [ins for ins in final_stage(instructions) if ins.keyword == "VOLUME"]


def test_oci_labels(instructions: list[Instruction]) -> None:
    labels = " ".join(ins.value for ins in final_stage(instructions) if ins.keyword == "LABEL")
    found = set(re.findall(r"(org\.opencontainers\.image\.[a-z.]+)=", labels))
    required = {
        "org.opencontainers.image.title",
        "org.opencontainers.image.description",
        "org.opencontainers.image.version",
        "org.opencontainers.image.revision",
        "org.opencontainers.image.created",
        "org.opencontainers.image.licenses",
        "org.opencontainers.image.base.name",
    }
    assert required <= found, sorted(required - found)


def dockerignore_patterns() -> list[str]:
    lines = (REPO_ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_is_an_allow_list_matching_the_copies(
    instructions: list[Instruction],
) -> None:
    patterns = dockerignore_patterns()
    assert patterns[0] == "*", ".dockerignore must exclude everything by default"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    sources: set[str] = set()
    for ins in instructions:
        if ins.keyword != "COPY" or "--from=" in ins.value:
            continue
        words = [w for w in ins.value.split() if not w.startswith("--")]
        sources.update(w.rstrip("/") for w in words[:-1])
    assert sources == allowed
    for source in sources:
        assert (REPO_ROOT / source).exists(), f"the build context lacks {source}"
    for secret_like in ("**/.env", "**/__pycache__"):
        assert secret_like in patterns
