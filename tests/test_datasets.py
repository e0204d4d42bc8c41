"""Dataset readers: built-in sets, real MNIST files, layouts, checksums, CIFAR batches."""

from __future__ import annotations

import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dsim.data.datasets import (
    MNIST_FILES,
    clear_cache,
    load_dataset,
    parse_cifar_batch,
    parse_idx,
    read_cifar10,
)
from dsim.data.download import file_md5
from dsim.errors import DsimError

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MNIST_DIR = SHARED / "data" / "mnist"
needs_mnist = pytest.mark.skipif(
    not all((MNIST_DIR / f).is_file() for f in MNIST_FILES),
    reason=f"real MNIST files not present in {MNIST_DIR} (only on the development machine)",
)
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_digits_is_a_stratified_normalised_split() -> None:
    ds = load_dataset("digits")
    assert ds is load_dataset("digits")  # cached per process
    assert len(ds.train_y) + len(ds.test_y) == 1797
    assert ds.train_x.dtype == torch.float32 and ds.train_y.dtype == torch.int64
    assert ds.image_shape == (1, 8, 8) and ds.num_classes == 10
    assert abs(ds.train_x.mean().item()) < 0.01 and abs(ds.train_x.std().item() - 1) < 0.01
    test_share = np.bincount(ds.test_y.numpy()) / (
        np.bincount(ds.test_y.numpy()) + np.bincount(ds.train_y.numpy()))
    assert np.all(np.abs(test_share - 0.2) < 0.01)  # every class split 80/20


def test_synthetic_is_a_learnable_function_of_the_seed() -> None:
    a, b, c = load_dataset("synthetic", seed=3), load_dataset("synthetic", seed=3), load_dataset("synthetic", seed=4)
    assert a.files_digest == b.files_digest != c.files_digest
    clear_cache()
    fresh = load_dataset("synthetic", seed=3)
    assert fresh is not a and torch.equal(fresh.train_x, a.train_x) and fresh.files_digest == a.files_digest
    means = torch.stack([a.train_x[a.train_y == k].mean(0) for k in range(a.num_classes)])
    dist = torch.cdist(a.test_x.flatten(1), means.flatten(1))
    accuracy = (dist.argmin(1) == a.test_y).float().mean().item()
    assert accuracy > 0.9


def test_unknown_dataset_and_missing_data_dir_are_clear() -> None:
    with pytest.raises(DsimError, match="choose one of: digits, mnist"):
        load_dataset("imagenet")
    with pytest.raises(DsimError, match="--data-dir DIR"):
        load_dataset("mnist")


@needs_mnist
def test_real_mnist_loads_normalised() -> None:
    ds = load_dataset("mnist", SHARED / "data")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert np.bincount(ds.train_y.numpy()).tolist() == MNIST_TRAIN_COUNTS
    assert abs(ds.train_x.mean().item()) < 0.01 and abs(ds.train_x.std().item() - 1) < 0.01
    assert ds.mean == (0.1307,) and ds.std == (0.3081,)
    assert load_dataset("mnist", SHARED / "data") is ds


@needs_mnist
def test_mnist_layouts_give_the_same_digest(tmp_path: Path) -> None:
    flat, torchvision = tmp_path / "flat", tmp_path / "tv" / "MNIST" / "raw"
    for folder in (flat, torchvision):
        shutil.copytree(MNIST_DIR, folder)
    reference = load_dataset("mnist", SHARED / "data").files_digest
    assert load_dataset("mnist", flat).files_digest == reference
    assert load_dataset("mnist", tmp_path / "tv").files_digest == reference


@needs_mnist
def test_missing_file_names_file_folders_and_fix(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    for name in MNIST_FILES:
        if name != "t10k-labels-idx1-ubyte.gz":
            shutil.copy(MNIST_DIR / name, tmp_path / "mnist" / name)
    with pytest.raises(DsimError) as err:
        load_dataset("mnist", tmp_path)
    message = str(err.value)
    assert "t10k-labels-idx1-ubyte.gz not found" in message
    assert str(tmp_path / "MNIST" / "raw") in message and "--download" in message


def _broken_copy(tmp_path: Path, name: str, how: str) -> Path:
    folder = tmp_path / "mnist"
    shutil.copytree(MNIST_DIR, folder)
    path = folder / name
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return path


@needs_mnist
@pytest.mark.parametrize("how", ["truncate", "alter"])
@pytest.mark.parametrize("name", ["train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz"])
def test_corrupt_file_is_named_with_its_md5(tmp_path: Path, name: str, how: str) -> None:
    path = _broken_copy(tmp_path, name, how)
    with pytest.raises(DsimError) as err:
        load_dataset("mnist", tmp_path)
    message = str(err.value)
    assert str(path) in message and "does not match the published" in message
    assert MNIST_FILES[name] in message and "delete it" in message


@needs_mnist
def test_mnist_files_where_fashion_is_expected_say_so(tmp_path: Path) -> None:
    shutil.copytree(MNIST_DIR, tmp_path / "fashion-mnist")
    with pytest.raises(DsimError, match="it is mnist's"):
        load_dataset("fashion-mnist", tmp_path)


def _idx(magic: int, dims: tuple[int, ...], payload: bytes) -> bytes:
    return struct.pack(f">I{len(dims)}I", magic, *dims) + payload


def test_parse_idx_validates_magic_and_sizes() -> None:
    images = parse_idx(_idx(0x803, (2, 3, 4), bytes(range(24))), images=True, source="x")
    assert images.shape == (2, 3, 4) and images[1, 2, 3] == 23
    assert parse_idx(_idx(0x801, (3,), b"\x01\x02\x03"), images=False, source="x").tolist() == [1, 2, 3]
    with pytest.raises(DsimError, match=r"f\.idx: IDX magic number 0x00000801, expected 0x00000803"):
        parse_idx(_idx(0x801, (2, 3, 4), bytes(24)), images=True, source="f.idx")
    with pytest.raises(DsimError, match="23 bytes but its IDX header promises 40"):
        parse_idx(_idx(0x803, (2, 3, 4), bytes(7)), images=True, source="f.idx")
    with pytest.raises(DsimError, match="shorter than the 8-byte IDX header"):
        parse_idx(b"\x00\x00\x08", images=False, source="f.idx")


# ------------------------------------------------------------------ CIFAR-10


def _py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """Bytes laid out as the published batches: Python 2 cPickle, protocol 2, str strings."""

    def s(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    def i(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + i(0) + b"\x85"
             + s(b"b") + b"\x87R" + b"(" + i(1) + i(data.shape[0]) + i(data.shape[1]) + b"\x86"
             + b"cnumpy\ndtype\n" + s(b"u1") + i(0) + i(1) + b"\x87R"
             + b"(" + i(3) + s(b"|") + b"NNN" + i(-1) + i(-1) + i(0) + b"tb"
             + b"\x89" + s(data.tobytes()) + b"tb")
    names = b"](" + b"".join(s(b"img_%d.png" % k) for k in range(len(labels))) + b"e"
    return (b"\x80\x02}(" + s(b"batch_label") + s(b"fake batch") + s(b"data") + array
            + s(b"labels") + b"](" + b"".join(i(v) for v in labels) + b"e"
            + s(b"filenames") + names + b"u.")


def _fake_cifar(root: Path, per_batch: int = 6) -> tuple[Path, dict[str, str], np.ndarray]:
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    first = None
    for name in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        first = data if first is None else first
        (folder / name).write_bytes(_py2_batch(data, rng.integers(0, 10, per_batch).tolist()))
    return folder, {p.name: file_md5(p) for p in sorted(folder.iterdir())}, first


def test_cifar_reader_folder_and_archive_agree(tmp_path: Path) -> None:
    folder, md5s, first = _fake_cifar(tmp_path)
    checksums = {n: md5s[n] for n in [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]}
    train_x, train_y, test_x, test_y, digest = read_cifar10(folder, checksums, archive_md5=None)
    assert train_x.shape == (30, 3, 32, 32) and test_x.shape == (6, 3, 32, 32)
    assert train_y.dtype == np.int64 and len(train_y) == 30 and len(test_y) == 6
    assert np.array_equal(train_x[0], first[0].reshape(3, 32, 32))  # R, G, B planes
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    from_archive = read_cifar10(archive, checksums, archive_md5=file_md5(archive))
    assert from_archive[4] == digest and np.array_equal(from_archive[0], train_x)
    with pytest.raises(DsimError, match="does not match the published"):
        read_cifar10(archive, checksums, archive_md5="0" * 32)


def test_cifar_load_checks_published_md5s_and_names_missing(tmp_path: Path) -> None:
    with pytest.raises(DsimError, match=r"cifar-10-python\.tar\.gz \(or cifar-10-batches-py/\) not found"):
        load_dataset("cifar10", tmp_path)
    folder, _, _ = _fake_cifar(tmp_path)
    with pytest.raises(DsimError) as err:
        load_dataset("cifar10", tmp_path)
    assert str(folder / "data_batch_1") in str(err.value) and "c99cafc152244af753f735de768cd75f" in str(err.value)


def test_cifar_unpickler_refuses_code_and_objects(tmp_path: Path) -> None:
    marker = tmp_path / "created-by-pickle"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    with pytest.raises(DsimError, match=r"refusing to load (io|builtins)\.open"):
        parse_cifar_batch(pickle.dumps({"data": Evil(), "labels": []}), source="evil")
    assert not marker.exists()
    objects = np.array([1, None], dtype=object)
    with pytest.raises(DsimError, match="object dtype"):
        parse_cifar_batch(pickle.dumps({"data": objects, "labels": [0, 1]}, protocol=4), source="obj")
    with pytest.raises(DsimError, match="not a CIFAR-10 batch"):
        parse_cifar_batch(b"\x80\x04garbage", source="junk")
    good = np.zeros((2, 3072), np.uint8)
    x, y = parse_cifar_batch(pickle.dumps({"data": good, "labels": [3, 4]}, protocol=4), source="py3")
    assert x.shape == (2, 3, 32, 32) and y.tolist() == [3, 4]
    with pytest.raises(DsimError, match="'labels' is not a list of 2 class numbers"):
        parse_cifar_batch(pickle.dumps({"data": good, "labels": [3, 12]}), source="bad")
