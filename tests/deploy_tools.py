"""Helpers for the static deployment tests (container, compose, Kubernetes, policies).

The validators (hadolint, check-jsonschema, kubernetes-validate, network-config-analyzer,
shellcheck) live in a separate virtual environment, ``.venv-tools`` at the repository root,
installed from ``deploy/tools-requirements.txt``. YAML is parsed by that environment's
Python too, so the application's environment needs no YAML library.

A missing tool skips the test, or fails it when ``COWRIE_STATS_REQUIRE_TOOLS=1``
(``make test`` sets it).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import pytest

from cowrie_stats.settings import SETTINGS_TABLE, Settings

REPO_ROOT = Path(__file__).resolve().parents[1]
TOOLS_BIN = REPO_ROOT / ".venv-tools" / "bin"
DEPLOY_DIR = REPO_ROOT / "deploy"
K8S_DIR = DEPLOY_DIR / "k8s"
COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
DOCKERFILE = DEPLOY_DIR / "Dockerfile"

#: Kubernetes version the manifests are validated against (a K3s release line).
KUBERNETES_VERSION = "1.33.0"

#: Every setting of the service, and the *_FILE twins of its secrets (the settings table).
SERVICE_ENV_VARS: tuple[str, ...] = tuple(row.variable for row in SETTINGS_TABLE) + tuple(
    row.variable + "_FILE" for row in SETTINGS_TABLE if row.spec.secret
)

GRPC_PORT = Settings.grpc_port
SHUTDOWN_GRACE_SECONDS = Settings.shutdown_grace_seconds


def tools_required() -> bool:
    return os.environ.get("COWRIE_STATS_REQUIRE_TOOLS", "") == "1"


def missing_tool(message: str) -> NoReturn:
    if tools_required():
        pytest.fail(f"{message} (COWRIE_STATS_REQUIRE_TOOLS=1)")
    pytest.skip(message)


def tool(name: str) -> Path:
    """Path of a validation tool: ``.venv-tools/bin/NAME``, else NAME on PATH."""
    candidate = TOOLS_BIN / name
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which(name)
    if found is not None:
        return Path(found)
    missing_tool(
        f"{name} not found in {TOOLS_BIN} or on PATH; install it with "
        "`.venv-tools/bin/pip install -r deploy/tools-requirements.txt`"
    )


def tools_python() -> Path:
    """The tools environment's interpreter (it has PyYAML and network-config-analyzer)."""
    candidate = TOOLS_BIN / "python"
    if candidate.is_file():
        return candidate
    missing_tool(f"{candidate} not found; create .venv-tools (deploy/tools-requirements.txt)")


def run(
    args: Sequence[str | Path], *, cwd: Path = REPO_ROOT, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run a command offline-friendly, capturing text output."""
    env = dict(os.environ)
    env.setdefault("NO_COLOR", "1")
    return subprocess.run(
        [str(a) for a in args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


_YAML_TO_JSON = """
import json, sys, yaml
out = {}
for name in sys.argv[1:]:
    with open(name, encoding="utf-8") as handle:
        out[name] = [doc for doc in yaml.safe_load_all(handle) if doc is not None]
json.dump(out, sys.stdout)
"""


@functools.cache
def _load_yaml_batch(paths: tuple[str, ...]) -> dict[str, list[Any]]:
    result = run([tools_python(), "-c", _YAML_TO_JSON, *paths])
    if result.returncode != 0:
        pytest.fail(f"cannot parse YAML {paths}:\n{result.stderr}")
    loaded: dict[str, list[Any]] = json.loads(result.stdout)
    return loaded


def load_yaml_all(*paths: Path) -> dict[Path, list[Any]]:
    """Parse YAML files (multi-document) with PyYAML safe_load in the tools environment."""
    key = tuple(sorted(str(p.resolve()) for p in paths))
    loaded = _load_yaml_batch(key)
    return {Path(name): docs for name, docs in loaded.items()}


def load_yaml(path: Path) -> Any:
    """Parse a single-document YAML file."""
    docs = load_yaml_all(path)[path.resolve()]
    assert len(docs) == 1, f"{path} should hold exactly one YAML document"
    return docs[0]


# --------------------------------------------------------------------------------------
# Dockerfile parsing
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    value: str
    stage: int
    line: int

    def exec_form(self) -> list[str]:
        """The JSON (exec form) argument list; fails when the shell form is used."""
        text = self.value
        if self.keyword == "HEALTHCHECK":
            _, _, text = text.partition("CMD")
        try:
            parsed = json.loads(text.strip())
        except json.JSONDecodeError:
            pytest.fail(f"line {self.line}: {self.keyword} is not in exec (JSON) form: {text}")
        assert isinstance(parsed, list)
        assert all(isinstance(a, str) for a in parsed)
        return [str(a) for a in parsed]


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Split a Dockerfile into instructions (comments dropped, continuations joined)."""
    instructions: list[Instruction] = []
    stage = -1
    buffer = ""
    start = 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        stripped = raw.strip()
        if not buffer and (not stripped or stripped.startswith("#")):
            continue
        if buffer and stripped.startswith("#"):
            continue
        if not buffer:
            start = number
        if stripped.endswith("\\"):
            buffer += stripped[:-1] + " "
            continue
        buffer += stripped
        keyword, _, value = buffer.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        instructions.append(Instruction(keyword, " ".join(value.split()), stage, start))
        buffer = ""
    return instructions


def dockerfile_global_args(instructions: list[Instruction]) -> dict[str, str]:
    """ARG defaults declared before the first FROM."""
    args: dict[str, str] = {}
    for ins in instructions:
        if ins.stage >= 0:
            break
        if ins.keyword == "ARG":
            name, _, default = ins.value.partition("=")
            args[name] = default
    return args
