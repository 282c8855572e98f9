"""Sharded extraction: one source's train extraction cut into N corpus shards, merged into one store.

The plan tokenizes the corpus once (no forward pass) and cuts it into the extraction windows of
`glp.data.activations.iter_windows`, applying the token cap exactly as one worker does. Shard k gets a contiguous run of
whole windows (balanced by rows), so each shard's windows, batches and padding are the one-worker extraction's:
its rows are bitwise the same rows, in the same order. Each shard is an independent unit of work with its own
store (resumable, published atomically); the merge concatenates the shard stores in shard order.

**The invariant** (tests/glp/test_shards.py): the merged store holds exactly the rows of the one-worker store, in
the same order (corpus windows in corpus order; inside a window, documents by decreasing length, as extraction
batches them), with the same provenance, attrs and chunk checksums. That is why `store.shards` enters no data
version.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from glp.data.activations import iter_windows
from glp.data.store import PROVENANCE, ActivationStore, Location, StoreError, StoreWriter
from glp.progress import Log

SHARD_ATTRS = ("shard", "shards", "doc_range")
"""Attrs a shard store has beyond the merged store's."""
RUN_ATTRS = ("fingerprint", "n_rows", "n_docs", "complete", "checksums", "n_docs_seen", "tokens_per_s")
"""Attrs each writer records about its own run (recomputed by the merge)."""


class ShardError(ValueError):
    """The shard count does not fit the corpus, or the shard stores do not form one extraction."""


@dataclass(frozen=True)
class ShardPlan:
    """Documents [lo, hi) and rows of each shard; `n_docs` / `n_rows`: the one-worker store's."""

    n_docs: int
    n_rows: int
    window_docs: int
    shards: list[tuple[int, int, int]]  # (doc lo, doc hi, rows) per shard, contiguous from 0 to n_docs

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ShardPlan:
        d = json.loads(text)
        return cls(d["n_docs"], d["n_rows"], d["window_docs"], [tuple(s) for s in d["shards"]])


def plan_shards(lm: Any, texts: Iterable[str], max_seq_len: int, window_docs: int, max_tokens: int | None,
                n_shards: int) -> ShardPlan:
    """Cut the corpus (capped at `max_tokens` rows as one worker caps it) into `n_shards` runs of whole windows
    with about equal rows (`lm`: a SourceLM, for its tokenizer only)."""
    cap = max_tokens if max_tokens is not None else float("inf")
    windows: list[tuple[int, int, int]] = []  # (doc lo, doc hi, rows)
    lo = 0
    for window, doc in iter_windows(lm, iter(texts), max_seq_len, window_docs, cap):
        rows = sum(len(seq) - 1 for _, seq in window)
        if rows:
            windows.append((lo, doc, rows))
        elif windows:  # trailing documents without rows: the last window's (one worker reads them too)
            windows[-1] = (windows[-1][0], doc, windows[-1][2])
        lo = doc
    if len(windows) < n_shards:
        raise ShardError(f"store.shards={n_shards} but the corpus (capped at store.max_tokens={max_tokens}) has only "
                         f"{len(windows)} extraction windows of {window_docs} documents (store.batch_size x 16): use "
                         f"at most {max(len(windows), 1)} shards, or a smaller store.batch_size")
    total = sum(w[2] for w in windows)
    cum = np.cumsum([w[2] for w in windows])
    # shard k-1 ends at the window boundary whose cumulative rows are closest to k/n of the total (one window at least)
    ends, prev = [], 0
    for k in range(1, n_shards):
        target = total * k / n_shards
        i = int(np.searchsorted(cum, target))  # cum[i] >= target > cum[i-1]
        end = i + 1 if i == 0 or cum[min(i, len(cum) - 1)] - target <= target - cum[i - 1] else i
        end = min(max(end, prev + 1), len(windows) - (n_shards - k))
        ends.append(end)
        prev = end
    ends.append(len(windows))
    shards, start = [], 0
    for end in ends:
        part = windows[start:end]
        shards.append((part[0][0], part[-1][1], sum(w[2] for w in part)))
        start = end
    return ShardPlan(windows[-1][1], total, window_docs, shards)


def shard_attrs(k: int, plan: ShardPlan) -> dict[str, Any]:
    """What a shard store records beyond the merged store's attrs (also part of its fingerprint)."""
    lo, hi, _ = plan.shards[k]
    return {"shard": k, "shards": len(plan.shards), "doc_range": [lo, hi]}


def merge_shards(shards: list[Location], out: Location, log: Log | None = None) -> Location:
    """Concatenate complete shard stores (in shard order) into the store `out`; resumable shard by shard.

    Every chunk is read verified; the shards must form one extraction (same attrs, contiguous document ranges
    from 0). Returns the published store's location."""
    stores = [ActivationStore(p) for p in shards]
    base = {k: v for k, v in stores[0].attrs.items() if k not in SHARD_ATTRS + RUN_ATTRS}
    expect_lo = 0
    for k, s in enumerate(stores):
        attrs = s.attrs
        other = {k2: v for k2, v in attrs.items() if k2 not in SHARD_ATTRS + RUN_ATTRS}
        lo, hi = attrs.get("doc_range", [None, None])
        if other != base or attrs.get("shard") != k or attrs.get("shards") != len(stores) or lo != expect_lo:
            raise ShardError(f"shard store {s.path} is not shard {k} of {len(stores)} of the same extraction "
                             f"(doc_range {attrs.get('doc_range')}, expected to start at document {expect_lo}): "
                             "delete the shard stores and re-materialize `activations`")
        if s.d_model != stores[0].d_model or s.chunk_rows != stores[0].chunk_rows:
            raise ShardError(f"shard store {s.path} has width {s.d_model} / chunks of {s.chunk_rows} rows where shard "
                             f"0 has {stores[0].d_model} / {stores[0].chunk_rows}")
        expect_lo = hi
    writer = StoreWriter(out, stores[0].d_model, stores[0].chunk_rows, {k: v for k, v in base.items() if k != "acts_dtype"},
                         row_dtype=stores[0].row_dtype, codec=stores[0].codec)
    if writer.n_docs and log:
        log(f"resuming the merge into {writer.path.name} after {writer.n_docs} documents")
    seconds = 0.0
    for s in stores:
        lo, hi = s.attrs["doc_range"]
        seconds += s.n_rows / max(float(s.attrs.get("tokens_per_s") or 0.0), 1e-9)
        if writer.n_docs >= hi:  # merged before an interruption
            continue
        if writer.n_docs != lo:
            raise StoreError(f"the partial merge {writer.tmp} stops at document {writer.n_docs}, inside shard "
                             f"{s.attrs['shard']} ({lo}..{hi - 1}): delete it and re-materialize `activations`")
        for i in range(s.n_chunks):
            writer.append(s.read_chunk("acts", i), *(s.read_chunk(name, i) for name in PROVENANCE))
        writer.commit(hi)
    n_rows = writer.n_rows
    path = writer.close({"n_docs_seen": writer.n_docs, "tokens_per_s": n_rows / max(seconds, 1e-9)})
    if log:
        log(f"{writer.path.name}: {n_rows:,} rows merged from {len(stores)} shards")
    return path
