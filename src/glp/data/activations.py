"""Extract residual-stream activations of one layer for a corpus split into a Zarr store.

Documents are tokenized as `[BOS] + tokens` (truncated to `max_seq_len`), processed in windows of
documents in corpus order; inside a window they are sorted by length and batched (less padding), and
the forward stops right after the captured block. Every position except BOS and padding becomes a row.
Documents are read as a stream, so memory is bounded by one window, whatever the corpus size. The store's resume point is a window boundary.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from glp.config import StoreConfig
from glp.data.lm import SourceLM, capture_residual, pad_tokens, run_until_captured
from glp.data.store import StoreWriter
from glp.progress import Progress, StageClock


@dataclass
class ExtractResult:
    path: Path
    n_rows: int
    n_docs: int
    d_model: int
    seconds: float
    tokens_per_s: float


def tokenize_doc(lm: SourceLM, text: str, max_seq_len: int) -> list[int]:
    """`[BOS] + tokens`, truncated to max_seq_len ids."""
    # verbose=False: the whole document is tokenized, then cut here, so transformers' "sequence length is longer than
    # the maximum ... will result in indexing errors" would be a false alarm (no over-long sequence reaches the model)
    ids = lm.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]
    return [lm.bos_id, *ids[: max_seq_len - 1]]


def _stage(clock: StageClock | None, name: str):
    return clock(name) if clock is not None else nullcontext()


Run = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(ids (B,T), mask (B,T)) on the device -> the captured block's output (B,T,d) on the device, compute dtype."""


def run_to_layer(lm: SourceLM, layer: int) -> Run:
    """The model's forward, stopped right after block `layer`, as a `Run`."""
    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), capture_residual(lm, layer, stop=True) as box:
            return run_until_captured(lm, box, input_ids=ids, attention_mask=mask)

    return run


def forward_batch(lm: SourceLM, layer: int, seqs: Sequence[list[int]], clock: StageClock | None = None,
                  run: Run | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded forward of token lists; returns (acts (B,T,d) float32 on cpu, ids (B,T), mask (B,T))."""
    ids, mask = pad_tokens(seqs, lm.pad_id)
    with _stage(clock, "forward"):
        acts = (run or run_to_layer(lm, layer))(ids.to(lm.device), mask.to(lm.device))
    with _stage(clock, "device->host"):
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
            with _stage(clock, "tokenize"):
                seq = tokenize_doc(lm, text, max_seq_len)
            if len(seq) > 1:  # a document with no token after BOS yields no row
                window.append((doc, seq))
                rows_total += len(seq) - 1
            doc += 1
        yield window, doc


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
    """
    lm.block(layer)  # validate the layer before any work
    window_docs = window_docs or window_docs_of(cfg)
    attrs = {**attrs, "layer": layer, "d_model": lm.d_model, "dtype": str(next(lm.model.parameters()).dtype).removeprefix("torch."), "max_seq_len": cfg.max_seq_len,
             "max_tokens": max_tokens, "bos_id": lm.bos_id}
    writer = StoreWriter(out, lm.d_model, cfg.chunk_rows, attrs)
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
    for window, doc in iter_windows(lm, docs, cfg.max_seq_len, window_docs, cap, start_docs, hi, writer.n_rows,
                                    clock):
        window.sort(key=lambda item: -len(item[1]))
        parts: dict[str, list[np.ndarray]] = {"acts": [], "doc_id": [], "position": [], "token_id": []}
        for b in range(0, len(window), cfg.batch_size):
            batch = window[b : b + cfg.batch_size]
            acts, ids, mask = forward_batch(lm, layer, [s for _, s in batch], clock, run)
            gather = _stage(clock, "gather")
            gather.__enter__()
            mask[:, 0] = 0  # BOS is not a row
            keep = mask.bool()
            pos = torch.arange(ids.shape[1]).expand_as(ids)
            parts["acts"].append(acts[keep].numpy())
            parts["doc_id"].append(torch.tensor([d for d, _ in batch]).unsqueeze(1).expand_as(ids)[keep].numpy())
            parts["position"].append(pos[keep].numpy().astype(np.int32))
            parts["token_id"].append(ids[keep].numpy().astype(np.int32))
            gather.__exit__(None, None, None)
        with _stage(clock, "write"):
            if window:
                writer.append(**{k: np.concatenate(v) for k, v in parts.items()})
            writer.commit(doc)  # the resume point: a whole window is on disk
        progress.set(writer.n_rows, lambda: f"{writer.n_docs:,} docs")
    seconds = time.perf_counter() - t0
    n_new = writer.n_rows - start_rows
    if log:
        log(f"{writer.path.name}: {writer.n_rows:,} rows from {writer.n_docs:,} docs ({n_new / max(seconds, 1e-9):,.0f} tok/s)")
    with _stage(clock, "checksum"):  # close: read back each chunk, CRC it, publish
        writer.close({"n_docs_seen": writer.n_docs, "tokens_per_s": n_new / max(seconds, 1e-9)})
    return ExtractResult(writer.path, writer.n_rows, writer.n_docs, lm.d_model, seconds, n_new / max(seconds, 1e-9))
