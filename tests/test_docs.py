"""The README a newcomer reads and the documentation site: short, runnable as written, built strictly."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from transfer_freezing import cli, config, profiles

from conftest import REPO

MKDOCS = [sys.executable, "-m", "mkdocs"]


def _commands(markdown: str) -> list[str]:
    """Every command line of the fenced ``bash`` blocks (comments cut, continuations joined)."""
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                lines.append(line)
    return lines


def _check(command: str) -> None:
    """One README command: tfreeze lines parse and their overrides validate; files named exist."""
    for part in re.split(r"\s*&&\s*", command):
        words = shlex.split(part)
        prog, args = words[0], words[1:]
        if prog == "tfreeze":
            parsed = cli.parser().parse_args(args)  # SystemExit(2) on an unknown option
            if parsed.command == "profile":
                profiles.render(parsed.name, parsed.overrides)  # the profile exists and validates
            else:
                config.load(REPO / "params.yaml", parsed.overrides)
        elif prog == "dvc" and args[:2] == ["exp", "run"]:
            overrides = [args[i + 1] for i, a in enumerate(args) if a == "-S"]
            config.load(REPO / "params.yaml", overrides)
        elif prog == "cp":
            assert (REPO / args[0]).is_file(), command
        elif prog in ("bash", "python", "python3") and args and args[0].endswith((".sh", ".py")):
            assert (REPO / args[0]).is_file(), command
        else:
            assert prog in {"dvc", "python3", ".venv/bin/python", ".", "bash"}, f"unchecked: {command}"


def test_readme_is_a_newcomers_page():
    assert len((REPO / "README.md").read_text().splitlines()) <= 250


def test_every_readme_command_runs_as_written(monkeypatch):
    monkeypatch.chdir(REPO)
    commands = _commands((REPO / "README.md").read_text())
    assert any(c.startswith("tfreeze train") for c in commands)
    for command in commands:
        try:
            _check(command)
        except SystemExit as stop:
            pytest.fail(f"README command does not parse: {command} (exit {stop.code})")


def test_readme_links_point_at_files():
    text = (REPO / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)", text):
        if not target.startswith("http"):
            assert (REPO / target).is_file(), target


@pytest.fixture(scope="module")
def site_copy(tmp_path_factory) -> Path:
    """The docs' sources with what the hooks read (schema, params, dvc.yaml, reports)."""
    root = tmp_path_factory.mktemp("docs")
    for name in ("mkdocs.yml", "params.yaml", "dvc.yaml"):
        shutil.copy(REPO / name, root / name)
    for name in ("docs", "reports", "src"):
        shutil.copytree(REPO / name, root / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _build(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*MKDOCS, "build", "--strict", "-d", str(root / "site")], cwd=root,
                          capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1",
                                                               "PATH": "/usr/bin:/bin"})


def test_the_documentation_site_builds_strictly(site_copy):
    built = _build(site_copy)
    assert built.returncode == 0, built.stdout + built.stderr
    for page in ("index.html", "statistics/index.html", "troubleshooting/index.html",
                 "params/index.html", "reports/freezing_forest.png"):
        assert (site_copy / "site" / page).is_file(), page
    results = (site_copy / "site" / "results" / "index.html").read_text()
    assert "Decisive comparison" in results  # the committed table is included, not copied


def test_the_readme_shows_the_committed_table():
    report = (REPO / "reports" / "freezing_comparison.md").read_text().splitlines()
    start = next(i for i, line in enumerate(report) if line.startswith("| model"))
    end = next(i for i in range(start, len(report)) if not report[i].startswith("|"))
    assert "\n".join(report[start:end]) in (REPO / "README.md").read_text()  # the main table, verbatim


@pytest.mark.parametrize("page, edit, why", [
    ("docs/index.md", lambda t: t + "\n[gone](no-such-page.md)\n", "no-such-page.md"),
    ("docs/params.md", lambda t: t.replace("| `train.epochs` |", "| `train.epoch` |"), "params.md is stale"),
])
def test_a_broken_link_or_a_stale_params_page_fails_the_build(site_copy, page, edit, why):
    path = site_copy / page
    before = path.read_text()
    path.write_text(edit(before))
    try:
        built = _build(site_copy)
    finally:
        path.write_text(before)
    assert built.returncode != 0 and why in built.stdout + built.stderr
