"""Small file helpers: atomic writes, checksums, resumable downloads with clear offline errors."""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from t2t.errors import UserError


def write_atomic(path: Path, data: bytes) -> None:
    """Write to a temporary name, then rename: readers never see a half-written file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def sha256_file(path: Path) -> str:
    return file_digest(path, "sha256")


def file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: Path, *, sha256: str | None = None, md5: str | None = None,
             raw_dir_hint: str) -> Path:
    """Fetch url to dest unless it is already there; resume a partial download; check the
    published checksum (sha256, or md5 where that is all the source publishes).

    raw_dir_hint names the option that points at a local copy (e.g. "problem.raw_dir=DIR"),
    so that an offline user is told how to get going.
    """
    algorithm, expected = ("sha256", sha256) if sha256 or not md5 else ("md5", md5)
    if dest.is_file() and (expected is None or file_digest(dest, algorithm) == expected):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={offset}-"} if offset else {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            # 206 = the server resumed; 200 = it sent the whole file again.
            mode = "ab" if offset and response.status == 206 else "wb"
            with open(part, mode) as out:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise UserError(
            f"could not download {url} ({reason}); with no network, put the file in a folder "
            f"and pass {raw_dir_hint}"
        ) from None
    if expected is not None and (actual := file_digest(part, algorithm)) != expected:
        part.unlink()
        raise UserError(f"download of {url} is corrupt ({algorithm} {actual}, expected "
                        f"{expected}); run again, or pass {raw_dir_hint} with a good copy")
    os.replace(part, dest)
    return dest
