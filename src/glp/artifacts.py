"""Writing artifacts safely and naming them by content: the one place for atomic publish and file hashes.

A good artifact is never replaced by a half-written one: files are written under a temporary sibling name,
fsynced and renamed; folders are built in a fresh sibling folder and renamed into place (DESIGN.md).
Two writers of one artifact are kept apart by `artifact_lock`: the second fails at once, naming the first.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
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


# ---------------------------------------------------------------- one writer per artifact


MANIFEST = "SHA256SUMS"
"""Per-folder checksum list, in `sha256sum` format (`sha256sum -c SHA256SUMS` inside the folder checks it too)."""


def write_manifest(folder: Path) -> Path:
    """Record the sha256 of every file under `folder` (before it is published) in `folder/SHA256SUMS`."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST)
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}" for p in files]
    return write_atomic(folder / MANIFEST, "\n".join(lines) + "\n")


def verify_manifest(folder: Path) -> list[str]:
    """What differs between `folder` and its SHA256SUMS: missing, changed or unlisted files (empty = intact)."""
    folder = Path(folder)
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return [f"{manifest} is missing: the folder was written before checksums existed, or it was tampered with"]
    listed = {}
    for line in manifest.read_text().splitlines():
        digest, _, name = line.partition("  ")
        listed[name] = digest
    problems = [f"{folder / n}: missing" for n in listed if not (folder / n).is_file()]
    problems += [f"{folder / n}: changed since it was written (sha256 differs)" for n, d in listed.items()
                 if (folder / n).is_file() and sha256_file(folder / n) != d]
    problems += [f"{p}: not in {MANIFEST}" for p in sorted(folder.rglob("*"))
                 if p.is_file() and p.name != MANIFEST and p.relative_to(folder).as_posix() not in listed]
    return problems


class ArtifactBusy(RuntimeError):
    """Another process holds the write lock of the artifact: it is being written right now."""


def lock_path(path: Path) -> Path:
    """`<artifact>.lock`, beside the artifact (not inside it: hashes and sizes of the artifact never see it)."""
    path = Path(path)
    return path.with_name(path.name + ".lock")


def holder_path(path: Path) -> Path:
    """`<artifact>.lock.json`: who holds the lock of `path` (run id, pid, host, start time), while they hold it."""
    lock = lock_path(path)
    return lock.with_name(lock.name + ".json")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def recorded_holder(path: Path) -> dict | None:
    """The holder record of `path`'s lock, or None when there is none or it is stale: a writer killed with SIGKILL
    leaves its record behind (the OS frees its lock), so a record whose pid is gone on this host is ignored."""
    try:
        holder = json.loads(holder_path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None
    pid = holder.get("pid") if isinstance(holder, dict) else None
    if not isinstance(pid, int) or pid <= 0:
        return None
    if holder.get("host") == socket.gethostname() and not _pid_alive(pid):
        return None
    return holder  # on another host the pid cannot be probed: the record is the best we know


def _since(iso: object) -> str:
    try:
        t = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    same_day = t.date() == datetime.now(timezone.utc).date()
    return t.strftime("%H:%M:%S UTC" if same_day else "%Y-%m-%d %H:%M:%S UTC")


def _busy_message(path: Path, asset: str, partition: str | None, wait_s: float) -> str:
    what = f"`{asset}`" + (f" for `{partition}`" if partition else "")
    h = recorded_holder(path)
    if h is None:
        who = f"another process (no live holder recorded in {holder_path(path).name}; lock file {lock_path(path)})"
    else:
        where = f"pid {h['pid']} on {h.get('host')}, since {_since(h.get('since'))}"
        who = f"run {h['run_id']} ({where})" if h.get("run_id") else where
    waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
    return f"{what} is being written by {who}{waited}; wait for it or stop it"


@contextmanager
def artifact_lock(path: Path, asset: str, partition: str | None = None, wait_s: float = 0,
                  run_id: str | None = None) -> Iterator[None]:
    """Hold the write lock of the artifact at `path` (file or folder) while writing it.

    The lock is `fcntl.flock` on `<path>.lock` (filelock), which the OS releases when the holder dies, even by
    SIGKILL: a killed writer never blocks the next one. Held elsewhere: raise ArtifactBusy naming the holder at once,
    or after waiting up to `wait_s` seconds.
    """
    from filelock import FileLock, Timeout

    if not wait_s >= 0:
        raise ValueError(f"wait_s={wait_s!r}: give the seconds to wait for another writer, 0 or more")
    lock = FileLock(lock_path(path))
    try:
        lock.acquire(timeout=wait_s, poll_interval=min(0.5, max(wait_s / 10, 0.05)))
    except Timeout:
        raise ArtifactBusy(_busy_message(path, asset, partition, wait_s)) from None
    record = holder_path(path)
    try:
        write_atomic(record, json.dumps({
            "run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "asset": asset, "partition": partition,
        }))
        yield
    finally:
        try:
            record.unlink(missing_ok=True)  # while still holding the lock: the next holder writes its own
        finally:
            lock.release()


def content_hash(*parts: object, length: int = 16) -> str:
    """A short sha256 of the parts as sorted JSON: the versions and cache keys that name an artifact by what it was
    made from."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]


# ---------------------------------------------------------------- temp folders that outlive their run


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_dead_temp_dirs(out: Path) -> list[Path]:
    """Remove the temp siblings of `out` (`.<name>.tmp-<pid>`, from `fresh_temp_dir`) whose process is no longer
    alive on this host: what a failed or killed run left. Those of live processes (a writer now) are kept."""
    out = Path(out)
    prefix = f".{out.name}.tmp-"
    if not out.parent.is_dir():
        return []
    gone = []
    for p in sorted(out.parent.iterdir()):
        pid = p.name.removeprefix(prefix)
        if p.name.startswith(prefix) and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A fresh temp sibling of `out` to build it in (`fresh_temp_dir`), removed if the body raises, so a failed
    write leaves nothing behind; the temp siblings dead processes left are removed first."""
    remove_dead_temp_dirs(out)
    tmp = fresh_temp_dir(out)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
