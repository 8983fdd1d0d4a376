"""The documentation an operator acts on: links resolve, commands exist, snippets run.

* Every relative Markdown link in README.md and docs/**/*.md points at an existing file,
  and every ``#anchor`` at an existing heading (GitHub's slug rules).
* Every ``cowrie-stats SUBCOMMAND ...`` in a fenced shell block is a real subcommand whose
  options ``cowrie_stats.cli.build_parser()`` accepts.
* The snippets that can run here are run for real: the API key pipeline, the ``.env``
  set-up and its mode check, and the Python client example of docs/api.md against a
  real server.
* No file of the repository, by name or text, carries a development-history label (a
  numbered work session or issue): history belongs to git, the repository to the product.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Database, StartServer

from cowrie_stats.cli import build_parser
from cowrie_stats.client import ClientSettings
from cowrie_stats.sample import write_sample
from cowrie_stats.settings import HOSTILE, SETTINGS_TABLE, SettingRow

REPO = Path(__file__).resolve().parent.parent
DOCS = (REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")))
BIN = Path(sys.executable).parent
SHELL_LANGUAGES = {"sh", "bash", "shell", "console"}

FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<lang>[^\n`]*)$", re.M)
LINK = re.compile(r"!?\[[^\]\n]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")
INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
HEADING = re.compile(r"^#{1,6}[ \t]+(?P<title>.+?)[ \t]*#*[ \t]*$")
# `cowrie-stats` as a command (also `.venv/bin/cowrie-stats` and the image
# `cowrie-stats:TAG`), not as a namespace, label, path or DNS name.
COMMAND = re.compile(
    r"(?<![\w.:@=-])(?<!-n )(?<!--namespace )(?<!namespace )"
    r"cowrie-stats(?::[\w.-]+)?(?![\w.:/@-])[ \t]+(?P<rest>[^\n]*)"
)
SHELL_OPERATORS = set("();<>|&")


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    language: str
    text: str


def doc_id(path: Path) -> str:
    return str(path.relative_to(REPO))


def fenced_blocks(path: Path) -> Iterator[Block]:
    lines = path.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.fullmatch(lines[index])
        if opening is None:
            index += 1
            continue
        fence, indent = opening["fence"], len(opening["indent"])
        body: list[str] = []
        start = index + 1
        index += 1
        while index < len(lines):
            closing = FENCE.fullmatch(lines[index])
            if closing and closing["fence"].startswith(fence) and not closing["lang"].strip():
                break
            body.append(lines[index][indent:] if lines[index][:indent].isspace() else lines[index])
            index += 1
        index += 1
        language = opening["lang"].strip().split(" ")[0].lower()
        yield Block(path, start, language, "\n".join(body) + "\n")


def prose_lines(path: Path, keep_inline_code: bool = False) -> Iterator[tuple[int, str]]:
    """Lines outside fenced blocks (inline code removed unless kept), with their numbers."""
    inside: str | None = None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = FENCE.fullmatch(line)
        if fence:
            if inside is None:
                inside = fence["fence"]
            elif fence["fence"].startswith(inside) and not fence["lang"].strip():
                inside = None
            continue
        if inside is None:
            yield number, line if keep_inline_code else INLINE_CODE.sub("", line)


def github_slug(title: str) -> str:
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link's text only
    text = text.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    found: set[str] = set()
    seen: dict[str, int] = {}
    for _number, line in prose_lines(path, keep_inline_code=True):
        heading = HEADING.fullmatch(line)
        if heading is None:
            continue
        slug = github_slug(heading["title"])
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> Iterator[tuple[int, str]]:
    for number, line in prose_lines(path):
        for match in LINK.finditer(line):
            target = match["target"].strip("<>")
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
                continue
            yield number, target


def test_docs_exist() -> None:
    names = {doc_id(path) for path in DOCS}
    for required in (
        "docs/api.md",
        "docs/architecture.md",
        "docs/operations.md",
        "docs/security/README.md",
        "docs/security/secrets-management.md",
        "docs/security/1password-integration.md",
        "docs/security/kubernetes-secrets.md",
        "docs/security/network-policies.md",
    ):
        assert required in names


@pytest.mark.parametrize("path", DOCS, ids=doc_id)
def test_relative_links_resolve(path: Path) -> None:
    broken: list[str] = []
    for number, target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        destination = (path.parent / file_part).resolve() if file_part else path
        where = f"{doc_id(path)}:{number}: {target}"
        if not destination.exists():
            broken.append(f"{where} (no such file)")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{where} (no heading #{anchor} in {doc_id(destination)})")
    assert not broken, "\n".join(broken)


def commands() -> Iterator[tuple[str, list[str]]]:
    """(where, argv after `cowrie-stats`) of every command in a fenced shell block."""
    for path in DOCS:
        for block in fenced_blocks(path):
            if block.language not in SHELL_LANGUAGES:
                continue
            text = re.sub(r"\\\n[ \t]*", " ", block.text)  # join continued lines
            for match in COMMAND.finditer(text):
                line = block.line + text[: match.start()].count("\n")  # about: lines were joined
                lexer = shlex.shlex(match["rest"], posix=True, punctuation_chars=True)
                lexer.whitespace_split = True
                argv: list[str] = []
                try:
                    for token in lexer:
                        if set(token) <= SHELL_OPERATORS:
                            break
                        argv.append(token)
                except ValueError:  # unbalanced quotes: keep the words read so far
                    pass
                if argv and re.fullmatch(r"[a-z][a-z-]*", argv[0]):
                    yield f"{doc_id(path)}:{line}", argv


def test_docs_show_cowrie_stats_commands() -> None:
    used = {argv[0] for _where, argv in commands()}
    assert {"serve", "migrate", "ingest", "healthcheck", "hash-key", "sample"} <= used


def test_commands_in_docs_are_real_subcommands_with_real_options() -> None:
    parser = build_parser()
    subparsers = next(
        action for action in parser._actions if action.dest == "command"
    )  # argparse keeps no public accessor for these
    known = set(subparsers.choices or ())
    problems: list[str] = []
    for where, argv in commands():
        if argv[0] not in known:
            problems.append(f"{where}: `cowrie-stats {argv[0]}` is not a subcommand ({known})")
            continue
        if {"-h", "--help"} & set(argv):
            continue
        errors = io.StringIO()
        try:
            with contextlib.redirect_stderr(errors):
                build_parser().parse_args(argv)
        except SystemExit:
            problems.append(f"{where}: `cowrie-stats {shlex.join(argv)}`: {errors.getvalue()}")
    assert not problems, "\n".join(problems)


# -- snippets run for real ---------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without COWRIE_STATS_* settings, the venv's bin first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("COWRIE_STATS_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def shell_block(path: Path, containing: str) -> str:
    blocks = [
        b.text
        for b in fenced_blocks(path)
        if b.language in SHELL_LANGUAGES and containing in b.text
    ]
    assert len(blocks) == 1, f"expected one shell block with {containing!r} in {doc_id(path)}"
    return blocks[0]


def run_bash(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=cwd,
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hash_key_snippet_writes_a_keys_file_line(tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    script = shell_block(REPO / "docs/security/secrets-management.md", "hash-key --name")
    result = run_bash(script, tmp_path)
    assert result.returncode == 0, result.stderr
    keys = tmp_path / "api-keys.txt"
    assert re.fullmatch(r"dashboards:[0-9a-f]{64}\n", keys.read_text(encoding="utf-8"))
    assert keys.stat().st_mode & 0o077 == 0


def test_hash_key_pipeline_hashes_the_key_with_sha256(tmp_path: Path) -> None:
    key = "correct-horse-battery-staple-1234"
    result = run_bash('echo -n "$KEY" | cowrie-stats hash-key --name alerting', tmp_path, KEY=key)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"alerting:{hashlib.sha256(key.encode()).hexdigest()}\n"
    # The key itself never appears in the output.
    assert key not in result.stdout


def test_env_snippet_sets_up_a_private_env_file(tmp_path: Path) -> None:
    shutil.copy(REPO / ".env.example", tmp_path / ".env.example")
    script = shell_block(REPO / "docs/security/secrets-management.md", "cp .env.example .env")
    result = run_bash(script, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / ".env").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "var" / "cowrie-stats.db").is_file()


def run_cli(cwd: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "cowrie-stats"), *argv],
        cwd=cwd,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_env_file_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    database = tmp_path / "from-env.db"
    env_file = tmp_path / ".env"
    env_file.write_text(f"COWRIE_STATS_DATABASE_URL=sqlite:///{database}\n", encoding="utf-8")
    env_file.chmod(0o644)
    refused = run_cli(tmp_path, "migrate")
    assert refused.returncode == 2
    assert "chmod 600 .env" in refused.stderr
    assert "mode 644" in refused.stderr
    assert not database.exists()
    assert not (tmp_path / "var").exists()  # nothing ran, not even with the default URL

    env_file.chmod(0o600)
    accepted = run_cli(tmp_path, "migrate")
    assert accepted.returncode == 0, accepted.stderr
    assert database.is_file()  # the setting came from .env


def test_python_client_example_runs_against_a_server(
    sqlite_db: Database, start_server: StartServer, tmp_path: Path
) -> None:
    write_sample(tmp_path / "sample" / "cowrie.json")
    sqlite_db.ingest([tmp_path / "sample"])
    running = start_server(sqlite_db.settings())
    examples = [b.text for b in fenced_blocks(REPO / "docs" / "api.md") if b.language == "python"]
    assert len(examples) == 2, "docs/api.md has the client example and the raw-stub one"
    printed: list[str] = []
    for number, example in enumerate(examples):
        assert '"localhost:50051"' in example
        code = example.replace('"localhost:50051"', repr(running.address))
        output = io.StringIO()
        with contextlib.redirect_stdout(output):
            exec(compile(code, f"docs/api.md (Python {number})", "exec"), {"__name__": "docs"})
        printed += output.getvalue().splitlines()
    assert printed[0].startswith("sessions ")
    assert len(printed) == 5, printed
    assert printed[-1] == "NOT_FOUND SENSOR_NOT_FOUND {'sensors': 'no-such-sensor'}"


# -- the repository speaks of the product, not of its development history ------------

# The word "session" or "issue" followed by a work item's number. The product's own
# sessions are never numbered like that in prose; a number with a unit after it (a session
# of so many seconds) is a measurement, and "--sessions 100000" is plural.
UNITS = r"(?:(?:s|ms|µs|min|h|hours?|days?|events?)\b|%|\u00d7)"
HISTORY_LABEL = re.compile(
    rf"\b(?:session|issue)[ \t]+#?\d+\b(?![ \t]*{UNITS})|\bissue[ \t]*#\d+", re.IGNORECASE
)
# In a path: a file or folder named after a numbered session or issue.
HISTORY_NAME = re.compile(r"(?:session|issue)[-_ ]?\d+", re.IGNORECASE)
SKIPPED_DIRS = {"__pycache__", "node_modules", "var", "build", "dist", "results"}


def repository_files() -> list[Path]:
    """Every file git would commit (tracked or new, not ignored); a walk without git."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        names = [name for name in listed.stdout.decode().split("\0") if name]
        return [REPO / name for name in names if (REPO / name).is_file()]
    return [
        path
        for path in REPO.rglob("*")
        if path.is_file()
        and not any(
            part.startswith(".") or part in SKIPPED_DIRS or part.endswith(".egg-info")
            for part in path.relative_to(REPO).parts[:-1]
        )
    ]


def history_labels(path: Path) -> list[str]:
    """``relative path: what`` for each history label in the path or its text."""
    where = doc_id(path)
    found = [f"{where}: name" for _ in HISTORY_NAME.finditer(where)]
    data = path.read_bytes()
    if b"\0" in data:  # binary
        return found
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), start=1):
        found += [f"{where}:{number}: {m.group(0)!r}" for m in HISTORY_LABEL.finditer(line)]
    return found


def labelled(word: str, rest: str) -> str:
    """Text built at run time: this file's own text stays free of what it looks for."""
    return word + rest


def test_history_patterns_match_labels_and_not_the_product() -> None:
    for label in (
        labelled("session", " 5: 1M sessions"),
        labelled("Session", " 3 saw no effect"),
        labelled("Issue", " 9 asks for speed claims"),
        labelled("TARGETS", " (issue") + " 9)",
        labelled("see issue", " #12"),
        labelled("issue", "#4"),
    ):
        assert HISTORY_LABEL.search(label), label
    for product in (
        "--sessions 1000000",
        "sessions 1 to 9",
        labelled("a session", " 3 s long"),
        labelled("each session", " 10 events"),
        "GetSessionStats",
        "session_id 42",
        "the session's 2nd login",
        labelled("one session", " 40 % of the time"),
    ):
        assert not HISTORY_LABEL.search(product), product
    assert HISTORY_NAME.search(labelled("docs/benchmarks/query-1m-sessions-session", "6.json"))
    assert not HISTORY_NAME.search("docs/benchmarks/2026-11-26-query-1m-sessions-hash-keys.json")


def test_no_development_history_labels_in_the_repository() -> None:
    files = repository_files()
    assert REPO / "docs" / "performance.md" in files
    found = [label for path in files for label in history_labels(path)]
    assert not found, "history labels (history belongs to git):\n" + "\n".join(found)


# -- the settings documentation lists the settings table -----------------------------------
#
# The table in cowrie_stats/settings_table.py is checked against the documents rather than
# written into them: .env.example is the compose stack's configuration (some values there
# are the containers', on purpose), and each document explains a setting for its reader.
# What must not drift -- which variables exist, their defaults, which are secrets -- is
# compared here, so a setting added, renamed or re-defaulted fails until every list follows.

SETTING_CELL = re.compile(r"`(?P<name>COWRIE_STATS_[A-Z0-9_]+)`(?P<twin>\s*/\s*`_FILE`)?")
NO_DEFAULT = "—"


@dataclass(frozen=True)
class DocumentedSetting:
    where: str
    variable: str
    with_file_twin: bool
    default: str


def documented_settings(path: Path) -> dict[str, list[DocumentedSetting]]:
    """Section heading -> rows of the tables whose first column is ``variable``."""
    found: dict[str, list[DocumentedSetting]] = {}
    section, header = "", None
    for number, line in prose_lines(path, keep_inline_code=True):
        heading = HEADING.fullmatch(line)
        if heading is not None:
            section = heading["title"]
        if not line.startswith("|"):
            header = None
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if header is None:
            header = cells
        elif header[:2] == ["variable", "default"] and not set(cells[0]) <= set("-: "):
            name = SETTING_CELL.fullmatch(cells[0])
            assert name is not None, f"{doc_id(path)}:{number}: one variable per row: {cells[0]}"
            row = DocumentedSetting(
                f"{doc_id(path)}:{number}", name["name"], bool(name["twin"]), cells[1]
            )
            found.setdefault(section, []).append(row)
    return found


def default_cell(row: SettingRow) -> str:
    return f"`{row.shown_default}`" if row.shown_default else NO_DEFAULT


def check_documented(documented: list[DocumentedSetting], expected: list[SettingRow]) -> None:
    where = documented[0].where if documented else "no table"
    listed = [doc.variable for doc in documented]
    assert len(listed) == len(set(listed)), f"{where}: a variable is listed twice"
    wrong = sorted(set(listed) ^ {row.variable for row in expected})
    assert not wrong, f"{where}: the table does not list exactly its settings: {wrong}"
    rows = {row.variable: row for row in expected}
    for doc in documented:
        row = rows[doc.variable]
        assert doc.default == default_cell(row), f"{doc.where}: default is {default_cell(row)}"
        assert doc.with_file_twin == row.spec.secret, (
            f"{doc.where}: a secret is shown with / `_FILE`, nothing else is"
        )


def test_readme_configuration_lists_every_setting() -> None:
    tables = documented_settings(REPO / "README.md")
    assert list(tables) == ["Configuration"]
    check_documented(tables["Configuration"], list(SETTINGS_TABLE))


def test_operations_setting_tables_list_their_topic() -> None:
    topics = {
        "Ingest": [row for row in SETTINGS_TABLE if "ingest" in row.spec.commands],
        "Hostile clients": [row for row in SETTINGS_TABLE if row.spec.group == HOSTILE],
    }
    tables = documented_settings(REPO / "docs" / "operations.md")
    assert sorted(tables) == sorted(topics), "a new settings table needs its topic here"
    for section, expected in topics.items():
        check_documented(tables[section], expected)


def env_example() -> dict[str, tuple[str, str]]:
    """NAME -> (value, the comment lines above it) for each ``NAME=`` line of .env.example."""
    entries: dict[str, tuple[str, str]] = {}
    comment: list[str] = []
    for line in (REPO / ".env.example").read_text(encoding="utf-8").splitlines():
        match = re.fullmatch(r"(?:# )?([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            entries[match[1]] = (match[2], " ".join(comment))
            comment = []
        elif line.startswith("# ") and not line.startswith("# ---"):
            comment.append(line[2:].strip())
        else:
            comment = []
    return entries


def test_env_example_lists_every_setting_with_its_default() -> None:
    entries = env_example()
    problems: list[str] = []
    for row in SETTINGS_TABLE:
        if row.variable not in entries:
            problems.append(f"{row.variable} is missing")
            continue
        if row.spec.secret and row.variable + "_FILE" not in entries:
            problems.append(f"{row.variable}_FILE is missing: secrets are read from files")
        value, comment = entries[row.variable]
        default = row.shown_default
        if default and value != default and f"default {default}" not in comment:
            problems.append(f"{row.variable}={value}: show the default {default} or name it")
    assert not problems, "\n".join(problems)


def test_env_example_names_no_unknown_variable() -> None:
    client = {
        name.replace(" / _FILE", suffix)
        for name in ClientSettings.VARIABLES
        for suffix in ("", "_FILE")
    }
    compose = set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", (REPO / "docker-compose.yml").read_text()))
    known = {row.variable for row in SETTINGS_TABLE} | client | compose
    known |= {row.variable + "_FILE" for row in SETTINGS_TABLE if row.spec.secret}
    unknown = sorted(n for n in env_example() if n.startswith("COWRIE_STATS_") and n not in known)
    assert unknown == []
