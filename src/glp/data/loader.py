"""Feeding rows out of an activation store: shuffled batches in a fixed order, streamed or resident.

    epoch_row_order(store, seed, epoch)           -> the row indices of one epoch, in batch order
    iter_shuffled_batches(store, batch, seed, ...) -> batches streamed from the store (prefetched, each chunk verified)
    ResidentRows(store, device)                   -> the whole store on the device once, batches gathered there
    prefetched(items, depth)                      -> an iterator produced ahead by a background thread

The order is fixed by (seed, epoch) and is the same for the streamed and the resident paths, so a run resumed from
a checkpoint, or moved from one path to the other, takes the same batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np

from glp.data.store import ActivationStore
from glp.progress import StageClock, stage


class prefetched(Iterator):
    """The items of `items`, produced up to `depth` ahead by a background thread (e.g. tokenization ahead of the
    forward). An error in the producer is raised here, at the item where it happened; `close()` stops the thread."""

    def __init__(self, items: Iterator[Any], depth: int = 2) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, args=(items,), name="glp-prefetch", daemon=True)
        self._thread.start()

    def _produce(self, items: Iterator[Any]) -> None:
        try:
            for item in items:
                if self._stop.is_set():
                    return
                self._queue.put(("item", item))
            self._queue.put(("end", None))
        except BaseException as e:  # noqa: BLE001 (raised in the consumer)
            self._queue.put(("error", e))

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        kind, value = self._queue.get()
        if kind == "item":
            return value
        self._done = True
        self._thread.join()
        if kind == "error":
            value.add_note("raised in a prefetching thread")
            raise value
        raise StopIteration

    def close(self) -> None:
        """Stop the producer (it may be blocked on a full queue: drain until it ends)."""
        self._stop.set()
        self._done = True
        while self._thread.is_alive():
            try:
                self._queue.get_nowait()
            except queue.Empty:
                self._thread.join(timeout=0.05)


def n_batches(n_rows: int, batch_size: int) -> int:
    """Full batches per epoch (the ragged tail is dropped so every step sees `batch_size` rows)."""
    return n_rows // batch_size


def _chunk_groups(n_chunks: int, seed: int, epoch: int, group_chunks: int) -> list[np.ndarray]:
    """The epoch's chunk order (permuted per (seed, epoch)) cut into groups of `group_chunks` chunks."""
    order = np.random.default_rng([seed, epoch]).permutation(n_chunks)
    return [order[i : i + group_chunks] for i in range(0, len(order), group_chunks)]


def _group_permutation(seed: int, epoch: int, group: int, n: int) -> np.ndarray:
    """How the rows of one group are shuffled (their own seeded RNG, so any group can be read alone)."""
    return np.random.default_rng([seed, epoch, group]).permutation(n)


def epoch_row_order(store: ActivationStore, seed: int, epoch: int, group_chunks: int = 8) -> np.ndarray:
    """(n_rows,) int64: the store's row indices in the order `iter_shuffled_batches` yields them in this epoch
    (batch b = rows order[b*batch : (b+1)*batch]); computed from the same groups and permutations."""
    parts = []
    for gi, group in enumerate(_chunk_groups(store.n_chunks, seed, epoch, group_chunks)):
        rows = np.concatenate([np.arange(c * store.chunk_rows, min((c + 1) * store.chunk_rows, store.n_rows))
                               for c in group])
        parts.append(rows[_group_permutation(seed, epoch, gi, len(rows))])
    return np.concatenate(parts) if parts else np.empty(0, np.int64)


class ResidentRows:
    """Every row of a store held in one tensor (n, d) on `device`, in its stored dtype (bfloat16 stays bfloat16),
    read and verified once; `batches` gathers the batches of `iter_shuffled_batches` there, in the same order.

    For a train store that fits in device memory (TrainConfig.resident_max_bytes): no reading, checking or
    shuffling on the host while the step waits."""

    def __init__(self, store: ActivationStore, device: Any, clock: StageClock | None = None) -> None:
        import torch

        self.store, self.device = store, torch.device(device)
        dtype = torch.bfloat16 if store.row_dtype == "bfloat16" else torch.float32
        self.rows = torch.empty((store.n_rows, store.d_model), dtype=dtype, device=self.device)
        for i in range(store.n_chunks):
            values = store.read_chunk("acts", i, clock=clock)
            with stage(clock, "host->device"):
                chunk = torch.from_numpy(values)
                chunk = chunk.view(torch.bfloat16) if dtype == torch.bfloat16 else chunk
                self.rows[i * store.chunk_rows : i * store.chunk_rows + len(chunk)].copy_(chunk)

    def batches(self, batch_size: int, seed: int, epoch: int = 0, start_batch: int = 0, group_chunks: int = 8,
                clock: StageClock | None = None) -> Iterator[Any]:
        """(batch_size, d) float32 tensors on the device: batch b of the epoch is batch b of iter_shuffled_batches."""
        import torch

        with stage(clock, "shuffle"):
            order = torch.from_numpy(epoch_row_order(self.store, seed, epoch, group_chunks)).to(self.device)
        for b in range(start_batch, n_batches(self.store.n_rows, batch_size)):
            with stage(clock, "shuffle"):  # the gather: the device's share of the shuffle
                batch = self.rows.index_select(0, order[b * batch_size : (b + 1) * batch_size]).float()
            yield batch


def iter_shuffled_batches(
    store: ActivationStore,
    batch_size: int,
    seed: int,
    epoch: int = 0,
    start_batch: int = 0,
    group_chunks: int = 8,
    prefetch: int = 2,
    clock: StageClock | None = None,
) -> Iterator[np.ndarray]:
    """Shuffled (batch_size, d) float32 batches for one epoch, streamed with bounded memory.

    Chunk order is permuted per (seed, epoch); groups of `group_chunks` chunks are loaded, shuffled
    row-wise with their own seeded RNG and cut into batches, the remainder carried into the next group.
    Batch b of the epoch is fully determined by (seed, epoch, b), so `start_batch` resumes exactly —
    and only the groups from the resume point on are read. A background thread reads `prefetch` groups ahead
    (each `group_chunks` whole chunks: large contiguous reads, many batches ahead of the step).
    `epoch_row_order` gives the same order as row indices (the device-resident path: `ResidentRows`).
    """
    groups = _chunk_groups(store.n_chunks, seed, epoch, group_chunks)
    sizes = [sum(min(store.chunk_rows, store.n_rows - c * store.chunk_rows) for c in g) for g in groups]
    total = n_batches(store.n_rows, batch_size)
    skip_rows = start_batch * batch_size
    first = 0
    while first < len(groups) and skip_rows >= sizes[first]:
        skip_rows -= sizes[first]
        first += 1

    def load(gi: int) -> np.ndarray:
        rows = np.concatenate([store.chunk(int(c), clock) for c in groups[gi]])
        with stage(clock, "shuffle"):
            return rows[_group_permutation(seed, epoch, gi, len(rows))]

    q: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def producer() -> None:
        try:
            for gi in range(first, len(groups)):
                if stop.is_set():
                    return
                q.put(load(gi))
        except BaseException as e:  # surface reader errors in the consumer
            q.put(e)
        q.put(None)

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    emitted = start_batch
    carry = np.empty((0, store.d_model), np.float32)
    try:
        while emitted < total:
            item = q.get()
            if item is None:
                break
            if isinstance(item, BaseException):
                raise item
            if skip_rows:
                item, skip_rows = item[skip_rows:], 0
            rows = np.concatenate([carry, item]) if len(carry) else item
            n_full = len(rows) // batch_size
            for b in range(n_full):
                if emitted >= total:
                    break
                yield rows[b * batch_size : (b + 1) * batch_size]
                emitted += 1
            carry = rows[n_full * batch_size :]
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
