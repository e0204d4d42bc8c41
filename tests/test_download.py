"""Downloads from a real local HTTP server: checksums, atomic replace, racing processes."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from dsim.data.datasets import MNIST_FILES, load_dataset
from dsim.data.download import MIRROR_ENV, download, fetch, mirrors
from dsim.errors import DsimError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MNIST_DIR = SHARED / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not all((MNIST_DIR / f).is_file() for f in MNIST_FILES),
    reason=f"real MNIST files not present in {MNIST_DIR} (only on the development machine)",
)


class Server:
    """A real HTTP server on 127.0.0.1 serving `root`; counts GETs; can hold replies at a barrier."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        self.barrier: threading.Barrier | None = None
        server = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                server.requests.append(self.path)
                if server.barrier is not None:
                    server.barrier.wait()  # every racing client is connected before any body
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "www"
    root.mkdir()
    server = Server(root)
    yield server
    server.close()


def _payload(root: Path, name: str, size: int) -> tuple[bytes, str]:
    data = hashlib.sha256(name.encode()).digest() * (size // 32)
    (root / name).write_bytes(data)
    return data, hashlib.md5(data).hexdigest()


def test_good_download_then_no_refetch(served: Server, tmp_path: Path) -> None:
    data, md5 = _payload(served.root, "blob.bin", 256_000)
    dest = tmp_path / "out" / "blob.bin"
    assert download(f"{served.url}/blob.bin", dest, md5) == dest
    assert dest.read_bytes() == data and dest.stat().st_mode & 0o777 == 0o644
    assert list(dest.parent.iterdir()) == [dest]
    download(f"{served.url}/blob.bin", dest, md5)
    assert served.requests == ["/blob.bin"]  # a verified file is not fetched again


def test_checksum_mismatch_leaves_nothing(served: Server, tmp_path: Path) -> None:
    _, md5 = _payload(served.root, "blob.bin", 64_000)
    out = tmp_path / "out"
    with pytest.raises(DsimError, match=f"MD5 {md5} does not match the published 0{{32}}; nothing was saved"):
        download(f"{served.url}/blob.bin", out / "blob.bin", "0" * 32)
    assert list(out.iterdir()) == []


def test_http_and_scheme_errors_are_clear(served: Server, tmp_path: Path) -> None:
    with pytest.raises(DsimError, match="HTTP 404"):
        download(f"{served.url}/absent.bin", tmp_path / "absent.bin", "0" * 32)
    assert list(tmp_path.iterdir()) == [tmp_path / "www"]
    with pytest.raises(DsimError, match="only http"):
        download(f"file://{tmp_path}/x", tmp_path / "x", "0" * 32)


_RACER = "import sys; from dsim.data.download import download; download(sys.argv[1], sys.argv[2], sys.argv[3])"


def test_two_processes_downloading_at_once_leave_one_valid_file(served: Server, tmp_path: Path) -> None:
    data, md5 = _payload(served.root, "big.bin", 4_000_000)
    served.barrier = threading.Barrier(2, timeout=60)
    dest = tmp_path / "shared" / "big.bin"
    procs = [subprocess.Popen([sys.executable, "-c", _RACER, f"{served.url}/big.bin", str(dest), md5],
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    assert served.requests == ["/big.bin", "/big.bin"]  # both really downloaded, concurrently
    assert hashlib.md5(dest.read_bytes()).hexdigest() == md5 and dest.stat().st_size == len(data)
    assert list(dest.parent.iterdir()) == [dest]  # no temporary file left behind


def test_mirror_override_and_fetch(served: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (served.root / "mnist").mkdir()
    _, md5 = _payload(served.root / "mnist", "file.gz", 1000)
    monkeypatch.setenv(MIRROR_ENV, served.url + "/")
    assert mirrors("mnist") == [f"{served.url}/mnist/"]
    assert fetch("mnist", "file.gz", tmp_path / "got" / "file.gz", md5).is_file()
    with pytest.raises(DsimError, match="mnist: could not download nope.gz: .*HTTP 404"):
        fetch("mnist", "nope.gz", tmp_path / "got" / "nope.gz", md5)
    monkeypatch.delenv(MIRROR_ENV)
    assert mirrors("mnist")[0] == "https://ossci-datasets.s3.amazonaws.com/mnist/"


@needs_mnist
def test_load_dataset_downloads_only_missing_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    server = Server(SHARED / "data")  # serves mnist/<file> exactly like a mirror
    try:
        monkeypatch.setenv(MIRROR_ENV, server.url)
        target = tmp_path / "mnist"
        target.mkdir()
        for name in list(MNIST_FILES)[:3]:
            (target / name).write_bytes((MNIST_DIR / name).read_bytes())
        ds = load_dataset("mnist", tmp_path, download=True)
        assert server.requests == ["/mnist/t10k-labels-idx1-ubyte.gz"]
        assert ds.files_digest == load_dataset("mnist", SHARED / "data").files_digest
        assert sorted(p.name for p in target.iterdir()) == sorted(MNIST_FILES)
        fresh = tmp_path / "fresh"
        load_dataset("mnist", fresh, download=True)
        assert sorted(p.name for p in (fresh / "mnist").iterdir()) == sorted(MNIST_FILES)
    finally:
        server.close()


def test_download_needs_a_data_dir() -> None:
    with pytest.raises(DsimError, match="--data-dir DIR --download"):
        load_dataset("fashion-mnist", None, download=True)
