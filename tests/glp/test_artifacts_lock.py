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

from glp.artifacts import ArtifactBusy, artifact_lock, holder_path, lock_path, recorded_holder

# A writer in its own process: takes the lock (through artifact_lock, or bare filelock with no holder record, as a
# writer between acquiring and recording would be), says "locked", holds it for hold_s seconds and exits.
HOLDER = """
import sys, time
from filelock import FileLock
from glp.artifacts import artifact_lock, lock_path
path, asset, run_id, mode, hold_s = sys.argv[1:]
lock = FileLock(lock_path(path)) if mode == "bare" else artifact_lock(path, asset, "builtin/L1", run_id=run_id or None)
with lock:
    print("locked", flush=True)
    time.sleep(float(hold_s))
"""


@contextmanager
def holding(path: Path, asset: str = "activations", run_id: str = "run-a", bare: bool = False,
            hold_s: float = 600) -> Iterator[subprocess.Popen]:
    """A process holding the lock of `path` for the duration of the block (killed at the end if still alive)."""
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(path), asset, run_id, "bare" if bare else "record",
                          str(hold_s)], stdout=subprocess.PIPE, text=True)
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
    assert "being written by another process (no live holder recorded" in msg

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


def test_lock_and_holder_record_sit_beside_the_artifact_never_inside_it(tmp_path):
    art = tmp_path / "sae"
    art.mkdir()
    (art / "config.json").write_text("{}")
    with artifact_lock(art, "sae", "builtin/L1"):
        assert sorted(p.name for p in art.iterdir()) == ["config.json"]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["sae", "sae.lock", "sae.lock.json"]
    assert lock_path(art) == tmp_path / "sae.lock" and holder_path(art) == tmp_path / "sae.lock.json"


def test_a_lock_in_a_missing_folder_creates_the_folder(tmp_path):
    art = tmp_path / "store" / "builtin" / "L1" / "prior_eval.json"
    with artifact_lock(art, "prior_eval"):
        assert lock_path(art).is_file()


def test_a_negative_wait_is_refused(tmp_path):
    with pytest.raises(ValueError, match="wait_s=-1"):
        with artifact_lock(tmp_path / "x", "x", wait_s=-1):
            pass
