"""Grid cells and sweep workers as Ray tasks: embedded Ray on one machine, a cluster by address.

One task runs one ``tfreeze train`` (or ``tfreeze sweep``) process, the very command a DVC stage
runs, so every cell keeps its own process, outputs, MLflow run and per-run determinism.

- Resources per task: ``runtime.cpus_per_run`` CPUs and, when runs use a GPU, ``runtime.gpus_per_run``
  of one (0.25 packs four runs per GPU); the process sees the GPU Ray gave it, and only that one,
  through ``CUDA_VISIBLE_DEVICES``.
- Where a process works: on a node that sees the driver's workspace (the same machine; or a
  shared file system mounted at the same path, declared with ``TFREEZE_SHARED_WORKSPACE=1`` on
  that node) in the workspace itself. Anywhere else in a scratch copy (``TFREEZE_SCRATCH``,
  default ``<tmp>/tfreeze-scratch``): the features travel through Ray's object store once per
  node, and the outputs come back to the driver as bytes, written into the workspace atomically.
  MLflow (and Optuna, for sweeps) must then be servers every node reaches.
- ``--address`` (or ``RAY_ADDRESS``) with no Ray head there: one line within seconds (its port is
  probed first; Ray's own GCS retries are cut to ``GCS_CONNECT_S``), before anything is written.
- Afterwards the driver records the finished cells with ``dvc commit -f`` (in a DVC project, when
  the runs used params.yaml unchanged), so ``dvc repro`` finds those stages up to date.
- Faults: a task whose worker dies, or whose process is killed by SIGKILL (the OOM killer, a
  lost node), is retried by Ray (``MAX_RETRIES``) and the cell resumes from its checkpoint when
  the retry runs where that checkpoint is; a cell that fails for a real reason is reported in one
  line and the others go on.
- Stopping: Ctrl-C (SIGINT) or SIGTERM of the driver submits nothing more, records the stop in
  Ray's key-value store (a task that starts afterwards runs nothing) and cancels the tasks; each
  task passes the driver's signal on to its process: SIGINT stops it at once, SIGTERM at the end of
  its epoch with a fresh resumable state. Either way its MLflow run ends KILLED before the driver
  exits, and the checkpoint stays. While a finished cell's outputs are written into the workspace
  and while ``dvc commit`` records finished cells, the driver holds the signal until that step is
  done (``dvc commit`` runs in its own session, out of reach of the terminal's Ctrl-C), so no
  output or ``dvc.lock`` is left half-written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import logging
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import ray
from filelock import FileLock

from .. import atomic, config
from ..config import Params, resolve_url
from ..errors import Terminated, UserError, first_line
from ..provenance import code_hash  # every node must run the driver's code

MAX_RETRIES = 3  # attempts after the first, for lost workers and SIGKILLed processes
STOP_GRACE_S = 60.0  # how long a stopped process may take to end its MLflow run (SIGTERM: its epoch)
LOCAL_OBJECT_STORE = 96 << 20  # embedded Ray moves no data between nodes: keep its store small
SHARED_ENV = "TFREEZE_SHARED_WORKSPACE"  # on a node: 1 = sees the driver's workspace, 0 = does not
SCRATCH_ENV = "TFREEZE_SCRATCH"  # on a node: where scratch workspaces live
KILL_ONCE_ENV = "TFREEZE_RAY_KILL_ONCE"  # tests: the first task to create this file loses its worker
FORWARDED = ("TFREEZE_", "MLFLOW_", "OPTUNA_STORAGE")  # driver variables every process gets
SCRATCH_ABS = ".tfreeze-abs"  # where absolute output paths of params go in a scratch workspace
PROBE_TIMEOUT_S = 5.0  # --address: how long the head's port may take to accept a connection
GCS_CONNECT_S = 10  # --address: how long Ray may try to reach a GCS at a port that accepts connections
PAUSE_ENV = "TFREEZE_PAUSE_AT"  # tests: "<point>=<file>": the driver creates the file and waits there
STOP_KEY = "tfreeze-stop-{grid}"  # Ray internal KV: the signal that stopped a grid ("SIGINT", "SIGTERM")


class CellLost(Exception):
    """The cell's process was killed by SIGKILL (OOM killer, a node going away): Ray retries it."""


@dataclass(frozen=True)
class Job:
    """One task: a ``tfreeze`` subcommand with its cell arguments, and what it writes."""

    name: str
    command: tuple[str, ...]
    outputs: tuple[tuple[str, str], ...]  # (path in a scratch workspace, path in the driver's)
    stage: str | None  # the DVC stage it is, when params.yaml's grid holds it
    run_dir: str | None = None  # train cells: the folder whose stale checkpoint goes once done


@dataclass(frozen=True)
class Context:
    """What every task of a grid shares."""

    workspace: str
    host: str
    params: str
    params_text: str
    overrides: tuple[str, ...]
    scratch_sets: tuple[str, ...]  # extra --set for scratch workspaces (absolute paths mapped)
    env: dict[str, str]
    code: str
    grid: str = ""  # this grid's id: the key under which the driver records a stop
    inputs: list = field(default_factory=list)  # [ObjectRef of a tar of the features], or []
    inputs_key: str = ""


@dataclass
class Outcome:
    ok: bool
    line: str
    node: str = ""
    remote: bool = False
    resumed: bool = False
    files: dict[str, bytes] = field(default_factory=dict)


# --------------------------------------------------------------------------- driver


def train_cells(p: Params, cells: list[tuple[str, str, int, int, str]], params: str,
                overrides: list[str], jobs: int | None, address: str | None) -> None:
    """``tfreeze train`` for each (model, freeze, seed, fold, recipe) cell as a Ray task, ``jobs``
    at a time (None: as many as fit)."""
    from . import stage as train_stage

    stages = train_stage.stages(p)
    out = _layout(p, "train.out")
    todo = []
    for cell in cells:
        model, freeze, seed, fold, recipe = cell
        rel = train_stage.cell_name(*cell)
        todo.append(Job(
            name=rel,
            command=("train", "--model", model, "--freeze", freeze, "--seed", str(seed), "--fold", str(fold),
                     "--recipe", recipe),
            outputs=((f"{out[0]}/{rel}", f"{out[1]}/{rel}"),),
            stage=stages.get(cell),
            run_dir=f"{out[1]}/{rel}"))
    tuned = any(config.is_tuned(p, cell[4]) for cell in cells)
    ship = [("features.out", None)] + ([("sweep.out", "*.json")] if tuned else [])
    run(p, todo, params, overrides, jobs, address, ship, what="runs")


def sweep_workers(p: Params, studies: list[tuple[str, str, str]], params: str, overrides: list[str],
                  workers: int, address: str | None) -> None:
    """``workers`` ``tfreeze sweep`` processes per (model, freeze, recipe) study, as Ray tasks."""
    out = _layout(p, "sweep.out")
    g = p["grid"]
    grid = {(m, f, r) for m in g["tuned_models"] for f in g["tuned_freeze_modes"] for r in g["tuned_recipes"]}
    todo = [Job(name=f"sweep {model}/{freeze}/{recipe} worker {i + 1}",
                command=("sweep", "--model", model, "--freeze", freeze, "--recipe", recipe, "--shared"),
                outputs=((f"{out[0]}/{model}-{freeze}-{recipe}.json",
                          f"{out[1]}/{model}-{freeze}-{recipe}.json"),),
                stage=f"sweep@{model}-{freeze}-{recipe}" if (model, freeze, recipe) in grid else None)
            for model, freeze, recipe in studies for i in range(workers)]
    env = {"OPTUNA_STORAGE": resolve_url(os.environ.get("OPTUNA_STORAGE") or p["sweep"]["storage"])}
    run(p, todo, params, overrides, workers, address, [("features.out", None)],
        what="sweep workers", env=env)


def run(p: Params, jobs: list[Job], params: str, overrides: list[str], window: int | None,
        address: str | None, ship: list[tuple[str, str | None]], what: str,
        env: dict[str, str] | None = None) -> None:
    """Run ``jobs`` as Ray tasks, ``window`` at a time; bring outputs home; record them in DVC."""
    from . import tracking

    if window is not None and window < 1:
        flag = "--workers" if what == "sweep workers" else "--jobs"
        raise UserError(f"{flag} {window}: expected a number of {what} at once >= 1")
    if address:
        _probe(address)  # before anything is written (the tracking store) or Ray is started
    t = tracking.Tracking.from_params(p)
    if address and not t.uri.startswith(("http://", "https://")):
        tracking.connect(t)  # the experiment (and its artifact folder) is the driver's, not a node's
    env = {"MLFLOW_TRACKING_URI": t.uri, **(env or {})}
    done: list[Job] = []
    failed: list[str] = []

    def finished(job: Job, outcome: Outcome) -> None:
        if outcome.ok:
            with _signals_held():  # a cell's outputs are written whole, or not at all
                _pause("home")
                _bring_home(job, outcome.files)
                done.append(job)
            where = f" [ran on {outcome.node}; outputs copied back]" if outcome.remote else ""
            again = " (resumed from its checkpoint)" if outcome.resumed else ""
            print(f"{outcome.line}{again}{where}", flush=True)
        else:
            failed.append(job.name)
            print(f"{job.name}: {' '.join(outcome.line.split())}", flush=True)

    with _ray(address):
        cpus, gpus = _resources(p)
        fits = _capacity(cpus, gpus)
        asked, window = window, min(window or len(jobs), len(jobs))
        if asked and fits < window:
            gpu = f" and {gpus:g} GPU" if gpus else ""
            print(f"the Ray cluster fits {fits} of the {window} {what} asked for at once "
                  f"({cpus:g} CPU{gpu} each: runtime.cpus_per_run, runtime.gpus_per_run)", flush=True)
        ctx = _context(p, params, overrides, env, ship if address else [])
        _pause("tasks")
        try:
            _schedule(ctx, jobs, cpus, gpus, window, finished)
        finally:
            _record(list(dict.fromkeys(j.stage for j in done if j.stage)), params, overrides, p)
    if failed:
        stages = {j.name.rsplit(" worker", 1)[0] for j in jobs if j.name in failed}
        raise UserError(f"{len(failed)} of {len(jobs)} {what} failed: {', '.join(sorted(stages))} "
                        "(their messages are above; re-run them one at a time)")


@contextlib.contextmanager
def _ray(address: str | None) -> Iterator[None]:
    """Connect to the cluster at ``address``, or start an embedded instance; quiet either way."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet = {"logging_level": logging.ERROR, "log_to_driver": False}
    if address:
        # Something that is not a Ray head on that port: Ray's GCS connection retries end after
        # this many seconds (one a second), not after its default of minutes.
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(GCS_CONNECT_S))
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            # "local": a private instance, never a cluster someone started on this machine.
            ray.init(address="local", num_cpus=len(os.sched_getaffinity(0)), include_dashboard=False,
                     object_store_memory=LOCAL_OBJECT_STORE, **quiet)
    except KeyboardInterrupt:  # Ctrl-C while Ray starts: stop what it started
        with contextlib.suppress(Exception):
            ray.shutdown()
        raise
    except Exception as err:  # noqa: BLE001 - any failure to start or reach Ray is one line
        where = f"connect to the Ray cluster at {address}" if address else "start a local Ray instance"
        raise UserError(f"could not {where}: {first_line(err)}") from err
    _brief_ray_messages()
    previous = signal.signal(signal.SIGTERM, _terminated)  # ray.init replaced the driver's handler
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        ray.shutdown()


def _probe(address: str, timeout: float = PROBE_TIMEOUT_S) -> None:
    """One line within seconds when nothing answers at ``address`` (Ray itself retries its GCS
    connection for minutes, printing a warning each time)."""
    if address == "auto":  # Ray finds the cluster started on this machine, or says there is none
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not (sep and host and port.isdigit() and 0 < int(port) < 65536):
        raise UserError(f"--address {address!r} (or RAY_ADDRESS): expected HOST:PORT of a Ray cluster's "
                        "head, e.g. 10.0.0.5:6379")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as err:
        why = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err)).lower()
        raise UserError(f"no Ray cluster at {address} ({why} within {timeout:g} s): start its head there "
                        f"(ray start --head --port {port}), or leave out --address and RAY_ADDRESS to run "
                        "on this machine") from err


def _brief_ray_messages() -> None:
    """Ray's driver prints the raylet's news (a worker died, a task is retried) as long coloured
    blocks on stdout, between the cells' lines; keep two sentences of each, one line on stderr."""
    import ray._private.worker as ray_worker  # ray is pinned: its private printer is known

    def brief(data: dict, ignore_prefix: bool = False) -> None:
        for line in data.get("lines", []):
            said = ". ".join(" ".join(line.split()).split(". ")[:2]).rstrip(".")[:200]
            if said:
                print(f"ray: {said}", file=sys.stderr, flush=True)

    if hasattr(ray_worker, "print_to_stdstream"):
        ray_worker.print_to_stdstream = brief


def _terminated(signum, frame) -> None:
    raise Terminated("SIGTERM")


def _resources(p: Params) -> tuple[float, float]:
    """(CPUs, GPUs) one task asks for: GPUs only when runs use one (runtime.device)."""
    device, cpus = p["runtime"]["device"], float(p["runtime"]["cpus_per_run"])
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    if device == "cuda" and not has_gpu:
        raise UserError("runtime.device = cuda but the Ray cluster has no GPU")
    return cpus, float(p["runtime"]["gpus_per_run"]) if has_gpu and device != "cpu" else 0.0


def _capacity(cpus: float, gpus: float) -> int:
    """How many tasks the cluster's live nodes run at once; none -> one line."""
    fits = 0
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            n = math.floor(have.get("CPU", 0) / cpus + 1e-6)
            if gpus:
                n = min(n, math.floor(have.get("GPU", 0) / gpus + 1e-6))
            fits += n
    if not fits:
        gpu = f" and {gpus:g} GPU" if gpus else ""
        raise UserError(f"no node of the Ray cluster has {cpus:g} CPU{gpu} for one run "
                        "(runtime.cpus_per_run, runtime.gpus_per_run)")
    return fits


def _layout(p: Params, key: str) -> tuple[str, str]:
    """(path in a scratch workspace, path in the driver's) of a params folder such as train.out."""
    section, leaf = key.split(".")
    path = str(p[section][leaf]).rstrip("/")
    return (f"{SCRATCH_ABS}/{key}" if os.path.isabs(path) else path), path


def _context(p: Params, params: str, overrides: list[str], env: dict[str, str],
             ship: list[tuple[str, str | None]]) -> Context:
    params_text = Path(params).read_text()
    forwarded = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED)}
    scratch_sets = tuple(f"{key}={_layout(p, key)[0]}" for key in ("features.out", "train.out", "sweep.out")
                         if os.path.isabs(_layout(p, key)[1]))
    ctx = Context(workspace=os.getcwd(), host=socket.gethostname(), params=params, params_text=params_text,
                  overrides=tuple(overrides), scratch_sets=scratch_sets, env={**forwarded, **env},
                  code=code_hash(), grid=uuid.uuid4().hex)
    if not ship:
        return ctx
    blob = _pack(p, ship)
    return dataclasses.replace(ctx, inputs=[ray.put(blob)], inputs_key=hashlib.sha256(blob).hexdigest()[:16])


def _pack(p: Params, ship: list[tuple[str, str | None]]) -> bytes:
    """A tar of the inputs a node without the workspace needs (the features), as scratch paths."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", dereference=True) as tar:  # DVC may link to its cache
        for key, pattern in ship:
            inside, here = _layout(p, key)
            root = Path(here)
            if not root.is_dir():
                continue
            for path in sorted(root.rglob(pattern or "*")):
                if path.is_file():
                    tar.add(path, arcname=f"{inside}/{path.relative_to(root).as_posix()}")
    return buffer.getvalue()


def _schedule(ctx: Context, jobs: list[Job], cpus: float, gpus: float, window: int,
              finished: Callable[[Job, Outcome], None]) -> None:
    options = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": MAX_RETRIES, "retry_exceptions": [CellLost]}
    todo, running = list(jobs), {}
    try:
        while todo or running:
            while todo and len(running) < window:
                job = todo.pop(0)
                running[_execute.options(name=job.name, **options).remote(ctx, job)] = job
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                job = running.pop(ref)
                finished(job, _outcome(ref))
    except KeyboardInterrupt as err:
        _stop(ctx, running, "SIGTERM" if isinstance(err, Terminated) else "SIGINT")
        raise


def _outcome(ref) -> Outcome:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        if isinstance(err.cause, CellLost):
            return Outcome(False, f"killed (SIGKILL) in all {MAX_RETRIES + 1} attempts: {err.cause}")
        return Outcome(False, first_line(err.cause or err))
    except ray.exceptions.RayError as err:  # the worker or its node died in every attempt
        return Outcome(False, f"lost its Ray worker in all {MAX_RETRIES + 1} attempts ({first_line(err)})")


def _stop(ctx: Context, running: dict, how: str) -> None:
    """Ctrl-C / SIGTERM: record the stop for tasks yet to start, cancel the running ones (their
    processes get ``how``) and wait until their MLflow runs have ended KILLED."""
    from ray.experimental import internal_kv

    with contextlib.suppress(Exception):  # a lost GCS: the cancellations below still go out
        internal_kv._internal_kv_put(STOP_KEY.format(grid=ctx.grid), how)
    if not running:
        return
    when = "at once" if how == "SIGINT" else "after their epoch"
    print(f"stopping {len(running)} task(s) {when}: their MLflow runs end KILLED and keep their checkpoints",
          file=sys.stderr, flush=True)
    for ref in running:
        with contextlib.suppress(Exception):
            ray.cancel(ref, force=False)
    with contextlib.suppress(Exception):
        ray.wait(list(running), num_returns=len(running), timeout=STOP_GRACE_S + 10)


class _Held:
    """The signals ``_signals_held`` kept back: the exception each one raises afterwards."""

    def __init__(self) -> None:
        self.raised: BaseException | None = None


@contextlib.contextmanager
def _signals_held() -> Iterator[_Held]:
    """Within the block Ctrl-C and SIGTERM are held back; at its end the first one is raised
    (``KeyboardInterrupt`` / ``Terminated``), so a step that must not be cut short ends whole."""
    held = _Held()

    def hold(signum, frame) -> None:
        if held.raised is None:
            held.raised = KeyboardInterrupt() if signum == signal.SIGINT else Terminated("SIGTERM")

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield held
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if held.raised is not None:
        raise held.raised


def _pause(point: str) -> None:
    """Test hook (``TFREEZE_PAUSE_AT=<point>=<file>``): create the file at ``point`` and wait, at most
    a minute, until the test has removed it, so a signal can be sent at exactly this point."""
    name, _, marker = os.environ.get(PAUSE_ENV, "").partition("=")
    if name != point or not marker:
        return
    Path(marker).touch()
    deadline = time.monotonic() + 60
    while Path(marker).exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def _bring_home(job: Job, files: dict[str, bytes]) -> None:
    """Write a scratch run's returned outputs into the workspace, each file atomically."""
    mapping = dict(job.outputs)
    for inside in sorted(files, key=lambda name: name.endswith(("metrics.json", "run.json"))):
        base = next(k for k in mapping if inside == k or inside.startswith(k + "/"))
        target = Path(mapping[base] + inside[len(base):])
        with atomic.atomic_path(target) as tmp:
            tmp.write_bytes(files[inside])
    if files and job.run_dir:
        (Path(job.run_dir) / "last.pt").unlink(missing_ok=True)  # the cell finished elsewhere


RECIPE_READERS = ("train", "train_cells", "train_tuned", "sweep")  # stages whose deps are resolved recipes


def _record(stages: list[str], params: str, overrides: list[str], p: Params | None = None) -> None:
    """``dvc commit -f`` the finished stages, when this is a DVC project run on its params.yaml; with
    train or sweep stages, first the ``recipes`` stage (its resolved recipes are their deps) and,
    where its output is missing and it pretrains nothing, the ``pretrain`` stage."""
    here = Path.cwd()
    if not stages or not (here / ".dvc").is_dir() or not (here / "dvc.yaml").is_file():
        return
    if os.environ.get("DVC_STAGE"):  # inside `dvc repro`: DVC records its own stages
        return
    if overrides or Path(params).resolve() != (here / "params.yaml").resolve():
        used = "--set " + " ".join(overrides) if overrides else f"--params {params}"
        print(f"not recorded in dvc.lock: the runs used {used}, not params.yaml "
              f"(if they match it: dvc commit -f {' '.join(stages)})", flush=True)
        return
    if p is not None and any(s.split("@")[0] in RECIPE_READERS for s in stages):
        from .. import recipes

        recipes.write(p)  # what the recipes stage writes for these params
        stages = ["recipes", *stages]
        if not Path(p["pretrain"]["out"]).exists():  # the pretrain stage's output: their dep too
            if p["pretrain"]["models"]:
                raise UserError(f"not recorded in dvc.lock: {p['pretrain']['out']}/ (the pretrain stage's "
                                "output, a dep of the train stages) is missing; run dvc repro pretrain, "
                                f"then dvc commit -f {' '.join(stages)}")
            from . import pretrain

            pretrain.run(p)  # no models: only the empty pretrain.json the stage writes
            stages = ["pretrain", *stages]
    # `dvc commit -f` of every stage after one collection and with one write of dvc.lock (record.py),
    # in its own session: the terminal's Ctrl-C reaches only the driver, which holds it until
    # dvc.lock is written whole.
    with _signals_held():
        proc = subprocess.Popen([sys.executable, "-m", "transfer_freezing.train.record", *stages],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        _pause("record")
        out, err = proc.communicate()
        if proc.returncode:
            lines = (err.strip() or out.strip() or "no output").splitlines()
            raise UserError(f"dvc commit failed ({lines[-1]}); the outputs are in place: "
                            f"dvc commit -f {' '.join(stages)}")
        print(f"recorded {len(stages)} stage(s) in dvc.lock (dvc commit)", flush=True)


# --------------------------------------------------------------------------- worker

# Starts the ``tfreeze`` process so that it gets SIGTERM (ends its MLflow run KILLED) when the
# Ray worker that supervises it dies, instead of training on unsupervised.
# Ray starts its workers with SIGINT blocked, and a blocked signal stays blocked across exec: the
# process would never see the SIGINT a Ctrl-C of the grid sends it. Unblock it first.
_SHIM = """
import ctypes, os, signal, sys
signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
try:
    ctypes.CDLL(None).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(143)
os.execv(sys.argv[2], sys.argv[2:])
"""


@ray.remote
def _execute(ctx: Context, job: Job) -> Outcome:
    node = f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"
    if _stop_signal(ctx):  # the grid was stopped before this task started: start nothing
        return Outcome(False, "not started: the grid was stopped", node)
    if code_hash() != ctx.code:
        return Outcome(False, f"node {node} runs other tfreeze code ({code_hash()}) than the driver "
                              f"({ctx.code}): install the same version on every node", node)
    shared = _sees_workspace(ctx)
    try:
        root = Path(ctx.workspace) if shared else _scratch(ctx)
    except UserError as err:
        return Outcome(False, f"on {node}: {err}", node, remote=True)
    params = ctx.params if shared else _write_params(root, ctx)
    sets = ctx.overrides + (() if shared else ctx.scratch_sets)
    cmd = [sys.executable, "-m", "transfer_freezing.cli", job.command[0], "--params", params,
           *(a for s in sets for a in ("--set", s)), *job.command[1:]]
    env = _process_env(ctx)
    victim = _take_injected_kill(ctx)
    if victim:
        env["TFREEZE_KILL_AFTER_EPOCH"] = "0"
    code, out, err = _supervise(cmd, root, env, lambda: _stop_signal(ctx))
    if code == -signal.SIGKILL:
        if victim:  # the test's worker death: the Ray worker goes the way of its process
            os.kill(os.getpid(), signal.SIGKILL)
        raise CellLost(f"{job.name} on {node}")
    if code != 0:
        return Outcome(False, _last_line(err) or _last_line(out) or f"exit status {code}", node, not shared)
    files = {} if shared else _collect(root, job)
    resumed = "\nresuming " in "\n" + out
    return Outcome(True, _last_line(out) or f"{job.name}: done", node, not shared, resumed, files)


def _sees_workspace(ctx: Context) -> bool:
    declared = os.environ.get(SHARED_ENV)
    if declared in ("0", "1"):
        return declared == "1"
    return socket.gethostname() == ctx.host and Path(ctx.workspace).is_dir()


def _scratch(ctx: Context) -> Path:
    """This node's copy of the workspace's inputs (unpacked once per node), and stores checked."""
    if not ctx.inputs:
        raise UserError(f"this node does not see the driver's workspace {ctx.workspace} and no inputs "
                        f"were shipped (set {SHARED_ENV}=1 on nodes that share it)")
    for name in ("MLFLOW_TRACKING_URI", "OPTUNA_STORAGE"):
        url = ctx.env.get(name, "")
        local = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else None
        if local and not Path(local).is_file():
            raise UserError(f"{name} is a local sqlite file ({url}) that this node cannot reach: "
                            "use a server every node reaches (README: Scaling out)")
    base = Path(os.environ.get(SCRATCH_ENV) or Path(tempfile.gettempdir()) / "tfreeze-scratch")
    key = hashlib.sha256(f"{ctx.host}:{ctx.workspace}:{ctx.inputs_key}".encode()).hexdigest()[:16]
    root = base / key
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(f"{root}.lock"):
        if not (root / ".inputs").is_file():
            blob = ray.get(ctx.inputs[0])
            with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
                tar.extractall(root, filter="data")
            (root / ".inputs").write_text(ctx.inputs_key)
    return root


def _write_params(root: Path, ctx: Context) -> str:
    inside = Path(ctx.params)
    name = ctx.params if not inside.is_absolute() and ".." not in inside.parts else inside.name
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.is_file() or path.read_text() != ctx.params_text:
        atomic.write_text(path, ctx.params_text)
    return name


def _process_env(ctx: Context) -> dict[str, str]:
    env = dict(os.environ)
    if "OMP_NUM_THREADS" not in ctx.env:
        env.pop("OMP_NUM_THREADS", None)  # Ray sets it to the task's CPUs; plain runs do not have it
    env.pop(KILL_ONCE_ENV, None)
    env.update({k: v for k, v in ctx.env.items() if k != KILL_ONCE_ENV})
    env["TQDM_DISABLE"] = "1"
    gpus = ray.get_gpu_ids()
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus))
    return env


def _take_injected_kill(ctx: Context) -> bool:
    """Fault injection (tests): the first task to create the marker file is killed after epoch 1."""
    marker = ctx.env.get(KILL_ONCE_ENV) or os.environ.get(KILL_ONCE_ENV)
    if not marker:
        return False
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _stop_signal(ctx: Context) -> str | None:
    """The signal that stopped the grid ("SIGINT", "SIGTERM"), None while it runs."""
    from ray.experimental import internal_kv

    if not ctx.grid:
        return None
    try:
        value = internal_kv._internal_kv_get(STOP_KEY.format(grid=ctx.grid))
    except Exception:  # noqa: BLE001 - the GCS unreachable: no stop known
        return None
    return value.decode() if value else None


def _supervise(cmd: list[str], cwd: Path, env: dict[str, str],
               stop_signal: Callable[[], str | None] = lambda: None) -> tuple[int, str, str]:
    """Run ``cmd``; on cancellation (KeyboardInterrupt from ray.cancel) pass the driver's signal on
    (``stop_signal``: SIGINT for Ctrl-C, SIGTERM) and wait until the process has ended its MLflow run."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", _SHIM, str(os.getpid()), *cmd], cwd=cwd, env=env,
                                stdout=out, stderr=err, start_new_session=True)
        try:
            while True:
                try:
                    code = proc.wait(timeout=0.5)
                    break
                except subprocess.TimeoutExpired:
                    continue
        except BaseException:
            _end(proc, getattr(signal, stop_signal() or "SIGINT"))
            raise
        out.seek(0)
        err.seek(0)
        return code, out.read(), err.read()


def _end(proc: subprocess.Popen, how: signal.Signals) -> None:
    """Send ``how`` to a cancelled task's process and wait for it (a repeated cancellation does not
    cut the wait short); SIGKILL after ``STOP_GRACE_S``."""
    deadline = time.monotonic() + STOP_GRACE_S
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(how)
    while proc.poll() is None:
        if time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            return
        try:
            proc.wait(timeout=0.2)
        except subprocess.TimeoutExpired:
            continue
        except KeyboardInterrupt:
            continue


def _collect(root: Path, job: Job) -> dict[str, bytes]:
    """A scratch run's outputs as {scratch path: bytes}; its run folder is dropped afterwards."""
    files: dict[str, bytes] = {}
    for inside, _ in job.outputs:
        path = root / inside
        found = [path] if path.is_file() else sorted(q for q in path.rglob("*") if q.is_file())
        for item in found:
            if item.name != "last.pt" and not item.name.startswith("."):
                files[item.relative_to(root).as_posix()] = item.read_bytes()
    if job.run_dir:
        for inside, _ in job.outputs:
            shutil.rmtree(root / inside, ignore_errors=True)
    return files


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""
