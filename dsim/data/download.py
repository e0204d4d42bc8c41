"""Fetching published dataset files: checksummed and atomic, so many processes may race.

Every node process may call ``load_dataset(..., download=True)`` at the same moment (the
DecentralizePy crash users hit). Each download streams into its own temporary file in the
destination folder, is checked against the published MD5 and only then ``os.replace``-d onto
the final name: readers see either no file or a complete, verified one, never a partial one.

Set ``DSIM_DATA_MIRROR=URL`` to fetch ``URL/<dataset>/<file>`` instead of the official
mirrors (a local copy, or ``python -m http.server`` run in a data folder).
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from dsim.errors import DsimError

MIRROR_ENV = "DSIM_DATA_MIRROR"
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

_MD5_CACHE: dict[tuple[str, int, int, int], str] = {}


def file_md5(path: Path) -> str:
    """MD5 of a file, cached per (path, size, mtime, inode) so repeated loads cost a stat."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    cached = _MD5_CACHE.get(key)
    if cached is None:
        digest = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        cached = _MD5_CACHE[key] = digest.hexdigest()
    return cached


def mirrors(dataset: str) -> list[str]:
    """Base URLs to try in order: the DSIM_DATA_MIRROR override alone, else the official ones."""
    override = os.environ.get(MIRROR_ENV, "").strip()
    if override:
        return [f"{override.rstrip('/')}/{dataset}/"]
    return list(MIRRORS[dataset])


def download(url: str, dest: str | Path, md5: str, *, timeout: float = 60.0) -> Path:
    """Fetch `url` to `dest` unless a file with `md5` is already there; return `dest`.

    On a network error or a checksum mismatch nothing is left behind and DsimError says why.
    """
    dest = Path(dest)
    if dest.is_file() and file_md5(dest) == md5:
        return dest
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise DsimError(f"download: only http(s) URLs are fetched, not {url!r}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp: Path | None = Path(tmp_name)
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=timeout) as response:
                    for chunk in iter(lambda: response.read(1 << 20), b""):
                        digest.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as exc:
                raise DsimError(f"download of {url} failed: HTTP {exc.code} {exc.reason}") from exc
            except (OSError, http.client.HTTPException, ValueError) as exc:
                reason = getattr(exc, "reason", None) or exc
                raise DsimError(f"download of {url} failed: {reason}") from exc
            out.flush()
            os.fsync(out.fileno())
        got = digest.hexdigest()
        if got != md5:
            raise DsimError(
                f"download of {url}: MD5 {got} does not match the published {md5}; nothing was saved"
            )
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a data file is shared
        os.replace(tmp, dest)
        tmp = None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return dest


def fetch(dataset: str, filename: str, dest: Path, md5: str) -> Path:
    """Download `filename` of `dataset` to `dest`, trying each mirror in turn."""
    errors = []
    for base in mirrors(dataset):
        url = base + filename
        sys.stderr.write(f"dsim: downloading {url} -> {dest}\n")
        try:
            return download(url, dest, md5)
        except DsimError as exc:
            errors.append(str(exc))
    raise DsimError(f"{dataset}: could not download {filename}: {'; '.join(errors)}")
