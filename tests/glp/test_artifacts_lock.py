"""One writer per artifact: `glp.artifacts.artifact_lock` against real holder processes (alive, finished, SIGKILLed)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from glp.artifacts import ArtifactBusy, artifact_lock, holder_path, lock_path, readers_path, recorded_holder

# A writer in its own process: takes the lock (through artifact_lock, or bare filelock with no holder record, as a
# writer between acquiring and recording would be), says "locked", holds it for hold_s seconds and exits.
HOLDER = """
import sys, time
from filelock import FileLock
from glp.artifacts import artifact_lock, lock_path
path, asset, run_id, mode, hold_s, root, shared = sys.argv[1:]
root = root or None
lock = (FileLock(lock_path(path, root)) if mode == "bare" else
        artifact_lock(path, asset, "builtin/L1", run_id=run_id or None, root=root, shared=shared == "1"))
with lock:
    print("locked", flush=True)
    time.sleep(float(hold_s))
"""


@contextmanager
def holding(path: Path, asset: str = "activations", run_id: str = "run-a", bare: bool = False,
            hold_s: float = 600, root: Path | None = None, shared: bool = False) -> Iterator[subprocess.Popen]:
    """A process holding the lock of `path` (locks under `root`, as a step's) for the duration of the block (killed
    at the end if still alive): a writer, or with `shared` a reader."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), asset, run_id, "bare" if bare else "record",
                          str(hold_s), str(root or ""), "1" if shared else "0"], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "locked", "the holder process did not take the lock"
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()


def sigkill(p: subprocess.Popen) -> None:
    os.kill(p.pid, signal.SIGKILL)
    p.wait()  # reaped: no zombie that would still answer kill(pid, 0)


def busy_message(path: Path, wait_s: float = 0) -> str:
    with pytest.raises(ArtifactBusy) as e:
        with artifact_lock(path, "activations", "builtin/L1", wait_s=wait_s, run_id="run-b"):
            pytest.fail("took a lock another process holds")
    return str(e.value)


def test_a_second_writer_fails_at_once_naming_the_run_pid_host_and_start(tmp_path):
    art = tmp_path / "activations"
    with holding(art, run_id="run-a") as p:
        t0 = time.monotonic()
        msg = busy_message(art)
        assert time.monotonic() - t0 < 2
    assert re.fullmatch(rf"`activations` for `builtin/L1` is being written by run run-a \(pid {p.pid} on "
                        rf"{re.escape(socket.gethostname())}, since \d\d:\d\d:\d\d UTC\); wait for it or stop it", msg), msg


def test_a_writer_killed_with_sigkill_frees_the_lock_and_its_stale_record_is_never_reported(tmp_path):
    art = tmp_path / "activations"
    with holding(art, run_id="run-a") as dead:
        sigkill(dead)
    stale = json.loads(holder_path(art).read_text())
    assert stale["pid"] == dead.pid and stale["run_id"] == "run-a"  # the killed writer could not remove its record
    assert recorded_holder(art) is None

    # A live writer that has not recorded itself yet: the message must not name the dead one.
    with holding(art, bare=True):
        msg = busy_message(art)
    assert f"pid {dead.pid}" not in msg and "run-a" not in msg
    assert "is locked by another process (no live holder recorded beside its lock file" in msg

    # The OS released the killed writer's flock: the lock is free at once, and the new record names us.
    with artifact_lock(art, "activations", "builtin/L1", run_id="run-c"):
        mine = json.loads(holder_path(art).read_text())
        assert (mine["run_id"], mine["pid"], mine["host"]) == ("run-c", os.getpid(), socket.gethostname())
        assert mine["asset"] == "activations" and mine["partition"] == "builtin/L1"
    assert not holder_path(art).exists()  # removed on release, while still holding the lock


def test_a_waiting_writer_takes_the_lock_when_the_holder_finishes_and_gives_up_at_its_deadline(tmp_path):
    art = tmp_path / "norm_stats.safetensors"
    with holding(art, hold_s=1.0):
        t0 = time.monotonic()
        with artifact_lock(art, "norm_stats", "builtin/L1", wait_s=60):
            waited = time.monotonic() - t0  # the holder let go after its 1 s
            assert json.loads(holder_path(art).read_text())["pid"] == os.getpid()
        assert 0.2 < waited < 30

    with holding(art, run_id="run-a") as p:
        t0 = time.monotonic()
        msg = busy_message(art, wait_s=0.5)
        assert time.monotonic() - t0 >= 0.5
    assert f"run run-a (pid {p.pid}" in msg and "(waited 0.5 s)" in msg


def test_locks_live_in_one_folder_under_the_store_root_never_beside_or_inside_the_artifact(tmp_path):
    root = tmp_path / "store"
    art = root / "builtin" / "L1" / "sae"
    art.mkdir(parents=True)
    (art / "config.json").write_text("{}")
    with artifact_lock(art, "sae", "builtin/L1", root=root):
        assert sorted(p.name for p in art.iterdir()) == ["config.json"]
        assert sorted(p.name for p in art.parent.iterdir()) == ["sae"]  # nothing beside the artifact
        assert holder_path(art, root).is_file()
    assert lock_path(art, root) == root / ".locks" / "builtin" / "L1" / "sae.lock"
    assert holder_path(art, root) == root / ".locks" / "builtin" / "L1" / "sae.lock.json"
    outside = tmp_path / "my-model"  # e.g. a user's model folder outside the store: a lock named by its path
    assert lock_path(outside, root).parent == root / ".locks" and lock_path(outside, root).name.startswith("my-model-")
    assert lock_path(art) == art.parent / ".locks" / "sae.lock"  # no root: a .locks folder in the parent


def test_readers_share_the_lock_and_a_writer_fails_naming_each_reading_run(tmp_path):
    art = tmp_path / "activations"
    with artifact_lock(art, "glp_prior", "builtin/L1", run_id="run-a", shared=True):
        with artifact_lock(art, "sae", "builtin/L1", run_id="run-b", shared=True):  # readers do not block readers
            with pytest.raises(ArtifactBusy) as e:
                with artifact_lock(art, "activations", "builtin/L1", run_id="run-c"):
                    pytest.fail("a writer replaced an artifact two runs are reading")
    msg = str(e.value)
    assert msg.startswith("`activations` for `builtin/L1` is being read by ")
    assert "`glp_prior` in run run-a (pid" in msg and "`sae` in run run-b (pid" in msg
    assert "would swap it under that run" in msg
    with artifact_lock(art, "activations", "builtin/L1", run_id="run-c"):  # both readers gone: the writer goes
        assert not any(readers_path(art).glob("*.json"))


def test_a_reader_fails_naming_the_writer_while_a_store_is_being_replaced(tmp_path):
    art = tmp_path / "activations"
    with holding(art, run_id="run-a") as p:
        with pytest.raises(ArtifactBusy, match=rf"`glp_prior` for `builtin/L1` cannot read activations now: it is "
                                               rf"being written by `activations` in run run-a \(pid {p.pid}"):
            with artifact_lock(art, "glp_prior", "builtin/L1", shared=True):
                pytest.fail("read an artifact while it is being written")


def test_a_lock_in_a_missing_folder_creates_the_folder(tmp_path):
    art = tmp_path / "store" / "builtin" / "L1" / "prior_eval.json"
    with artifact_lock(art, "prior_eval"):
        assert lock_path(art).is_file()


def test_a_negative_wait_is_refused(tmp_path):
    with pytest.raises(ValueError, match="wait_s=-1"):
        with artifact_lock(tmp_path / "x", "x", wait_s=-1):
            pass
