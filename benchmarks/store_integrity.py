"""Store integrity: how many injected corruptions verification catches, and what verification costs the loader.

1. Injection: a temp store of random rows (real Zarr, Blosc lz4 chunks, as extraction writes) is copied and
   corrupted N times per kind — a flipped bit, a truncated chunk file, two swapped chunk files — over every
   array (acts and the provenance arrays). Each copy is checked with `ActivationStore.verify()`. A corruption
   is *detected* when verify names the corrupted array and chunk; *harmless* when it goes unnoticed but every
   decoded value is intact (a flip in bytes the codec ignores); anything else is *missed* (must be 0).
2. Cost: rows/s of the training loader (`iter_shuffled_batches`, one epoch) on the same store with
   verification on and off, interleaved 3 times; prints `verify on / off = X.XX` (1.0 = free).
   With `--store PATH` the cost is measured on an existing store (e.g. the default source's train store).

    .venv/bin/python benchmarks/store_integrity.py [--trials 30] [--rows 200000] [--d 576] [--store PATH]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from glp.data.loader import iter_shuffled_batches
from glp.data.store import PROVENANCE, ActivationStore, StoreWriter


def make_store(path: Path, n: int, d: int, chunk_rows: int) -> Path:
    rng = np.random.default_rng(0)
    w = StoreWriter(path, d, chunk_rows, {"model": "bench"})
    for i in range(0, n, 8192):
        k = min(8192, n - i)
        w.append(rng.normal(size=(k, d)).astype(np.float32), np.arange(i, i + k), rng.integers(1, 512, k).astype(np.int32),
                 rng.integers(0, 50_000, k).astype(np.int32))
        w.commit(i + k)
    return w.close()


def inject(kind: str, store: Path, name: str, i: int, rng: np.random.Generator) -> None:
    """Corrupt chunk i of array `name` in place: flip one random bit, truncate the file at a random byte, or swap it
    with another chunk file of the same array."""
    s = ActivationStore(store, verify=False)
    f = s.chunk_path(name, i)
    data = bytearray(f.read_bytes())
    if kind == "bitflip":
        pos = int(rng.integers(0, len(data)))
        data[pos] ^= 1 << int(rng.integers(0, 8))
        f.write_bytes(bytes(data))
    elif kind == "truncate":
        f.write_bytes(bytes(data[: int(rng.integers(0, len(data)))]))
    else:  # swap with another chunk of the same array
        g = s.chunk_path(name, (i + 1 + int(rng.integers(0, s.n_chunks - 1))) % s.n_chunks)
        a, b = f.read_bytes(), g.read_bytes()
        f.write_bytes(b)
        g.write_bytes(a)


def flip_silently(store: Path, i: int) -> None:
    """Flip one bit of the acts chunk i file so that it still decodes, to other values: the corruption no codec
    notices, which only the checksum catches."""
    from glp.data.store import StoreCorrupt

    f = ActivationStore(store, verify=False).chunk_path("acts", i)
    data, values = f.read_bytes(), ActivationStore(store, verify=False).chunk(i)
    for pos in range(len(data) - 1, 0, -1):
        trial = bytearray(data)
        trial[pos] ^= 0x10
        f.write_bytes(bytes(trial))
        try:
            if not np.array_equal(ActivationStore(store, verify=False).chunk(i), values):
                return
        except StoreCorrupt:
            continue
    raise AssertionError(f"no bit flip of {f} decodes silently")


def injection(tmp: Path, trials: int) -> dict[str, dict[str, int]]:
    clean = make_store(tmp / "clean.zarr", 20 * 1024, 64, 1024)
    ref = ActivationStore(clean, verify=False)
    truth = {k: ref.group[k][:] for k in ("acts", *PROVENANCE)}
    out = {}
    for kind in ("bitflip", "truncate", "swap"):
        rng = np.random.default_rng({"bitflip": 1, "truncate": 2, "swap": 3}[kind])
        counts = {"injected": 0, "detected": 0, "harmless": 0, "missed": 0}
        for t in range(trials):
            name, i = ("acts", *PROVENANCE)[t % 4], int(rng.integers(0, ref.n_chunks))
            bad = tmp / f"bad{t}.zarr"
            shutil.copytree(clean, bad)
            inject(kind, bad, name, i, rng)
            problems = ActivationStore(bad).verify()
            counts["injected"] += 1
            if any(p["array"] == name and p["chunk"] == i for p in problems):
                counts["detected"] += 1
            else:
                s = ActivationStore(bad, verify=False)
                intact = all(np.array_equal(s.group[k][:], truth[k]) for k in truth)
                counts["harmless" if intact and not problems else "missed"] += 1
            shutil.rmtree(bad)
        out[kind] = counts
    return out


def loader_rows_per_s(path: Path, verify: bool, batch_size: int) -> float:
    store = ActivationStore(path, verify=verify)
    t0 = time.perf_counter()
    rows = sum(len(b) for b in iter_shuffled_batches(store, batch_size, seed=0))
    return rows / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=30, help="injections per kind (3 kinds)")
    ap.add_argument("--rows", type=int, default=200_000, help="rows of the temp store for the cost measurement")
    ap.add_argument("--d", type=int, default=576, help="row width of the temp store (SmolLM2-135M: 576)")
    ap.add_argument("--store", type=Path, default=None, help="measure the cost on this existing store instead")
    ap.add_argument("--batch-size", type=int, default=512)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        counts = injection(tmp, args.trials)
        total = {k: sum(c[k] for c in counts.values()) for k in ("injected", "detected", "harmless", "missed")}
        for kind, c in counts.items():
            print(f"{kind:9s} injected {c['injected']:3d}  detected {c['detected']:3d}  harmless {c['harmless']:3d}  "
                  f"missed {c['missed']:3d}")
        print(f"all       injected {total['injected']:3d}  detected {total['detected']:3d}  harmless "
              f"{total['harmless']:3d}  missed {total['missed']:3d}")
        path = args.store or make_store(tmp / "cost.zarr", args.rows, args.d, 4096)
        store = ActivationStore(path)
        print(f"\nloader cost on {path} ({store.n_rows:,} rows x {store.d_model}, {store.n_chunks} chunks)")
        loader_rows_per_s(path, True, args.batch_size)  # warm the page cache
        on, off = [], []
        for _ in range(3):
            off.append(loader_rows_per_s(path, False, args.batch_size))
            on.append(loader_rows_per_s(path, True, args.batch_size))
        print(f"rows/s verify off {statistics.median(off):,.0f}, on {statistics.median(on):,.0f}")
        print(f"verify on / off = {statistics.median(on) / statistics.median(off):.2f}")


if __name__ == "__main__":
    main()
