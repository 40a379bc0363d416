"""Shared fixtures: a tiny, fully offline project (params, corpus, features) in a temp folder."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

# `import dvc` sets up DVC's log handlers on the sys.stdout/stderr of that moment: here, the
# session's, not the capsys stream of a test (an in-process CLI call), which closes with the test.
import dvc  # noqa: F401
import pytest
import yaml

# One torch thread per process: the suite runs a process per core (pytest-xdist), and each starts
# tfreeze subprocesses that would otherwise take every core each (train.core.configure).
os.environ.setdefault("OMP_NUM_THREADS", "1")

from transfer_freezing import config
from transfer_freezing.data import corpus as data
from transfer_freezing.data import features

REPO = Path(__file__).resolve().parents[1]
BIN = str(Path(sys.executable).parent)
TFREEZE = str(Path(BIN) / "tfreeze")

TINY = {
    "data.synthetic_clips_per_class": 6,
    "data.clip_seconds": 2.0,
    "features.image_size": 32,
    "runtime.feature_workers": 1,
    "grid.models": ["vit_demo"],
    "grid.freeze_modes": ["freeze_none", "freeze_patch_0_11"],
    "grid.seeds": [1, 2],
    "grid.folds": [0],  # the demo's k-fold split (3 folds), one cell
    "runtime.checkpoint_seconds": 0,  # resumable state after every epoch: the kill tests need it
    "train.epochs": 2,
    "train.batch_size": 16,
    "train.weights": "none",  # the demo's pretrained weights: test_pretrain trains and loads them
    "pretrain.models": [],
    "grid.tuned_models": ["vit_demo"],
    "grid.tuned_freeze_modes": ["freeze_none"],
    "sweep.n_trials": 2,
    "sweep.epochs": 2,
    "tracking.experiment": "tiny",
}


# Files whose tests share no module- or class-scoped fixture: each test is its own unit of work, so
# their minutes-long tests (a `dvc repro` of a shrunk profile, a Ray cluster) spread over the
# workers. Every other file is one unit, its module fixtures built once (a `dvc repro` of a tiny
# study, a PostgreSQL cluster). `pytest_collection_modifyitems` checks the premise.
SPLIT = ("test_profiles.py", "test_ray.py", "test_concurrency.py", "test_training.py")
# Sent out first, in this order: the longest unit (test_pipeline's module fixture and its tests),
# then the split files' long tests (`--durations`).
LONGEST = ("test_pipeline.py", "test_profiles.py", "test_ray.py")


def pytest_xdist_make_scheduler(config, log):
    """pyproject's ``--dist loadfile``, with the tests of ``SPLIT`` files as units of their own."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduler(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path = nodeid.split("::", 1)[0]
            return nodeid if Path(path).name in SPLIT else path

        def _reschedule(self, node) -> None:
            # A worker holds its running test and the next one (pytest needs to know the next
            # item), not three: a second long test queued behind a long one idles another worker.
            if not node.shutting_down and self.workqueue and self._pending_of(self.assigned_work[node]) > 1:
                return
            super()._reschedule(node)

    return Scheduler(config, log)


def pytest_collection_modifyitems(config, items) -> None:
    """The long tests first. Under pytest-xdist (``--dist loadfile --no-loadscope-reorder``,
    pyproject's addopts, with ``Scheduler``'s units) units go out in this order: the longest first,
    so the workers finish together instead of one running the last long unit alone (xdist's own
    reorder, by number of tests, would send these last)."""
    for item in items:
        if item.path.name in SPLIT:
            shared = [name for name, defs in item._fixtureinfo.name2fixturedefs.items()
                      if defs[-1].scope in ("module", "class", "package")]
            if shared:
                raise pytest.UsageError(f"{item.nodeid} uses {shared}, fixtures of a wider scope than "
                                        f"one test: remove {item.path.name} from conftest.SPLIT")

    def rank(item) -> tuple[int, bool]:
        name = item.path.name
        return (LONGEST.index(name) if name in LONGEST else len(LONGEST),
                item.get_closest_marker("slow") is None)

    items.sort(key=rank)


def write_params(folder: Path, **extra) -> Path:
    """params.yaml for a tiny study: the committed demo profile with TINY and ``extra`` applied."""
    tree = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in {**TINY, **extra}.items():
        section, _, leaf = key.partition(".")
        if leaf:
            tree[section][leaf] = value
        else:  # a mapping-valued section, e.g. recipes
            tree[section] = value
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(tree, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def tiny_built(tmp_path_factory) -> Path:
    """A folder holding tiny params, corpus and features, built once per session."""
    root = tmp_path_factory.mktemp("tiny")
    write_params(root)
    cwd = os.getcwd()
    os.chdir(root)
    try:
        p = config.load("params.yaml")
        data.materialise(p)
        features.build(p)
    finally:
        os.chdir(cwd)
    # An empty MLflow store (MLflow's tables, no experiment of ours): each test's copy opens it
    # instead of creating the tables through MLflow's migrations (1.1-1.6 s per new store). A
    # project's first run creating its store is what test_pipeline's and test_profiles' do.
    import mlflow

    store = root / p["tracking"]["uri"].removeprefix("sqlite:///")  # relative: the project's own
    store.parent.mkdir()
    mlflow.MlflowClient(f"sqlite:///{store}").search_experiments()
    return root


@pytest.fixture
def tiny(tiny_built: Path, tmp_path: Path, monkeypatch) -> Path:
    """A private copy of the tiny project as the working directory (tests may write into it)."""
    work = tmp_path / "proj"
    shutil.copytree(tiny_built, work)
    monkeypatch.chdir(work)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return work


def tfreeze(*args: str, cwd: Path, env: dict | None = None, check: bool = True):
    """Run the console command; return the CompletedProcess (text mode)."""
    full_env = {**os.environ, **(env or {})}
    full_env.pop("MLFLOW_TRACKING_URI", None) if env is None or "MLFLOW_TRACKING_URI" not in env else None
    proc = subprocess.run([TFREEZE, *args], cwd=cwd, env=full_env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"tfreeze {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc


def tfreeze_here(capsys, *args: str) -> tuple[int, str, str]:
    """``tfreeze args`` in this process, in the working directory (the CLI's ``main``, what the
    console command runs, without a new interpreter's ~5 s of imports): exit code, stdout, stderr."""
    from transfer_freezing import cli

    capsys.readouterr()
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def sh(*cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run ``cmd`` with this venv's commands first on PATH and the project's own MLflow store."""
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def dvc_project(root: Path) -> Path:
    """A git + DVC project of this repository's pipeline (dvc.yaml, src/) in ``root``, committed with
    the ``params.yaml`` already written there."""
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):  # .gitignore: mlruns/ is not in git
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__"))
    git = ("git", "-c", "user.email=t@t", "-c", "user.name=t")
    sh("git", "init", "-q", cwd=root)
    sh("dvc", "init", "-q", cwd=root)
    shutil.copy(REPO / ".dvc/config", root / ".dvc/config")  # the project's cache type (hard links)
    sh(*git, "add", "-A", cwd=root)
    sh(*git, "commit", "-qm", "tiny", cwd=root)
    return root
