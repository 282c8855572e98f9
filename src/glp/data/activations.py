"""Extract residual-stream activations of one layer for a corpus split into a Zarr store.

Documents are tokenized as `[BOS] + tokens` (truncated to `max_seq_len`), processed in windows of
documents in corpus order; inside a window they are sorted by length and batched (less padding), and
the forward stops right after the captured block. Every position except BOS and padding becomes a row.
Documents are read as a stream, so memory is bounded by one window, whatever the corpus size. The store's resume point is a window boundary.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glp.config import StoreConfig
from glp.data.lm import SourceLM, capture_residual, pad_tokens, run_until_captured
from glp.data.loader import prefetched
from glp.data.store import StoreError, StoreWriter
from glp.progress import Progress, StageClock, stage


@dataclass
class ExtractResult:
    path: Path
    n_rows: int
    n_docs: int
    d_model: int
    seconds: float
    tokens_per_s: float


def tokenize_doc(lm: SourceLM, text: str, max_seq_len: int) -> list[int]:
    """`[BOS] + tokens`, truncated to max_seq_len ids.

    Only a prefix of the text is tokenized (memory per document is bounded: a 20 MB one-line document took 3.5 GB
    whole): 16 characters per kept token, cut at a whitespace, 4x the ~4 characters a BPE token covers in English
    text, so one call almost always suffices. The kept ids are those of the whole text, because the cut falls after
    more tokens than are kept; a prefix that yields too few (long tokens: runs of spaces, symbols) is grown 4x."""
    keep = max_seq_len - 1
    n = 16 * keep + 64
    while True:
        part = text if len(text) <= n else _prefix_at_space(text, n)
        try:
            # verbose=False: a long prefix is cut here, so transformers' "sequence length is longer than the maximum"
            # warning would be a false alarm (no over-long sequence reaches the model)
            ids = lm.tokenizer(part, add_special_tokens=False, verbose=False)["input_ids"]
        except MemoryError:
            raise MemoryError(f"out of memory tokenizing {len(part):,} characters of a {len(text):,}-character "
                              f"document starting {text[:60]!r}: lower store.max_seq_len or split the document") from None
        if part is text or len(ids) > keep + 8:  # 8 tokens to spare: the cut cannot reach the kept ones
            return [lm.bos_id, *ids[:keep]]
        n *= 4


def _prefix_at_space(text: str, n: int) -> str:
    """`text[:n]`, cut back to the last whitespace in its second half (a word is never split), if there is one."""
    cut = max(text.rfind(c, n // 2, n) for c in " \n\t")
    return text[: cut if cut > 0 else n]


Run = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(ids (B,T), mask (B,T)) on the device -> the captured block's output (B,T,d) on the device, compute dtype."""


def run_to_layer(lm: SourceLM, layer: int) -> Run:
    """The model's forward, stopped right after block `layer`, as a `Run`."""
    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), capture_residual(lm, layer, stop=True) as box:
            return run_until_captured(lm, box, input_ids=ids, attention_mask=mask)

    return run


def forward_batch(lm: SourceLM, layer: int, seqs: Sequence[list[int]], clock: StageClock | None = None,
                  run: Run | None = None, on_device: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded forward of token lists; returns (acts (B,T,d) float32 on cpu, ids (B,T), mask (B,T)), ids and
    mask on the cpu. `on_device`: acts stay on the model's device in its compute dtype (extraction gathers there)."""
    ids, mask = pad_tokens(seqs, lm.pad_id)
    with stage(clock, "forward"):
        acts = (run or run_to_layer(lm, layer))(ids.to(lm.device), mask.to(lm.device))
    if on_device:
        return acts, ids, mask
    with stage(clock, "device->host"):
        return acts.float().cpu(), ids, mask


def window_docs_of(cfg: StoreConfig) -> int:
    """Documents (with at least one row) per extraction window: the unit of resume and of sharding."""
    return cfg.batch_size * 16


def iter_windows(
    lm: SourceLM, docs: Iterator[str], max_seq_len: int, window_docs: int, cap: float, doc: int = 0,
    stop_doc: int | None = None, rows_total: int = 0, clock: StageClock | None = None,
) -> Iterator[tuple[list[tuple[int, list[int]]], int]]:
    """The corpus cut into extraction windows, in corpus order: (window [(doc id, tokens)], next doc id) each.

    `docs` yields the texts from document `doc` on. A window holds `window_docs` documents that yield rows; the
    token cap is checked per document (the document that reaches it is the last one), and reading stops before
    `stop_doc`. Extraction and the shard plan (glp.data.shards) both cut windows here, so they always agree."""
    exhausted = False
    while not exhausted and rows_total < cap:
        window: list[tuple[int, list[int]]] = []
        while len(window) < window_docs and rows_total < cap:
            text = None if stop_doc is not None and doc >= stop_doc else next(docs, None)
            if text is None:
                exhausted = True
                break
            with stage(clock, "tokenize"):
                seq = tokenize_doc(lm, text, max_seq_len)
            if len(seq) > 1:  # a document with no token after BOS yields no row
                window.append((doc, seq))
                rows_total += len(seq) - 1
            doc += 1
        yield window, doc


WRITE_AHEAD = 4
"""Batches of rows queued for the background writer (each holds one reused host buffer on a GPU): the forward of the
next batches runs while these are written; more only costs memory."""


OVERLAP: str = "accelerator"
"""When tokenizing and writing run in their own threads beside the forward: "accelerator" (the model is not on the
CPU: the host is idle while the device computes), "always" (tests run the threaded path on the CPU) or "never". On
the CPU the forward already keeps the cores busy, and a writer beside it measured slower here (docs/gpu.md), so there
the three stages run one after the other, through the same code."""

HOST_BUFFERS: str = "cuda"
"""Where the device->host copies go through `_HostBuffers`: "cuda" (on a CUDA device only; elsewhere the gathered
rows are already host memory) or "always" (tests run that path on the CPU, unpinned)."""


class _HostBuffers:
    """Reused (pinned, on a GPU) host buffers for the device->host copies of gathered rows: pinning a fresh tensor
    per batch can cost more than the copy. A batch takes one, the writer gives it back once written."""

    def __init__(self, n: int, rows: int, d: int, dtype: torch.dtype, pin: bool) -> None:
        self.n = n
        self.free: queue.Queue[torch.Tensor] = queue.Queue()
        for _ in range(n):
            self.free.put(torch.empty((rows, d), dtype=dtype, pin_memory=pin))


class _BackgroundWriter:
    """A StoreWriter driven by one background thread through a bounded queue of ("rows", ...) / ("commit", n_docs)
    items, in order. The thread never stops draining the queue, so a producer blocked on a full queue always wakes;
    after an error it only discards (and hands back buffers), and the error is raised in the caller at its next
    `put` or at `finish`, itself (with a note saying where it happened), never lost with the thread."""

    def __init__(self, writer: StoreWriter, depth: int, clock: StageClock | None,
                 buffers: _HostBuffers | None, threaded: bool = True) -> None:
        self.writer, self.clock, self.buffers = writer, clock, buffers
        self.queue: queue.Queue[tuple[str, Any] | None] = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None  # to raise in the caller (once)
        self.failed = False  # for good: after an error nothing more is written, not even what is queued
        self.thread = threading.Thread(target=self._loop, name="glp-store-writer", daemon=True) if threaded else None
        if self.thread is not None:
            self.thread.start()

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            kind, payload = item
            try:
                if not self.failed:
                    self._do(kind, payload)
            except BaseException as e:  # noqa: BLE001 (re-raised in the caller's thread)
                self.error, self.failed = e, True
            finally:
                if kind == "rows" and payload["buffer"] is not None:
                    self.buffers.free.put(payload["buffer"])

    def _do(self, kind: str, payload: Any) -> None:
        if kind == "commit":
            with stage(self.clock, "write"):
                self.writer.commit(payload)  # the resume point: a whole window is on disk
            return
        if payload["event"] is not None:
            payload["event"].synchronize()  # the non-blocking copy into the pinned buffer has landed
        acts = payload["acts"]
        if payload["buffer"] is not None:  # copy out of the pinned buffer, which goes back to the pool
            acts = acts.clone()
        values = acts.view(torch.uint16).numpy() if acts.dtype == torch.bfloat16 else acts.numpy()
        with stage(self.clock, "write"):
            self.writer.append(values, **payload["provenance"])

    def raise_if_failed(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            error.add_note(f"raised in the store writer thread of {self.writer.path}")
            raise error

    def put(self, kind: str, payload: Any) -> None:
        self.raise_if_failed()
        if self.thread is None:  # not threaded: written here and now, errors raised as they happen
            if self.failed:
                raise StoreError(f"the store writer of {self.writer.path} failed before: nothing more is written")
            try:
                self._do(kind, payload)
            except BaseException:
                self.failed = True
                raise
            finally:
                if kind == "rows" and payload["buffer"] is not None:
                    self.buffers.free.put(payload["buffer"])
            return
        with stage(self.clock, "writer wait"):
            self.queue.put((kind, payload))

    def finish(self) -> None:
        """Wait until everything queued is written; raise the writer's error if it had one."""
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()
        self.raise_if_failed()

    def abandon(self) -> None:
        """After an error in the caller: let the thread write what is queued (a committed window stays a resume
        point), then stop it; its own error, if any, is dropped for the caller's."""
        if self.thread is not None:
            self.queue.put(None)
            self.thread.join()


def _rows_on_device(acts: torch.Tensor, keep: torch.Tensor, row_dtype: torch.dtype) -> torch.Tensor:
    """The kept positions' rows (n, d) in `row_dtype`, gathered and cast on acts' device (row-major order, as
    `acts[keep]`). `keep` (B, T) bool is on the CPU, so n is known without waiting for the device."""
    idx = keep.flatten().nonzero().squeeze(1).to(acts.device, non_blocking=True)
    return acts.reshape(-1, acts.shape[-1]).index_select(0, idx).to(row_dtype)


def extract_activations(
    lm: SourceLM,
    layer: int,
    texts: Iterable[str],
    out: Path | str,
    cfg: StoreConfig,
    max_tokens: int | None,
    attrs: dict[str, Any],
    window_docs: int | None = None,
    log: Callable[[str], None] | None = None,
    doc_range: tuple[int, int] | None = None,
    clock: StageClock | None = None,
    run: Run | None = None,
) -> ExtractResult:
    """Write the activations of `texts` (in corpus order, up to `max_tokens` rows) to the store `out`.

    `texts` is consumed as a stream (pass a generator to keep memory independent of the corpus size) and always
    starts at the corpus's first document. `doc_range` = (lo, hi): extract exactly documents lo..hi-1, one shard of
    a plan made under `max_tokens` (glp.data.shards.plan_shards: the cap is already in the range, lo is a window start),
    so its windows, batches and rows are the one-worker extraction's. `clock` (benchmarks) collects seconds per stage;
    `run` (benchmarks: the host path alone) replaces the model's forward.

    On an accelerator three threads overlap (`OVERLAP`): the next windows are tokenized ahead (a producer thread),
    the forward runs here and gathers and casts the kept rows on the device (one non-blocking copy into a reused
    pinned buffer per batch), and a background writer appends them to the store through a bounded queue. Rows, their
    order and the resume points (one commit per window) are those of doing the three one after the other, which is
    what happens on the CPU.
    """
    lm.block(layer)  # validate the layer before any work
    window_docs = window_docs or window_docs_of(cfg)
    compute = next(lm.model.parameters()).dtype
    row_dtype = compute if cfg.row_dtype == "compute" and compute == torch.bfloat16 else torch.float32
    attrs = {**attrs, "layer": layer, "d_model": lm.d_model, "dtype": str(compute).removeprefix("torch."), "max_seq_len": cfg.max_seq_len,
             "max_tokens": max_tokens, "bos_id": lm.bos_id}
    writer = StoreWriter(out, lm.d_model, cfg.chunk_rows, attrs, row_dtype=str(row_dtype).removeprefix("torch."),
                         codec=cfg.codec)
    lo, hi = doc_range if doc_range is not None else (0, None)
    start_docs, start_rows = max(writer.n_docs, lo), writer.n_rows
    if writer.n_docs and log:
        log(f"resuming {writer.path.name} after {start_docs} documents ({start_rows} rows)")
    t0 = time.perf_counter()
    cap = max_tokens if max_tokens is not None and doc_range is None else float("inf")
    progress = Progress(f"extract {writer.path.stem}", max_tokens if doc_range is None else None, "tok", log,
                        done=start_rows)
    docs = iter(texts)
    for _ in range(start_docs):  # resume, or a shard: these documents are not this run's
        next(docs, None)
    cuda = lm.device.type == "cuda"
    buffers = (_HostBuffers(WRITE_AHEAD + 2, cfg.batch_size * cfg.max_seq_len, lm.d_model, row_dtype, pin=cuda)
               if cuda or HOST_BUFFERS == "always" else None)
    threaded = OVERLAP == "always" or (OVERLAP == "accelerator" and lm.device.type != "cpu")
    background = _BackgroundWriter(writer, WRITE_AHEAD, clock, buffers, threaded)
    windows = iter_windows(lm, docs, cfg.max_seq_len, window_docs, cap, start_docs, hi, writer.n_rows, clock)
    windows = prefetched(windows, depth=2) if threaded else windows
    try:
        for window, doc in windows:
            window.sort(key=lambda item: -len(item[1]))
            for b in range(0, len(window), cfg.batch_size):
                batch = window[b : b + cfg.batch_size]
                acts, ids, mask = forward_batch(lm, layer, [s for _, s in batch], clock, run, on_device=True)
                with stage(clock, "gather"):
                    mask[:, 0] = 0  # BOS is not a row
                    keep = mask.bool()
                    rows = _rows_on_device(acts, keep, row_dtype)  # (n, d) on the device
                    provenance = {
                        "doc_id": torch.tensor([d for d, _ in batch]).unsqueeze(1).expand_as(ids)[keep].numpy(),
                        "position": torch.arange(ids.shape[1]).expand_as(ids)[keep].numpy().astype(np.int32),
                        "token_id": ids[keep].numpy().astype(np.int32),
                    }
                payload: dict[str, Any] = {"provenance": provenance, "buffer": None, "event": None}
                if buffers is not None:
                    with stage(clock, "writer wait"):
                        buffer = buffers.free.get()  # the writer hands each buffer back, even after an error
                with stage(clock, "device->host"):
                    if buffers is not None:
                        host = buffer[: len(rows)]
                        host.copy_(rows, non_blocking=cuda)
                        payload.update(acts=host, buffer=buffer, event=torch.cuda.Event() if cuda else None)
                        if cuda:
                            payload["event"].record()
                    else:
                        payload["acts"] = rows.cpu()
                background.put("rows", payload)
            background.put("commit", doc)
            progress.set(writer.n_rows, lambda: f"{writer.n_docs:,} docs")
    except BaseException:
        windows.close()
        background.abandon()
        raise
    background.finish()
    seconds = time.perf_counter() - t0
    n_new = writer.n_rows - start_rows
    if log:
        log(f"{writer.path.name}: {writer.n_rows:,} rows from {writer.n_docs:,} docs ({n_new / max(seconds, 1e-9):,.0f} tok/s)")
    with stage(clock, "checksum"):  # close: read back each chunk, CRC it, publish
        writer.close({"n_docs_seen": writer.n_docs, "tokens_per_s": n_new / max(seconds, 1e-9)})
    return ExtractResult(writer.path, writer.n_rows, writer.n_docs, lm.d_model, seconds, n_new / max(seconds, 1e-9))
