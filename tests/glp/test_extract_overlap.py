"""Overlapped extraction (tokenize ahead, gather on the device, background writer) stores exactly the rows the
one-after-the-other extraction stored; a writer error reaches the caller; bfloat16 rows and raw chunks round-trip."""

import threading

import numpy as np
import pytest
import torch

from glp.config import StoreConfig
from glp.data import activations
from glp.data.activations import extract_activations, forward_batch, iter_windows
from glp.data.lm import load_source_lm
from glp.data.loader import prefetched
from glp.data.store import ActivationStore, StoreWriter, _open_group
from tests.conftest import TEXTS


def _sequential_rows(lm, layer, cfg, window_docs):
    """The rows of the writer before the overlap: per window sorted by length, per batch a float32 cpu forward,
    then acts[keep] with BOS and padding dropped, in that order."""
    acts, docs = [], []
    for window, _ in iter_windows(lm, iter(TEXTS), cfg.max_seq_len, window_docs, float("inf")):
        window.sort(key=lambda item: -len(item[1]))
        for b in range(0, len(window), cfg.batch_size):
            batch = window[b : b + cfg.batch_size]
            a, ids, mask = forward_batch(lm, 1, [s for _, s in batch])
            mask[:, 0] = 0
            keep = mask.bool()
            acts.append(a[keep].numpy())
            docs.append(torch.tensor([d for d, _ in batch]).unsqueeze(1).expand_as(ids)[keep].numpy())
    return np.concatenate(acts), np.concatenate(docs)


def _writer_threads():
    return [t for t in threading.enumerate() if t.name in ("glp-store-writer", "glp-prefetch")]


@pytest.fixture(autouse=True)
def threaded(monkeypatch):
    """The accelerator's threaded path (producer, writer thread), run on the CPU."""
    monkeypatch.setattr(activations, "OVERLAP", "always")


def test_overlapped_extraction_stores_the_rows_of_the_sequential_writer_in_its_order(tiny_lm, tmp_path):
    # (the sequential path, OVERLAP="never" as on the CPU, is what tests/glp/test_store.py extracts)
    cfg = StoreConfig(chunk_rows=64, batch_size=4, max_seq_len=32)
    store = ActivationStore(extract_activations(tiny_lm, 1, TEXTS, tmp_path / "s.zarr", cfg, None, {}, window_docs=8).path)
    acts, docs = _sequential_rows(tiny_lm, 1, cfg, window_docs=8)
    np.testing.assert_array_equal(store.rows(), acts)  # bit for bit, same order
    np.testing.assert_array_equal(store.provenance("doc_id"), docs)
    assert store.verify() == [] and not _writer_threads()


def test_the_reused_host_buffer_path_stores_the_same_rows_and_hands_every_buffer_back(tiny_lm, tmp_path, monkeypatch):
    # the GPU's path (gathered rows copied into reused buffers the writer returns), run on the CPU with unpinned buffers
    made = []
    real_init = activations._HostBuffers.__init__

    def recording(self, *args, **kwargs):
        real_init(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(activations, "HOST_BUFFERS", "always")
    monkeypatch.setattr(activations, "WRITE_AHEAD", 1)  # 3 buffers for 13 batches: each is reused
    monkeypatch.setattr(activations._HostBuffers, "__init__", recording)
    cfg = StoreConfig(chunk_rows=64, batch_size=4, max_seq_len=32)
    store = ActivationStore(extract_activations(tiny_lm, 1, TEXTS, tmp_path / "s.zarr", cfg, None, {}, window_docs=8).path)
    np.testing.assert_array_equal(store.rows(), _sequential_rows(tiny_lm, 1, cfg, window_docs=8)[0])
    assert len(made) == 1 and made[0].free.qsize() == made[0].n == 3


def test_a_writer_error_surfaces_in_the_caller_with_its_cause_and_no_thread_is_left(tiny_lm, tmp_path, monkeypatch):
    cfg = StoreConfig(chunk_rows=64, batch_size=1, max_seq_len=32)  # one document per batch: many queued items
    calls, real = [], StoreWriter.append

    def failing(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError("disk full (injected)")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(activations, "WRITE_AHEAD", 1)  # the smallest queue: a dead writer would block the forward
    monkeypatch.setattr(StoreWriter, "append", failing)
    with pytest.raises(OSError, match="disk full") as err:
        extract_activations(tiny_lm, 1, TEXTS, tmp_path / "s.zarr", cfg, None, {}, window_docs=4)
    assert any("store writer thread" in note for note in err.value.__notes__)
    assert len(calls) == 3  # nothing was written after the error
    assert not _writer_threads()
    assert not (tmp_path / "s.zarr").exists()  # nothing published; the partial store resumes
    monkeypatch.setattr(StoreWriter, "append", real)
    resumed = ActivationStore(extract_activations(tiny_lm, 1, TEXTS, tmp_path / "s.zarr", cfg, None, {}, window_docs=4).path)
    np.testing.assert_array_equal(resumed.rows(), _sequential_rows(tiny_lm, 1, cfg, window_docs=4)[0])


def test_after_a_writer_error_nothing_queued_behind_it_is_written_not_even_a_commit(tmp_path):
    """A window queued before the writer failed must not be committed after it (the failed append may have left
    rows behind): the partial store's resume point stays the last one before the error."""
    go = threading.Event()

    class Failing(StoreWriter):
        def append(self, *args, **kwargs):
            go.wait(10)
            raise OSError("disk full")

    writer = Failing(tmp_path / "s.zarr", 4, 8, {})
    background = activations._BackgroundWriter(writer, 4, None, None)
    rows = {"acts": torch.zeros(3, 4), "provenance": {"doc_id": np.zeros(3, np.int64), "position": np.zeros(3, np.int32),
                                                      "token_id": np.zeros(3, np.int32)}, "buffer": None, "event": None}
    background.put("rows", rows)
    background.put("commit", 8)  # queued while the append is still running
    go.set()
    while not background.failed:
        threading.Event().wait(0.01)
    with pytest.raises(OSError, match="disk full"):
        background.raise_if_failed()
    background.abandon()  # the caller's cleanup: it must not let the queued commit through
    assert writer.n_docs == 0 and _open_group(tmp_path / "s.zarr.partial", "r").attrs["n_docs"] == 0


def test_an_error_in_the_forward_stops_the_writer_after_the_committed_windows(tiny_lm, tmp_path, monkeypatch):
    cfg = StoreConfig(chunk_rows=64, batch_size=4, max_seq_len=32)
    calls = []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:  # in the third window (two batches each)
            raise RuntimeError("device lost (injected)")
        return forward_batch(*args, **kwargs)

    monkeypatch.setattr(activations, "forward_batch", dying)
    with pytest.raises(RuntimeError, match="device lost"):
        extract_activations(tiny_lm, 1, TEXTS, tmp_path / "s.zarr", cfg, None, {}, window_docs=8)
    assert not _writer_threads()
    monkeypatch.setattr(activations, "forward_batch", forward_batch)
    logs = []
    resumed = extract_activations(tiny_lm, 1, TEXTS, tmp_path / "s.zarr", cfg, None, {}, window_docs=8, log=logs.append)
    assert any("resuming s.zarr after 16 documents" in m for m in logs), logs  # the two windows before the error
    np.testing.assert_array_equal(ActivationStore(resumed.path).rows(), _sequential_rows(tiny_lm, 1, cfg, 8)[0])


def test_bfloat16_rows_are_stored_as_computed_raw_and_read_back_as_float32(tiny_lm_dir, tmp_path):
    lm = load_source_lm(tiny_lm_dir, device="cpu", dtype="bfloat16")
    f32 = StoreConfig(chunk_rows=64, batch_size=4, max_seq_len=32)
    bf16 = f32.model_copy(update={"row_dtype": "compute", "codec": "raw"})
    a = ActivationStore(extract_activations(lm, 1, TEXTS, tmp_path / "a.zarr", f32, None, {}, window_docs=8).path)
    b = ActivationStore(extract_activations(lm, 1, TEXTS, tmp_path / "b.zarr", bf16, None, {}, window_docs=8).path)
    assert (a.row_dtype, b.row_dtype, b.attrs["acts_dtype"], b.codec) == ("float32", "bfloat16", "bfloat16", "raw")
    assert b.rows().dtype == np.float32
    np.testing.assert_array_equal(b.rows(), a.rows())  # bf16 -> float32 is exact: the same values, half the bytes
    assert b.read_chunk("acts", 0).dtype == np.uint16
    assert b.verify() == [] and b.chunk_path("acts", 0).stat().st_size == 64 * lm.d_model * 2  # raw bf16 bytes
    # a raw chunk has no codec to fail: the CRC alone catches a flipped bit
    chunk = b.chunk_path("acts", 0)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x10
    chunk.write_bytes(bytes(data))
    assert [p["chunk"] for p in ActivationStore(b.path).verify()] == [0]


def test_prefetched_raises_the_producers_error_at_its_item_and_close_stops_it():
    def items():
        yield 1
        yield 2
        raise ValueError("bad document (injected)")

    it = prefetched(items(), depth=1)
    assert [next(it), next(it)] == [1, 2]
    with pytest.raises(ValueError, match="bad document"):
        next(it)
    endless = prefetched(iter(range(10**9)), depth=1)
    next(endless)
    endless.close()
    assert not _writer_threads()


KILLED_CHILD = """
import sys, time
from pathlib import Path
from glp.config import StoreConfig
from glp.data.activations import extract_activations
from glp.data.lm import load_source_lm
from glp.data import activations
from glp.data.store import StoreWriter
from tests.conftest import TEXTS

activations.OVERLAP = "always"  # the writer thread: the kill lands while it works
real, commits = StoreWriter.commit, []

def slow_commit(self, n_docs):  # the third window's rows are written, then the process is killed before its commit
    commits.append(n_docs)
    if len(commits) == 3:
        self._write_buffer()
        print("WRITTEN", flush=True)
        time.sleep(120)
    real(self, n_docs)

StoreWriter.commit = slow_commit
cfg = StoreConfig(chunk_rows=64, batch_size=4, max_seq_len=32, codec=sys.argv[3])
extract_activations(load_source_lm(sys.argv[1], device="cpu"), 1, TEXTS, Path(sys.argv[2]), cfg, None, {}, window_docs=8)
"""


@pytest.mark.slow
@pytest.mark.parametrize("codec", ["blosc-lz4", "raw"])
def test_kill_9_mid_window_then_resume_gives_the_same_bytes(tiny_lm, tiny_lm_dir, tmp_path, codec):
    import os
    import signal
    import subprocess
    import sys

    cfg = StoreConfig(chunk_rows=64, batch_size=4, max_seq_len=32, codec=codec)
    full = extract_activations(tiny_lm, 1, TEXTS, tmp_path / "full.zarr", cfg, None, {}, window_docs=8).path
    out = tmp_path / "killed.zarr"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["src", ".", os.environ.get("PYTHONPATH", "")])}
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(tiny_lm_dir), str(out), codec],
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline().strip() == "WRITTEN"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (tmp_path / "killed.zarr.partial").exists() and not out.exists()
    resumed = extract_activations(tiny_lm, 1, TEXTS, out, cfg, None, {}, window_docs=8).path
    files = sorted(p.relative_to(full) for p in (full / "acts").rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(resumed) for p in (resumed / "acts").rglob("*") if p.is_file())
    for f in files:
        assert (full / f).read_bytes() == (resumed / f).read_bytes(), f
