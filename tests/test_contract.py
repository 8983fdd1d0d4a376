"""The contract: generated code is fresh, and buf lint passes."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO
from test_server import _buf


def _differences(left: Path, right: Path) -> list[str]:
    compared = filecmp.dircmp(left, right, ignore=["__pycache__"])
    found = [*compared.left_only, *compared.right_only, *compared.diff_files]
    for name in compared.subdirs:
        found.extend(f"{name}/{d}" for d in _differences(left / name, right / name))
    return found


def test_generated_code_matches_a_fresh_regeneration(tmp_path: Path) -> None:
    out = tmp_path / "_gen"
    subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), str(out)],
        check=True,
        capture_output=True,
    )
    assert _differences(REPO / "cowrie_stats" / "_gen", out) == [], "run `make proto`"


def test_buf_lint() -> None:
    buf = _buf()
    if buf is None:
        if os.environ.get("COWRIE_STATS_REQUIRE_TOOLS") == "1":
            pytest.fail("buf is not installed (make tools)")
        pytest.skip("buf is not installed")
    result = subprocess.run([buf, "lint"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
