"""Image datasets read straight from their published files, identically on every node.

No data travels to set up an experiment: each node process calls :func:`load_dataset` and
must end up with bit-identical tensors, so every known file is checked against its
published MD5 (torchvision's list) and the dataset carries ``files_digest`` (sha256 over
those MD5s) for the start-up fingerprint. Loads are cached per process because several
nodes usually share one. The returned tensors are shared between callers: never modify
them in place.

Layouts searched under ``data_dir`` (first folder holding any of the files wins):
``DIR/<name>/``, torchvision's ``DIR/MNIST/raw/`` / ``DIR/FashionMNIST/raw/``, then
``DIR`` itself. CIFAR-10: the extracted ``cifar-10-batches-py/`` folder (in ``DIR/cifar10/``
or ``DIR``) or the ``cifar-10-python.tar.gz`` archive (read in memory, never extracted).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dsim.data import download as dl
from dsim.data.options import DATASETS
from dsim.errors import DsimError

MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
}
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
CIFAR10_ARCHIVE = ("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")
CIFAR10_BATCHES = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
}
_IDX = {  # name -> (files, torchvision folder, train count, test count, mean, std)
    "mnist": (MNIST_FILES, "MNIST", 60000, 10000, (0.1307,), (0.3081,)),
    "fashion-mnist": (FASHION_MNIST_FILES, "FashionMNIST", 60000, 10000, (0.2861,), (0.3530,)),
}
_KNOWN_MD5 = {md5: (ds, f) for ds, (files, *_) in _IDX.items() for f, md5 in files.items()}
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2023, 0.1994, 0.2010)
SYNTHETIC_CLASSES = 10
SYNTHETIC_SHAPE = (1, 16, 16)
SYNTHETIC_PER_CLASS = (200, 50)  # train, test
SYNTHETIC_NOISE = 1.5


@dataclass(frozen=True, eq=False)
class Dataset:
    """A normalised train/test split: x float32 (N, C, H, W), y int64."""

    name: str
    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    image_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    files_digest: str


def load_dataset(
    name: str, data_dir: str | Path | None = None, *, download: bool = False, seed: int = 0
) -> Dataset:
    """Load `name` (one of DATASETS); `seed` only shapes the generated `synthetic` set.

    `digits` (scikit-learn's bundled 8x8 digits) and `synthetic` need no files; the others
    are read from `data_dir`, fetched first into `data_dir/<name>/` when `download` is set.
    """
    if name not in DATASETS:
        raise DsimError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASETS)}")
    if name == "digits":
        return _digits()
    if name == "synthetic":
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise DsimError(f"synthetic dataset seed must be an integer >= 0, got {seed!r}")
        return _synthetic(seed)
    root = _root(name, data_dir, download)
    if name == "cifar10":
        location = _locate_cifar10(root, download)
    else:
        location = _locate_idx(name, root, download)
    return _load_files(name, str(location), _stat_key(name, location))


def clear_cache() -> None:
    """Forget every cached dataset and MD5 (tests; long-lived processes switching data)."""
    _digits.cache_clear()
    _synthetic.cache_clear()
    _load_files.cache_clear()
    dl._MD5_CACHE.clear()


# ---------------------------------------------------------------- checksums

def verify_file(path: Path, expected_md5: str) -> str:
    """Return the file's MD5, or raise naming the file when it differs from `expected_md5`."""
    got = dl.file_md5(path)
    if got != expected_md5:
        raise _mismatch(str(path), got, expected_md5)
    return got


def _mismatch(source: str, got: str, expected: str) -> DsimError:
    other = _KNOWN_MD5.get(got)
    why = f"it is {other[0]}'s {other[1]}" if other else "corrupt, truncated or altered file"
    return DsimError(
        f"{source}: MD5 {got} does not match the published {expected} ({why}); "
        "delete it and fetch it again (--download)"
    )


def _digest(md5s: Mapping[str, str]) -> str:
    """sha256 over the files' content MD5s: the same data gives the same digest in any layout."""
    text = "".join(f"{name} {md5}\n" for name, md5 in md5s.items())
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- locating files


def _root(name: str, data_dir: str | Path | None, download: bool) -> Path:
    if data_dir is None or str(data_dir) == "":
        what = "--data-dir DIR --download to fetch them" if download else "--data-dir DIR"
        raise DsimError(
            f"dataset {name!r} is read from its files: pass {what} (only digits and synthetic "
            "need no files)"
        )
    return Path(data_dir).expanduser()


def _missing(name: str, filename: str, searched: list[Path], root: Path) -> DsimError:
    return DsimError(
        f"{name}: file {filename} not found (searched {', '.join(map(str, searched))}); pass "
        f"--data-dir DIR holding the files or add --download to fetch them into {root / name}"
    )


def _idx_dirs(name: str, root: Path) -> list[Path]:
    return [root / name, root / _IDX[name][1] / "raw", root]


def _locate_idx(name: str, root: Path, download: bool) -> Path:
    files = _IDX[name][0]
    searched = _idx_dirs(name, root)
    folder = next((d for d in searched if any((d / f).is_file() for f in files)), None)
    target = folder if folder is not None else root / name
    missing = [f for f in files if not (target / f).is_file()]
    if missing and not download:
        raise _missing(name, missing[0], searched, root)
    for filename in missing:
        dl.fetch(name, filename, target / filename, files[filename])
    return target


def _cifar_places(root: Path) -> tuple[list[Path], list[Path]]:
    folders = [root / "cifar10" / "cifar-10-batches-py", root / "cifar-10-batches-py",
               root / "cifar10", root]
    archives = [root / "cifar10" / CIFAR10_ARCHIVE[0], root / CIFAR10_ARCHIVE[0]]
    return folders, archives


def _locate_cifar10(root: Path, download: bool) -> Path:
    """An extracted batches folder wins over an archive; --download fetches the archive."""
    folders, archives = _cifar_places(root)
    folder = next((d for d in folders if any((d / f).is_file() for f in CIFAR10_BATCHES)), None)
    if folder is not None:
        missing = [f for f in CIFAR10_BATCHES if not (folder / f).is_file()]
        if missing:
            raise _missing("cifar10", missing[0], [folder], root)
        return folder
    archive = next((a for a in archives if a.is_file()), None)
    if archive is not None:
        return archive
    if not download:
        raise _missing("cifar10", f"{CIFAR10_ARCHIVE[0]} (or cifar-10-batches-py/)",
                       folders + archives, root)
    return dl.fetch("cifar10", CIFAR10_ARCHIVE[0], archives[0], CIFAR10_ARCHIVE[1])


def _stat_key(name: str, location: Path) -> tuple[tuple[str, int, int], ...]:
    """Cache key part that changes whenever a file is replaced or touched."""
    if location.is_file():
        paths = [location]
    elif name == "cifar10":
        paths = [location / f for f in CIFAR10_BATCHES]
    else:
        paths = [location / f for f in _IDX[name][0]]
    return tuple((p.name, (s := p.stat()).st_size, s.st_mtime_ns) for p in paths)


# ---------------------------------------------------------------- readers


@functools.lru_cache(maxsize=4)
def _load_files(name: str, location: str, stat_key: tuple[Any, ...]) -> Dataset:
    del stat_key  # part of the cache key only
    if name == "cifar10":
        train_x, train_y, test_x, test_y, digest = read_cifar10(Path(location))
        mean, std = CIFAR10_MEAN, CIFAR10_STD
    else:
        files, _, n_train, n_test, mean, std = _IDX[name]
        train_x, train_y, test_x, test_y, digest = read_idx_folder(
            Path(location), files, counts=(n_train, n_test))
    return Dataset(
        name=name, train_x=_normalise(train_x, mean, std), train_y=torch.from_numpy(train_y),
        test_x=_normalise(test_x, mean, std), test_y=torch.from_numpy(test_y),
        num_classes=10, image_shape=tuple(train_x.shape[1:]), mean=mean, std=std,
        files_digest=digest,
    )


def _normalise(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (N, C, H, W) -> float32 in [0, 1] -> per-channel (x - mean) / std."""
    x = torch.from_numpy(images.astype(np.float32))
    x.mul_(1.0 / 255.0)
    x.sub_(torch.tensor(mean).view(1, -1, 1, 1)).div_(torch.tensor(std).view(1, -1, 1, 1))
    return x


def parse_idx(raw: bytes, *, images: bool, source: str) -> np.ndarray:
    """Decode one uncompressed IDX file: images (N, rows, cols) or labels (N,), uint8."""
    header, magic_want = (16, 0x803) if images else (8, 0x801)
    if len(raw) < header:
        raise DsimError(f"{source}: {len(raw)} bytes, shorter than the {header}-byte IDX header")
    magic, count = struct.unpack(">II", raw[:8])
    if magic != magic_want:
        raise DsimError(
            f"{source}: IDX magic number {magic:#010x}, expected {magic_want:#010x} "
            f"({'images' if images else 'labels'})"
        )
    shape = (count, *struct.unpack(">II", raw[8:16])) if images else (count,)
    want = header + int(np.prod(shape))
    if len(raw) != want:
        raise DsimError(f"{source}: {len(raw)} bytes but its IDX header promises {want}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _gunzip(path: Path) -> bytes:
    try:
        return gzip.decompress(path.read_bytes())
    except (OSError, EOFError, zlib.error) as exc:
        raise DsimError(f"{path}: not a readable gzip file ({exc})") from exc


def read_idx_folder(
    folder: Path, checksums: Mapping[str, str], *, counts: tuple[int, int] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Read MNIST-style train/t10k IDX .gz files after checking each one's MD5.

    Returns uint8 images (N, 1, 28, 28), int64 labels for train and test, and the digest.
    """
    md5s = {f: verify_file(folder / f, md5) for f, md5 in checksums.items()}
    out: list[np.ndarray] = []
    for split, count in zip(("train", "t10k"), counts or (None, None), strict=True):
        img_file = folder / f"{split}-images-idx3-ubyte.gz"
        lab_file = folder / f"{split}-labels-idx1-ubyte.gz"
        images = parse_idx(_gunzip(img_file), images=True, source=str(img_file))
        labels = parse_idx(_gunzip(lab_file), images=False, source=str(lab_file))
        if images.shape[1:] != (28, 28):
            raise DsimError(f"{img_file}: images are {images.shape[1:]}, expected 28x28")
        if len(images) != len(labels):
            raise DsimError(f"{img_file}: {len(images)} images but {lab_file.name} has {len(labels)} labels")
        if count is not None and len(images) != count:
            raise DsimError(f"{img_file}: {len(images)} images, expected {count}")
        if labels.size and labels.max() > 9:
            raise DsimError(f"{lab_file}: label {labels.max()} outside 0..9")
        out += [images[:, None], labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3], _digest(md5s)


def _safe_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(*args)
    if dtype.hasobject:
        raise pickle.UnpicklingError("refusing an object dtype")
    return dtype


def _numpy_reconstruct() -> Callable[..., Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


_PICKLE_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct(),
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _safe_dtype,
}


class _BatchUnpickler(pickle.Unpickler):
    """Builds only builtins plus plain numpy arrays: a CIFAR batch needs nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _PICKLE_ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def parse_cifar_batch(raw: bytes, *, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 python batch (a pickled dict of 'data' N x 3072 uint8, 'labels')."""
    try:
        obj = _BatchUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except Exception as exc:  # malformed or hostile data of any kind: one clear line
        raise DsimError(f"{source}: not a CIFAR-10 batch ({exc})") from exc
    if not isinstance(obj, dict):
        raise DsimError(f"{source}: not a CIFAR-10 batch (a {type(obj).__name__}, not a dict)")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in obj.items()}
    data, labels = entry.get("data"), entry.get("labels")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * 32 * 32):
        raise DsimError(f"{source}: 'data' is not an N x 3072 uint8 array")
    if not (isinstance(labels, list) and len(labels) == len(data)
            and all(type(v) is int and 0 <= v < 10 for v in labels)):
        raise DsimError(f"{source}: 'labels' is not a list of {len(data)} class numbers 0..9")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def _cifar_raw(location: Path, checksums: Mapping[str, str],
               archive_md5: str | None) -> tuple[dict[str, bytes], dict[str, str]]:
    """Batch bytes and MD5s from an extracted folder or, in memory, from the tar.gz archive."""
    raws: dict[str, bytes] = {}
    if location.is_dir():
        for name, md5 in checksums.items():
            path = location / name
            if not path.is_file():
                raise DsimError(f"cifar10: file {path} not found")
            verify_file(path, md5)
            raws[name] = path.read_bytes()
    else:
        if archive_md5 is not None:
            verify_file(location, archive_md5)
        try:
            with tarfile.open(location, "r:gz") as tar:
                for member in tar:
                    base = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and base in checksums and base not in raws:
                        raws[base] = tar.extractfile(member).read()  # type: ignore[union-attr]
        except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
            raise DsimError(f"{location}: unreadable archive ({exc}); delete it and fetch it again") from exc
        absent = [n for n in checksums if n not in raws]
        if absent:
            raise DsimError(f"{location}: archive lacks {', '.join(absent)}")
    md5s = {n: hashlib.md5(raws[n], usedforsecurity=False).hexdigest() for n in checksums}
    for name, md5 in checksums.items():
        if md5s[name] != md5:
            raise _mismatch(f"{location}:{name}" if location.is_file() else str(location / name),
                            md5s[name], md5)
    return raws, md5s


def read_cifar10(
    location: Path, checksums: Mapping[str, str] = CIFAR10_BATCHES,
    archive_md5: str | None = CIFAR10_ARCHIVE[1],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, str]:
    """Read the CIFAR-10 python batches (folder or archive); `test_batch` is the test set.

    The digest covers the batch MD5s, so the folder and the archive give the same one.
    """
    raws, md5s = _cifar_raw(location, checksums, archive_md5)
    train = [parse_cifar_batch(raws[n], source=n) for n in checksums if n != "test_batch"]
    test_x, test_y = parse_cifar_batch(raws["test_batch"], source="test_batch")
    return (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
            test_x, test_y, _digest(md5s))


# ---------------------------------------------------------------- built-in datasets


def _stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    test: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test.append(idx[: int(round(test_fraction * len(idx)))])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return train_idx, test_idx


def _from_float(name: str, x: np.ndarray, y: np.ndarray, split: tuple[np.ndarray, np.ndarray],
                digest: str) -> Dataset:
    """Build a one-channel Dataset whose mean/std are measured on its own train part."""
    train_idx, test_idx = split
    mean, std = round(float(x[train_idx].mean()), 4), round(float(x[train_idx].std()), 4)
    norm = torch.from_numpy(((x - mean) / std).astype(np.float32))
    labels = torch.from_numpy(y.astype(np.int64))
    tr, te = torch.from_numpy(train_idx), torch.from_numpy(test_idx)
    return Dataset(name=name, train_x=norm[tr], train_y=labels[tr], test_x=norm[te], test_y=labels[te],
                   num_classes=int(y.max()) + 1, image_shape=tuple(x.shape[1:]), mean=(mean,),
                   std=(std,), files_digest=digest)


@functools.lru_cache(maxsize=1)
def _digits() -> Dataset:
    """scikit-learn's 1797 8x8 digits, 0..16 scaled to 0..1; fixed stratified 80/20 split."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = (np.asarray(bunch.data, dtype=np.float64) / 16.0).reshape(-1, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    digest = hashlib.sha256(x.astype(np.float32).tobytes() + y.tobytes()).hexdigest()
    return _from_float("digits", x, y, _stratified_split(y, 0.2, seed=0), digest)


@functools.lru_cache(maxsize=4)
def _synthetic(seed: int) -> Dataset:
    """10 classes of 1x16x16 images: a blocky per-class template plus Gaussian noise.

    Templates and samples come from numpy Generator(seed), so the set is a pure function of
    the seed; a nearest-mean classifier already separates the classes well.
    """
    rng = np.random.default_rng(seed)
    c, h, w = SYNTHETIC_SHAPE
    coarse = rng.normal(size=(SYNTHETIC_CLASSES, c, h // 4, w // 4))
    templates = np.kron(coarse, np.ones((1, 1, 4, 4)))
    n_train, n_test = (SYNTHETIC_CLASSES * k for k in SYNTHETIC_PER_CLASS)
    y = np.concatenate([rng.permutation(np.arange(n_train) % SYNTHETIC_CLASSES),
                        rng.permutation(np.arange(n_test) % SYNTHETIC_CLASSES)])
    x = (templates[y] + SYNTHETIC_NOISE * rng.normal(size=(len(y), c, h, w))).astype(np.float32)
    digest = hashlib.sha256(x.tobytes() + y.tobytes()).hexdigest()
    split = (np.arange(n_train), np.arange(n_train, n_train + n_test))
    return _from_float("synthetic", x.astype(np.float64), y, split, digest)

