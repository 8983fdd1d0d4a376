"""``make secrets`` and the primary's entrypoint, run for real (they need root, as in CI).

The secrets files are mode 0600 and belong to the uid of the container that reads
them; the primary's entrypoint copies, as root, the ones its init script reads as
postgres. A stand-in for the postgres image's own entrypoint shows what postgres
can read afterwards.
"""

from __future__ import annotations

import os
import pwd
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from deploy_tools import REPO_ROOT

SECRETS = {
    "postgres_password": 999,
    "replication_password": 999,
    "db_password": 1001,
    "db_reader_password": 1001,
    "grafana_admin_password": 472,
}
ENTRYPOINT = REPO_ROOT / "deploy" / "compose" / "primary-entrypoint.sh"

AS_POSTGRES = ("setpriv", "--reuid=postgres", "--regid=postgres", "--clear-groups")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown and setpriv need root")


def _make_secrets(directory: Path, *prefix: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SECRETS_DIR": str(directory)}
    return subprocess.run(
        [*prefix, "make", "--no-print-directory", "-C", str(REPO_ROOT), "secrets"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_root
def test_make_secrets_creates_private_files_for_their_readers_and_keeps_existing_ones(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "db_password").write_text("chosen-by-the-operator\n")
    (directory / "db_password").chmod(0o644)
    made = _make_secrets(directory)
    assert made.returncode == 0, made.stderr
    assert f"kept     {directory}/db_password (exists)" in made.stdout
    for name, uid in SECRETS.items():
        info = (directory / name).stat()
        if name == "db_password":  # as the operator left it
            assert (directory / name).read_text() == "chosen-by-the-operator\n"
            assert stat.S_IMODE(info.st_mode) == 0o644
            continue
        assert stat.S_IMODE(info.st_mode) == 0o600, name
        assert (info.st_uid, info.st_gid) == (uid, uid), name
        password = (directory / name).read_text()
        assert password.isalnum() and len(password) >= 40, name
    before = {p.name: p.read_text() for p in directory.iterdir()}
    again = _make_secrets(directory)
    assert again.returncode == 0 and "created" not in again.stdout
    assert {p.name: p.read_text() for p in directory.iterdir()} == before


@needs_root
def test_without_root_or_docker_nothing_half_made_is_left() -> None:
    with tempfile.TemporaryDirectory(prefix="secrets-") as name:  # reachable by nobody
        directory = Path(name)
        directory.chmod(0o777)
        nobody = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
        failed = _make_secrets(directory, *nobody)
        assert failed.returncode != 0
        assert "cannot give" in failed.stderr and "run it as root" in failed.stderr
        assert list(directory.iterdir()) == []


@pytest.fixture
def reachable_tmp() -> Iterator[Path]:
    """A temporary directory other users can reach (pytest's own is private to root)."""
    with tempfile.TemporaryDirectory(prefix="entrypoint-") as name:
        Path(name).chmod(0o755)
        yield Path(name)


@needs_root
def test_the_primary_entrypoint_lets_postgres_read_the_role_passwords(
    reachable_tmp: Path,
) -> None:
    tmp_path = reachable_tmp
    try:
        postgres = pwd.getpwnam("postgres")
    except KeyError:
        pytest.skip("no postgres user on this machine")
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    files = {}
    for variable, name in (
        ("COWRIE_STATS_DB_PASSWORD_FILE", "db_password"),
        ("COWRIE_STATS_DB_READER_PASSWORD_FILE", "db_reader_password"),
        ("POSTGRES_REPLICATION_PASSWORD_FILE", "replication_password"),
    ):
        path = secrets / name
        path.write_text(f"password-of-{name}")
        path.chmod(0o600)
        os.chown(path, 1001, 1001)
        files[variable] = str(path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "docker-entrypoint.sh"  # what the image's entrypoint could read
    stand_in.write_text(
        '#!/usr/bin/env bash\nset -eu\necho "args: $*"\n'
        "exec setpriv --reuid=postgres --regid=postgres --clear-groups cat"
        ' "$COWRIE_STATS_DB_PASSWORD_FILE" "$COWRIE_STATS_DB_READER_PASSWORD_FILE"'
        ' "$POSTGRES_REPLICATION_PASSWORD_FILE"\n'
    )
    stand_in.chmod(0o755)
    copies = tmp_path / "copies"
    env = {**os.environ, **files, "COPIES_DIR": str(copies)}
    env["PATH"] = f"{bin_dir}:{env['PATH']}"
    ran = subprocess.run(
        [str(ENTRYPOINT), "postgres", "-c", "wal_level=replica"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "args: postgres -c wal_level=replica",
        "password-of-db_passwordpassword-of-db_reader_passwordpassword-of-replication_password",
    ]
    for copy in copies.iterdir():
        info = copy.stat()
        assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (postgres.pw_uid, 0o400)
    # The originals stay private to their owner.
    denied = subprocess.run(
        [*AS_POSTGRES, "cat", files["COWRIE_STATS_DB_PASSWORD_FILE"]],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
