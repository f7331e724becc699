"""The Python client against a real server process on the default model.

The server binary comes from SIMSIAM_SERVER_BIN, else the project's target/release/server
(`make test` builds it); the model is models/default.
"""
import asyncio
import base64
import glob
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image

from simsiam_client import AsyncClient, Client, InsufficientStorage, SimsiamError

ROOT = Path(__file__).resolve().parents[3]
SERVER = os.environ.get("SIMSIAM_SERVER_BIN", str(ROOT / "target/release/server"))
MODEL = ROOT / "models/default"


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The server binary on a free port, stopped at the end."""

    def __init__(self, env=None, gallery=None):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.gallery = gallery or tempfile.mkdtemp()
        self.log = tempfile.NamedTemporaryFile(suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [SERVER, "--model", str(MODEL), "--port", str(self.port), "--gallery-dir", self.gallery],
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=subprocess.DEVNULL,
            stderr=self.log,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                urllib.request.urlopen(self.url + "/healthz", timeout=1)
                return
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("the server did not start: " + Path(self.log.name).read_text())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def server():
    if not os.path.exists(SERVER):
        pytest.fail(f"no server binary at {SERVER}: build it (cargo build --release -p simsiam-server)")
    s = Server()
    yield s
    s.stop()


@pytest.fixture(scope="session")
def dog():
    """A real dog photo from the shared data, or a generated JPEG where it is absent."""
    found = sorted(glob.glob(str(ROOT.parent / "shared/data/stanford-dogs/Images/*/*.jpg")))
    if found:
        return found[0]
    path = Path(tempfile.mkdtemp()) / "generated.jpg"
    Image.new("RGB", (160, 120), (180, 120, 60)).save(path, quality=90)
    return str(path)


def test_every_route_answers_with_typed_results(server, dog):
    with Client(server.url) as c:
        top = c.classify([dog], top_k=3).results[0]
        assert len(top) == 3
        assert top[0].probability >= top[1].probability >= top[2].probability
        e = c.embed([dog])
        assert e.dim == len(e.embeddings[0]) == 512
        assert abs(sum(x * x for x in e.embeddings[0]) - 1) < 1e-4
        by_image = c.search([dog], k=4).results[0]
        by_vector = c.search(vectors=e.embeddings, k=4).results[0]
        assert [h.id for h in by_image] == [h.id for h in by_vector]
        assert len(by_image) == 4 and by_image[0].score >= by_image[-1].score
        breed = top[0].breed
        assert all(h.breed == breed for h in c.search([dog], k=3, breed=breed).results[0])
        before = c.gallery().total
        added = c.add([dog], ids=["py/rex"], breeds=["Pug"], metadata={"owner": "ann"})
        assert (added.added, added.ids, added.total) == (1, ["py/rex"], before + 1)
        hit = c.search([dog], k=1, breed="Pug").results[0][0]
        assert (hit.id, hit.metadata) == ("py/rex", {"owner": "ann"})
        assert c.gallery().by_breed["Pug"] >= 1
        assert c.delete("py/rex").total == before
        model = c.models()[0]
        assert model.provider in ("cpu", "cuda") and len(model.breeds) == 120
        assert model.dim == e.dim
        info = c.info()
        assert (info.limits.max_images, info.limits.max_k, info.batching["max_batch"]) == (32, 100, 32)


def test_images_may_be_paths_bytes_files_or_pil_images(server, dog):
    with Client(server.url) as c:
        raw = Path(dog).read_bytes()
        with open(dog, "rb") as f:
            from_path, from_bytes, from_file = c.embed([dog, raw, f]).embeddings
        assert from_path == from_bytes == from_file
        # PIL decodes the JPEG itself (another decoder), then the client sends PNG.
        from_pil = c.embed([Image.open(dog)]).embeddings[0]
        cosine = sum(a * b for a, b in zip(from_path, from_pil))
        assert cosine > 0.99, cosine
        with pytest.raises(TypeError):
            c.embed([12])


def test_the_async_client_runs_requests_side_by_side(server, dog):
    async def main():
        async with AsyncClient(server.url) as c:
            results = await asyncio.gather(*[c.classify([dog], top_k=1) for _ in range(8)])
            counts = await c.gallery()
            return results, counts

    results, counts = asyncio.run(main())
    breeds = {r.results[0][0].breed for r in results}
    assert len(breeds) == 1, "the same image, the same answer"
    assert counts.total > 0


def test_server_errors_are_exceptions_with_status_code_and_message(server):
    with Client(server.url) as c:
        with pytest.raises(SimsiamError) as e:
            c.delete("no/such/id")
        assert (e.value.status, e.value.code) == (404, "not_found")
        with pytest.raises(SimsiamError) as e:
            c.embed([b"not an image"])
        assert (e.value.status, e.value.code, e.value.type) == (400, "bad_image", "invalid_request_error")
        assert "image 0" in e.value.message


def test_a_full_queue_is_retried_after_retry_after():
    busy = Server(
        {
            "SIMSIAM_SERVER_BATCHING__QUEUE_CAPACITY": "1",
            "SIMSIAM_SERVER_BATCHING__MAX_BATCH": "1",
            "SIMSIAM_SERVER_LIMITS__MAX_IMAGES": "1",
        }
    )
    try:
        picture = io.BytesIO()
        Image.new("RGB", (200, 150), (90, 140, 200)).save(picture, format="JPEG")
        c = Client(busy.url, retries=30, backoff=0.05)
        errors = []

        def one():
            try:
                c.embed([picture.getvalue()])
            except SimsiamError as e:
                errors.append(e)

        # Bursts until one meets the full queue: whether 12 threads overlap on 2 cores is
        # up to the scheduler, that one of 20 bursts does is not.
        for _ in range(20):
            threads = [threading.Thread(target=one) for _ in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            if c.retried:
                break
        assert not errors, errors
        assert c.retried > 0, "some requests met a full queue and were retried"
        c.close()
    finally:
        busy.stop()


def test_a_full_disk_raises_insufficient_storage_without_retrying(dog):
    """The real server with its gallery on a tmpfs filled to the last byte."""
    if os.geteuid() != 0:
        pytest.skip("the full-disk test mounts a tmpfs, which needs root")
    mnt = tempfile.mkdtemp()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        full = Server(gallery=os.path.join(mnt, "gallery"))
        try:
            with open(os.path.join(mnt, "filler"), "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"\0" * 4096)
                except OSError:
                    pass
            c = Client(full.url, retries=3, backoff=0.01)
            with pytest.raises(InsufficientStorage) as e:
                c.add([dog], ids=["full"])
            assert (e.value.status, e.value.code, e.value.type) == (507, "insufficient_storage", "server_error")
            assert "No space left on device" in e.value.message
            assert c.retried == 0, "a full disk is not retried"
            assert len(c.search([dog], k=2).results[0]) == 2, "searches go on"
            c.close()
        finally:
            full.stop()
    finally:
        subprocess.run(["umount", mnt])


def test_the_command_line(server, dog):
    run = lambda *args: subprocess.run(
        [sys.executable, "-m", "simsiam_client", "--url", server.url, *args],
        capture_output=True,
        text=True,
    )
    out = run("classify", dog, "--top-k", "2")
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["results"][0]) == 2
    out = run("delete", "no/such/id")
    assert out.returncode == 1 and out.stderr.startswith("404 not_found"), out.stderr


def test_api_keys_are_sent():
    keyed = Server({"SIMSIAM_SERVER_AUTH__READ_KEY": "r3ad"})
    try:
        with pytest.raises(SimsiamError) as e:
            Client(keyed.url).models()
        assert e.value.status == 401
        assert Client(keyed.url, api_key="r3ad").models()[0].breeds
    finally:
        keyed.stop()


def test_the_openai_package_gets_the_same_vectors_in_both_encodings(server, dog):
    openai = pytest.importorskip("openai", reason="the openai package is not installed")
    raw = Path(dog).read_bytes()
    reference = Client(server.url).embed([raw]).embeddings[0]
    uri = "data:image/jpeg;base64," + base64.b64encode(raw).decode()
    client = openai.OpenAI(base_url=server.url + "/v1", api_key="unused")
    # Without encoding_format the client asks for base64 and decodes it itself.
    for kwargs in ({}, {"encoding_format": "float"}):
        answer = client.embeddings.create(model="default", input=[uri], **kwargs)
        got = answer.data[0].embedding
        assert len(got) == 512
        assert max(abs(a - b) for a, b in zip(got, reference)) <= 1e-6, kwargs
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="gpt-4", input=[uri])
