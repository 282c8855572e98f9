"""Writing artifacts safely and naming them by content: the one place for atomic publish and file hashes.

A good artifact is never replaced by a half-written one: files are written under a temporary sibling name,
fsynced and renamed; folders are built in a fresh sibling folder and renamed into place (DESIGN.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_file(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str) -> Path:
    """Write `data` to `path` through a temporary sibling file (fsync, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    _fsync_file(tmp)
    os.replace(tmp, path)
    return path


def fresh_temp_dir(out: Path) -> Path:
    """An empty sibling folder of `out` to build it in (same filesystem, so publishing is a rename)."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def publish_dir(tmp: Path, final: Path) -> None:
    """Atomically move a finished folder `tmp` to `final` (same parent), replacing any previous one."""
    for dirpath, _, files in os.walk(tmp):
        for f in files:
            _fsync_file(os.path.join(dirpath, f))
    old = final.with_name(final.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    if old.exists():
        shutil.rmtree(old)
