"""GTZAN from the Hugging Face Hub, against a fake Hub endpoint on 127.0.0.1 (no network).

The fake serves what ``huggingface_hub.hf_hub_download`` asks for: a HEAD and a GET (with ranges)
of ``/datasets/marsyas/gtzan/resolve/main/data/genres.tar.gz``, answered with the headers the Hub
sends for a stored file (``X-Repo-Commit``, ``ETag``, ``Content-Length``), and records each request.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from transfer_freezing import config
from transfer_freezing.data import audio, corpus
from transfer_freezing.errors import UserError

SR = 22050
COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the fake repo's commit id
ROUTE = f"/datasets/{audio.GTZAN_HUB_REPO}/resolve/{audio.GTZAN_HUB_REVISION}/{audio.GTZAN_HUB_FILE}"
CACHED_BLOB = Path("datasets--marsyas--gtzan") / "blobs"


def tiny_gtzan_tarball() -> bytes:
    """The original tarball's layout, ``genres/<genre>/<genre>.0000N.au``: two 1.5 s tones per genre."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for g, genre in enumerate(audio.GENRES):
            for i in range(2):
                t = np.arange(round(1.5 * SR)) / SR
                wave = (0.5 * np.sin(2 * np.pi * (200 + 40 * g + 10 * i) * t)).astype(np.float32)
                clip = io.BytesIO()
                sf.write(clip, wave, SR, format="AU", subtype="PCM_16")
                info = tarfile.TarInfo(f"genres/{genre}/{genre}.{i:05d}.au")
                info.size = len(clip.getvalue())
                tar.addfile(info, io.BytesIO(clip.getvalue()))
    return buffer.getvalue()


TARBALL = tiny_gtzan_tarball()
SHA = hashlib.sha256(TARBALL).hexdigest()


@dataclass
class FakeHub:
    """What the fake endpoint serves and what it was asked."""

    body: bytes
    url: str = ""
    requests: list[tuple[str, str, str]] = field(default_factory=list)  # (method, path, Range header)
    drop_once_at: int | None = None  # close the first GET's connection after this many bytes

    def gets(self) -> list[tuple[str, str, str]]:
        return [r for r in self.requests if r[0] == "GET"]


def _handler(hub: FakeHub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
            self._answer(send_body=False)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(send_body=True)

        def _answer(self, send_body: bool) -> None:
            hub.requests.append((self.command, self.path, self.headers.get("Range", "")))
            if self.path != ROUTE:
                self.send_error(404)
                return
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0]) \
                if self.headers.get("Range") else 0
            part = hub.body[start:]
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", COMMIT)
            self.send_header("ETag", f'"{hashlib.sha256(hub.body).hexdigest()}"')
            self.send_header("Content-Length", str(len(part)))
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(hub.body) - 1}/{len(hub.body)}")
            self.end_headers()
            if not send_body:
                return
            if hub.drop_once_at is not None:
                cut, hub.drop_once_at = hub.drop_once_at, None
                self.wfile.write(part[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(part)

    return Handler


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub(TARBALL)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY", "HF_HUB_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")


def blobs(cache: Path) -> list[Path]:
    folder = cache / CACHED_BLOB
    return sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


# --------------------------------------------------------------------------- in process


def test_download_lands_in_the_hub_cache_and_unpacks(tmp_path, hub):
    got = audio.download_gtzan(tmp_path / "dest", sha256=SHA, endpoint=hub.url, cache_dir=tmp_path / "hf")

    assert got == tmp_path / "dest" / "genres"
    assert sorted(p.name for p in got.iterdir()) == sorted(audio.GENRES)
    assert [b.name for b in blobs(tmp_path / "hf")] == [SHA]  # the Hub cache names a blob by its ETag
    assert [m for m, _, _ in hub.requests] == ["HEAD", "GET"]


def test_second_download_reuses_the_hub_cache(tmp_path, hub):
    audio.download_gtzan(tmp_path / "a", sha256=SHA, endpoint=hub.url, cache_dir=tmp_path / "hf")
    hub.requests.clear()

    got = audio.download_gtzan(tmp_path / "b", sha256=SHA, endpoint=hub.url, cache_dir=tmp_path / "hf")

    assert (got / "blues" / "blues.00000.au").is_file()
    assert hub.gets() == []  # revision "main": one HEAD to learn its commit, no transfer


def test_a_mismatching_file_fails_with_one_line_and_extracts_nothing(tmp_path, hub):
    hub.body = TARBALL + b"tampered"

    with pytest.raises(UserError) as err:
        audio.download_gtzan(tmp_path / "dest", sha256=SHA, endpoint=hub.url, cache_dir=tmp_path / "hf")

    message = str(err.value)
    assert "\n" not in message
    assert f"expected {SHA}" in message and "sha256sum" in message
    assert "Kaggle" in message and "data.path" in message
    assert not (tmp_path / "dest").exists()


def test_the_real_pin_is_torchaudios_record_of_the_original_tarball():
    from torchaudio.datasets import gtzan

    assert audio.GTZAN_SHA256 == gtzan._CHECKSUMS["http://opihi.cs.uvic.ca/sound/genres.tar.gz"]
    assert audio.GTZAN_SHA256 == "24347e0223d2ba798e0a558c4c172d9d4a19c00bb7963fe055d183dadb4ef2c6"


def test_without_a_given_checksum_the_real_pin_applies(tmp_path, hub):
    with pytest.raises(UserError, match=f"expected {audio.GTZAN_SHA256}"):
        audio.download_gtzan(tmp_path / "dest", endpoint=hub.url, cache_dir=tmp_path / "hf")


def test_a_dropped_connection_resumes_with_a_ranged_request(tmp_path, hub, monkeypatch):
    from huggingface_hub import constants

    # huggingface_hub writes in chunks of DOWNLOAD_CHUNK_SIZE (10 MB) and resumes after the last
    # whole chunk: smaller chunks let a 50 kB tarball show it.
    monkeypatch.setattr(constants, "DOWNLOAD_CHUNK_SIZE", 4096)
    cut = hub.drop_once_at = len(TARBALL) // 2

    got = audio.download_gtzan(tmp_path / "dest", sha256=SHA, endpoint=hub.url, cache_dir=tmp_path / "hf")

    assert (got / "rock" / "rock.00001.au").is_file()
    first, second = [r for _, _, r in hub.gets()]
    resumed_at = int(second.removeprefix("bytes=").removesuffix("-"))
    assert first == "" and cut - 4096 < resumed_at <= cut  # only what was lost is fetched again
    assert [b.name for b in blobs(tmp_path / "hf")] == [SHA]


def test_offline_mode_uses_a_warm_cache_and_names_a_cold_one(tmp_path, hub, monkeypatch):
    from huggingface_hub import constants

    audio.download_gtzan(tmp_path / "a", sha256=SHA, endpoint=hub.url, cache_dir=tmp_path / "hf")
    hub.requests.clear()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # what HF_HUB_OFFLINE=1 sets at import

    got = audio.download_gtzan(tmp_path / "b", sha256=SHA, endpoint=hub.url, cache_dir=tmp_path / "hf")
    with pytest.raises(UserError) as err:
        audio.download_gtzan(tmp_path / "c", sha256=SHA, endpoint=hub.url, cache_dir=tmp_path / "cold")

    assert (got / "pop" / "pop.00000.au").is_file()
    assert hub.requests == []
    message = str(err.value)
    assert message.startswith("HF_HUB_OFFLINE=1 and GTZAN (marsyas/gtzan data/genres.tar.gz @ main) "
                              f"is not in the Hub cache {tmp_path / 'cold'}")
    assert "\n" not in message and "Kaggle" in message and "data.path" in message
    assert not (tmp_path / "c").exists()


def test_the_data_stage_downloads_then_imports_like_a_local_tree(tmp_path, hub, monkeypatch):
    monkeypatch.setattr(audio, "GTZAN_SHA256", SHA)  # the tiny tarball stands in for GTZAN's
    pointed = functools.partial(audio.download_gtzan, endpoint=hub.url, cache_dir=tmp_path / "hf")
    monkeypatch.setattr(audio, "download_gtzan", pointed)
    p = config.validate({"data.source": "gtzan", "data.download": True, "data.path": str(tmp_path / "dl"),
                         "data.out": str(tmp_path / "raw"), "data.clip_seconds": 1.0,
                         "data.min_seconds": 0.5})

    manifest = corpus.materialise(p)

    assert (manifest["status"] == "ok").sum() == 20
    saved = pd.read_csv(tmp_path / "raw" / "manifest.csv")
    assert set(saved["genre"]) == set(audio.GENRES)
    assert "blues/blues.00000.au" in set(saved["source"])  # relative to the unpacked dl/genres/
    assert (tmp_path / "dl" / "genres").is_dir()


# --------------------------------------------------------------------------- the environment


RUN = """
import sys
from transfer_freezing.data import audio
audio.GTZAN_SHA256 = sys.argv[1]  # the tiny tarball stands in for GTZAN's
from transfer_freezing import cli
sys.exit(cli.main(sys.argv[2:]))
"""


@pytest.mark.slow
def test_tfreeze_data_honours_hf_endpoint_hf_home_and_hf_hub_offline(tmp_path, hub):
    """The Hub's own variables, read by huggingface_hub at import: a fresh process per setting."""
    (tmp_path / "params.yaml").write_text(
        "data: {source: gtzan, download: true, path: dl, clip_seconds: 1.0, min_seconds: 0.5}\n")

    def tfreeze_data(hf_home: str, offline: bool) -> subprocess.CompletedProcess:
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HOME": str(tmp_path / hf_home),
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_OFFLINE": "1" if offline else "0"}
        env.pop("HF_HUB_CACHE", None)
        shutil.rmtree(tmp_path / "dl", ignore_errors=True)
        return subprocess.run([sys.executable, "-c", RUN, SHA, "data"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)

    online = tfreeze_data("hf", offline=False)
    assert online.returncode == 0, online.stderr
    assert [b.name for b in blobs(tmp_path / "hf" / "hub")] == [SHA]  # $HF_HOME/hub is the cache
    assert (tmp_path / "data" / "raw" / "manifest.csv").is_file()
    hub.requests.clear()

    warm = tfreeze_data("hf", offline=True)
    cold = tfreeze_data("cold", offline=True)

    assert warm.returncode == 0, warm.stderr
    assert hub.requests == []
    assert cold.returncode == 2
    lines = cold.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in cold.stderr
    assert lines[0].startswith("tfreeze data: error: HF_HUB_OFFLINE=1 and GTZAN")
    print(lines[0])

