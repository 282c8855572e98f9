"""Writing artifacts safely and naming them by content: the one place for atomic publish and file hashes.

A good artifact is never replaced by a half-written one: files are written under a temporary sibling name,
fsynced and renamed; folders are built in a fresh sibling folder and renamed into place (DESIGN.md).
Writers and readers of one artifact are kept apart by `artifact_lock` (exclusive for the writer, shared for
readers): one that finds the lock taken fails at once, naming the holder, or waits.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import uuid
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


_HASHED: dict[tuple[str, int, int, int], str] = {}


def sha256_cached(path: Path, cache: Path | None = None) -> str:
    """`sha256_file(path)`, hashed once per content: remembered by (absolute path, size, mtime, inode), in this
    process and, with `cache`, in that JSON file (as DVC does), so a 540 MB model is read once, not at every step.
    Rewriting the file changes its mtime, so a retrained or fine-tuned model of the same size is hashed again."""
    path = Path(path).absolute()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key in _HASHED:
        return _HASHED[key]
    entry = [st.st_size, st.st_mtime_ns, st.st_ino]
    known: dict = {}
    if cache is not None:
        try:
            known = json.loads(Path(cache).read_text())
        except (FileNotFoundError, ValueError):
            known = {}
        hit = known.get(str(path)) if isinstance(known, dict) else None
        if isinstance(hit, dict) and hit.get("stat") == entry and isinstance(hit.get("sha256"), str):
            _HASHED[key] = hit["sha256"]
            return hit["sha256"]
    digest = _HASHED[key] = sha256_file(path)
    if cache is not None:
        try:
            Path(cache).parent.mkdir(parents=True, exist_ok=True)
            known = known if isinstance(known, dict) else {}
            known[str(path)] = {"stat": entry, "sha256": digest}
            tmp = Path(cache).with_name(f"{Path(cache).name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(known, indent=0, sort_keys=True))
            os.replace(tmp, cache)  # concurrent writers: the last one wins, and any entry is still true
        except OSError:
            pass  # a read-only store: hash again next time
    return digest


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
    """Another process holds the lock of the artifact: it is being written (or, for a writer, read) right now."""


LOCKS = ".locks"
"""The folder of lock files, out of the user's way: `<store.root>/.locks/` (or `<parent>/.locks/` without a root)."""


def lock_path(path: Path, root: Path | None = None) -> Path:
    """The lock file of the artifact at `path`: `<root>/.locks/<path relative to root>.lock` (an artifact outside
    `root`: `<root>/.locks/<name>-<hash of its absolute path>.lock`); without a root, `<parent>/.locks/<name>.lock`.
    Never inside the artifact, so its hashes and sizes never see it."""
    path = Path(path)
    if root is None:
        return path.parent / LOCKS / f"{path.name}.lock"
    root = Path(root)
    try:
        rel = path.absolute().relative_to(root.absolute()).as_posix()
    except ValueError:
        rel = f"{path.name}-{hashlib.sha256(str(path.absolute()).encode()).hexdigest()[:12]}"
    return root / LOCKS / f"{rel}.lock"


def holder_path(path: Path, root: Path | None = None) -> Path:
    """`<lock>.json`: who writes the artifact at `path` (run id, pid, host, start time), while they hold its lock."""
    lock = lock_path(path, root)
    return lock.with_name(lock.name + ".json")


def readers_path(path: Path, root: Path | None = None) -> Path:
    """`<lock>.readers/`: one record per run reading the artifact at `path` (`<pid>.json`), while it reads."""
    lock = lock_path(path, root)
    return lock.with_name(lock.name + ".readers")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _live(record: Path) -> dict | None:
    """A holder record, or None when there is none or it is stale: a process killed with SIGKILL leaves its record
    behind (the OS frees its lock), so a record whose pid is gone on this host is ignored."""
    try:
        holder = json.loads(record.read_text())
    except (FileNotFoundError, ValueError):
        return None
    pid = holder.get("pid") if isinstance(holder, dict) else None
    if not isinstance(pid, int) or pid <= 0:
        return None
    if holder.get("host") == socket.gethostname() and not _pid_alive(pid):
        return None
    return holder  # on another host the pid cannot be probed: the record is the best we know


def recorded_holder(path: Path, root: Path | None = None) -> dict | None:
    """The live writer record of `path`'s lock, or None (none, or stale)."""
    return _live(holder_path(path, root))


def recorded_readers(path: Path, root: Path | None = None) -> list[dict]:
    """The live reader records of `path`'s lock (stale ones, of dead processes, are skipped)."""
    folder = readers_path(path, root)
    records = sorted(folder.glob("*.json")) if folder.is_dir() else []
    return [h for h in (_live(r) for r in records) if h is not None]


def _since(iso: object) -> str:
    try:
        t = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    same_day = t.date() == datetime.now(timezone.utc).date()
    return t.strftime("%H:%M:%S UTC" if same_day else "%Y-%m-%d %H:%M:%S UTC")


def _who(h: dict) -> str:
    where = f"pid {h['pid']} on {h.get('host')}, since {_since(h.get('since'))}"
    return f"run {h['run_id']} ({where})" if h.get("run_id") else where


def _busy_message(path: Path, asset: str, partition: str | None, wait_s: float, shared: bool,
                  root: Path | None) -> str:
    what = f"`{asset}`" + (f" for `{partition}`" if partition else "")
    waited = f" (waited {wait_s:g} s)" if wait_s > 0 else ""
    h = recorded_holder(path, root)
    if h is not None and shared:
        return (f"{what} cannot read {Path(path).name} now: it is being written by `{h.get('asset')}` in "
                f"{_who(h)}{waited}; wait for that run to finish or stop it")
    if h is not None:
        return f"{what} is being written by {_who(h)}{waited}; wait for it or stop it"
    readers = [] if shared else recorded_readers(path, root)
    if readers:
        names = "; ".join(f"`{r.get('asset')}` in {_who(r)}" for r in readers)
        return (f"{what} is being read by {names}{waited}: replacing it now would swap it under that run; wait "
                "for it to finish or stop it")
    return (f"{what} is locked by another process (no live holder recorded beside its lock file "
            f"{lock_path(path, root)}){waited}; wait for it or stop it")


def _flock(fd: int, shared: bool, wait_s: float) -> bool:
    """Take `flock` on fd (shared or exclusive), polling up to `wait_s` seconds; False when it stayed busy."""
    import fcntl
    import time

    deadline = time.monotonic() + wait_s
    poll = min(0.5, max(wait_s / 10, 0.05))
    while True:
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(poll)


@contextmanager
def artifact_lock(path: Path, asset: str, partition: str | None = None, wait_s: float = 0,
                  run_id: str | None = None, shared: bool = False, root: Path | None = None) -> Iterator[None]:
    """Hold the lock of the artifact at `path` (file or folder) while writing it, or with `shared` while reading it.

    The lock is `fcntl.flock` on `lock_path(path, root)` (under `<root>/.locks/`): exclusive for the one writer,
    shared for any number of readers, so a writer never replaces an artifact a run is reading and a reader never
    opens one being written. The OS releases it when the holder dies, even by SIGKILL: a killed run never blocks the
    next one. Held elsewhere: raise ArtifactBusy naming the holder (writer, or the runs reading it) at once, or after
    waiting up to `wait_s` seconds. `asset` is the step taking the lock (the reader's own asset when `shared`).
    """
    if not wait_s >= 0:
        raise ValueError(f"wait_s={wait_s!r}: give the seconds to wait for another writer, 0 or more")
    lock = lock_path(path, root)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not _flock(fd, shared, wait_s):
            raise ArtifactBusy(_busy_message(path, asset, partition, wait_s, shared, root))
        if shared:
            record = readers_path(path, root) / f"{os.getpid()}-{uuid.uuid4().hex[:8]}.json"
            record.parent.mkdir(exist_ok=True)
        else:
            record = holder_path(path, root)
        write_atomic(record, json.dumps({
            "run_id": run_id, "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).isoformat(timespec="seconds"), "asset": asset, "partition": partition,
        }))
        try:
            yield
        finally:
            record.unlink(missing_ok=True)  # while still holding the lock: the next holder writes its own
    finally:
        os.close(fd)  # releases the flock


def content_hash(*parts: object, length: int = 16) -> str:
    """A short sha256 of the parts as sorted JSON: the versions and cache keys that name an artifact by what it was
    made from."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]


# ---------------------------------------------------------------- temp folders that outlive their run


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
