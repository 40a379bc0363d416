"""Start and stop the real services the scale-out test needs: PostgreSQL and an MLflow server.

Both listen on 127.0.0.1 only, on free ports, with their files in a private temp folder that is
removed on stop. PostgreSQL is Debian's package (``.ci/services.sh`` installs it); when the tests
run as root, the server runs as the ``postgres`` system user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

MLFLOW = str(Path(sys.executable).parent / "mlflow")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def postgres_bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl`` (Debian keeps them off PATH), or None."""
    found = shutil.which("pg_ctl")
    if found and Path(found).resolve().with_name("initdb").exists():
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(candidates[-1]).parent if candidates else None


def why_no_postgres() -> str | None:
    """None when a PostgreSQL server can be started here, else the reason (for pytest.skip)."""
    if postgres_bindir() is None:
        return "PostgreSQL server binaries not found (run .ci/services.sh: apt-get install postgresql)"
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing (PostgreSQL refuses to run as root)"
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


@dataclass
class Postgres:
    """A throwaway PostgreSQL cluster: ``url(db)`` gives a SQLAlchemy/psycopg URL."""

    root: Path
    port: int
    user: str
    password: str
    bindir: Path

    def url(self, database: str) -> str:
        return f"postgresql+psycopg://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> None:
        import psycopg

        dsn = f"host=127.0.0.1 port={self.port} user={self.user} password={self.password} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextlib.contextmanager
def postgres(databases: tuple[str, ...] = ()) -> Iterator[Postgres]:
    """initdb + pg_ctl start a private cluster on 127.0.0.1:<free port>; stop and delete after."""
    bindir = postgres_bindir()
    if bindir is None:
        raise RuntimeError(why_no_postgres())
    root = Path(tempfile.mkdtemp(prefix="tfreeze-pg-"))
    user, password = "tfreeze", secrets.token_hex(8)
    (root / "pw").write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(root / "pw", "postgres")
    data, log = root / "data", root / "server.log"
    run = _as_server_user
    subprocess.run(run([str(bindir / "initdb"), "-D", str(data), "-U", user, "--pwfile", str(root / "pw"),
                        "--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8",
                        "--no-sync"]),
                   check=True, capture_output=True, text=True)
    port = free_port()
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=60"
    started = subprocess.run(run([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
                                  "-w", "-t", "60", "start"]), capture_output=True, text=True)
    if started.returncode != 0:
        log_text = log.read_text() if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise RuntimeError(f"pg_ctl start failed: {started.stderr}\n{log_text}")
    server = Postgres(root, port, user, password, bindir)
    try:
        for name in databases:
            server.create_database(name)
        yield server
    finally:
        subprocess.run(run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, text=True)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, timeout: float = 180.0) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1:<free port> with proxied artifacts; yields its http URL."""
    port = free_port()
    artifacts.mkdir(parents=True, exist_ok=True)
    log_path = artifacts.parent / f"mlflow-server-{port}.log"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    env.pop("MLFLOW_TRACKING_URI", None)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [MLFLOW, "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", backend_uri, "--artifacts-destination", str(artifacts)],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc, timeout, log_path)
        yield url
    finally:
        _stop_group(proc)


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float, log_path: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s:\n{log_path.read_text()[-4000:]}")


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's own process group (it forks workers), SIGKILL if it lingers."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


RAY = str(Path(sys.executable).parent / "ray")


@contextlib.contextmanager
def ray_node(port: int, head: bool, env: dict[str, str] | None = None,
             timeout: float = 120.0) -> Iterator[Path]:
    """``ray start --block`` of a one-CPU node on 127.0.0.1 (the head, or a node joining it).

    Its own short temp dir (Ray's unix sockets must fit in 107 bytes), no dashboard. Stopped by
    signalling its own process group, not by ``ray stop`` (which stops every Ray instance of the
    user on the machine); the node's Ray processes share its fate. Yields the temp dir.
    """
    tmp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    where = ["--head", "--port", str(port), "--include-dashboard", "false"] if head else [
        "--address", f"127.0.0.1:{port}"]
    cmd = [RAY, "start", "--block", *where, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
           "--num-gpus", "0", "--object-store-memory", str(100 << 20), "--temp-dir", str(tmp),
           "--disable-usage-stats"]
    log_path = tmp / "start.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", **(env or {})})
    try:
        deadline = time.monotonic() + timeout
        while "Ray runtime started" not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray start failed:\n{log_path.read_text(errors='replace')[-4000:]}")
            time.sleep(0.2)
        yield tmp
    finally:
        _stop_group(proc)
        shutil.rmtree(tmp, ignore_errors=True)
