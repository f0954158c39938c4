"""Downloading the official CIFAR-10 archive: streamed with a progress bar, checksummed, safely extracted.

Only `data.ensure_cifar10` calls this, when the data folder is missing.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
import zlib
from http.client import HTTPException
from pathlib import Path, PurePosixPath

from .errors import DataError, one_line

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
DOWNLOAD_TIMEOUT_S = 60.0                   # per blocking socket operation, not for the whole file


def download(url: str, out, *, progress: bool, timeout: float) -> str:
    """Stream `url` into the binary file `out`; return the MD5 hex digest of what was received."""
    from tqdm import tqdm   # only needed when a download actually happens

    hint = (f"pass --data-dir or set MLP_EXP_DATA_DIR to a folder containing cifar-10-batches-py/, "
            f"or download {CIFAR10_URL} by hand and extract it there")
    digest = hashlib.md5()
    received = 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            with tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
                      disable=not progress, desc="cifar-10-python.tar.gz", leave=False) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as err:
        what = "not found (HTTP 404)" if err.code == 404 else f"failed with HTTP {err.code} {err.reason}"
        raise DataError(f"download of {url} {what}; {hint}") from err
    except urllib.error.URLError as err:
        raise DataError(f"cannot reach {url} ({one_line(err.reason, limit=None)}); offline? {hint}") from err
    except TimeoutError as err:
        raise DataError(f"download of {url} timed out after {timeout:g}s without data; {hint}") from err
    except (HTTPException, ConnectionError) as err:
        raise DataError(f"download of {url} was cut off after {received} bytes "
                        f"({type(err).__name__}); re-run to retry, or {hint}") from err
    # urllib returns a short body silently when the server closes early
    if expected is not None and received != expected:
        raise DataError(f"download of {url} is truncated ({received} of {expected} bytes); "
                        f"re-run to retry, or {hint}")
    return digest.hexdigest()


def safe_extract(archive: Path, dest: Path, url: str) -> None:
    """Extract regular files and folders of `archive` into `dest`, refusing anything that could escape it.

    Absolute names, `..`, links, devices and anything resolving outside `dest`
    are rejected (path traversal). Files are written by hand, so tar metadata
    (owners, modes, times) is never applied.
    """
    root = os.path.realpath(dest)
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = PurePosixPath(member.name)
                target = os.path.realpath(os.path.join(root, member.name))
                unsafe = (name.is_absolute() or ".." in name.parts
                          or not (member.isfile() or member.isdir())
                          or not (target == root or target.startswith(root + os.sep)))
                if unsafe:
                    raise DataError(f"archive from {url} holds an unsafe member {member.name!r} "
                                    f"(absolute path, '..', link or device); refusing to extract it")
                if member.isdir():
                    os.makedirs(target, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DataError(f"archive from {url} is truncated or not a valid .tar.gz ({one_line(err, limit=None)}); "
                        f"re-run to download again") from err
    except gzip.BadGzipFile as err:     # an OSError, but corruption rather than a write failure
        raise DataError(f"archive from {url} is not a valid gzip file ({one_line(err, limit=None)}); "
                        f"re-run to download again") from err
