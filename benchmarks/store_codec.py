"""Which chunk codec to store activations with: Blosc lz4 + shuffle vs raw bytes, for float32 and bfloat16 rows.

    write ratio = raw rows/s written / blosc rows/s written     (StoreWriter: append, commit, close = CRC read-back)
    read ratio  = raw rows/s read / blosc rows/s read           (ActivationStore.rows, every chunk verified)
    compression = bytes of the rows / bytes on disk

Rows are real activations: the default source (SmolLM2-135M, layer 15) extracted in bfloat16 over `--docs` corpus
documents (synthetic text without a prepared corpus), or the rows of `--store PATH`. Each case is written and read
`--repeats` times (median). Nothing is downloaded.

    python benchmarks/store_codec.py [--docs 512] [--store PATH] [--repeats 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from glp.data.store import ActivationStore, StoreWriter


def write_rows(path: Path, bits_or_f32: np.ndarray, row_dtype: str, codec: str, chunk_rows: int) -> float:
    """Seconds to write and publish a store of these rows (in windows of 4096 rows, as extraction commits)."""
    n = len(bits_or_f32)
    zeros = np.zeros(n, np.int32)
    t0 = time.perf_counter()
    w = StoreWriter(path, bits_or_f32.shape[1], chunk_rows, {"model": "bench"}, row_dtype=row_dtype, codec=codec)
    for i in range(0, n, 4096):
        w.append(bits_or_f32[i : i + 4096], np.arange(i, min(i + 4096, n)), zeros[i : i + 4096], zeros[i : i + 4096])
        w.commit(min(i + 4096, n))
    w.close()
    return time.perf_counter() - t0


def default_rows(docs: int) -> np.ndarray:
    """bfloat16 activations of the default source as float32 (n, 576)."""
    import torch  # noqa: F401

    from benchmarks.extract import corpus_texts, default_model_dir, synthetic_texts
    from glp.config import CorpusConfig, SourceConfig, StoreConfig
    from glp.data.activations import extract_activations
    from glp.data.lm import load_source_lm

    use_corpus = (CorpusConfig().path / "train.jsonl").is_file()
    texts = corpus_texts(docs, 0) if use_corpus else synthetic_texts(docs, 0)
    lm = load_source_lm(default_model_dir(), device="cpu", dtype="bfloat16")
    with tempfile.TemporaryDirectory() as tmp:
        res = extract_activations(lm, SourceConfig().layer, texts, Path(tmp) / "a.zarr", StoreConfig(), None, {})
        return ActivationStore(res.path).rows()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--docs", type=int, default=512)
    p.add_argument("--store", type=Path, help="measure on this store's rows instead")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--chunk-rows", type=int, default=4096)
    args = p.parse_args()
    rows = ActivationStore(args.store).rows() if args.store else default_rows(args.docs)
    bits = (rows.view(np.uint32) >> 16).astype(np.uint16)  # rows from a bf16 extraction: exact
    print(f"{len(rows):,} rows of width {rows.shape[1]} ({'store ' + str(args.store) if args.store else 'default source, bf16'}); "
          f"chunks of {args.chunk_rows} rows; median of {args.repeats}")
    speed: dict[tuple[str, str], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory(prefix="glp_bench_codec_") as tmp:
        for row_dtype, values in (("float32", rows), ("bfloat16", bits)):
            for codec in ("blosc-lz4", "raw"):
                w_s, r_s, size = [], [], 0
                for r in range(args.repeats):
                    path = Path(tmp) / f"{row_dtype}-{codec}-{r}.zarr"
                    w_s.append(write_rows(path, values, row_dtype, codec, args.chunk_rows))
                    store = ActivationStore(path)
                    t0 = time.perf_counter()
                    back = store.rows()
                    r_s.append(time.perf_counter() - t0)
                    assert np.array_equal(back, rows), "rows changed on the way through the store"
                    size = sum(f.stat().st_size for f in (path / "acts").rglob("*") if f.is_file())
                    shutil.rmtree(path)
                w, rd = statistics.median(w_s), statistics.median(r_s)
                speed[row_dtype, codec] = (len(rows) / w, len(rows) / rd)
                print(f"{row_dtype:>8} {codec:>9}: write {len(rows) / w:>9,.0f} rows/s, read (verified) "
                      f"{len(rows) / rd:>9,.0f} rows/s, compression {values.nbytes / size:.2f}x")
        for row_dtype in ("float32", "bfloat16"):
            (bw, br), (rw, rr) = speed[row_dtype, "blosc-lz4"], speed[row_dtype, "raw"]
            print(f"{row_dtype}: raw / blosc-lz4 = {rw / bw:.2f} (write), {rr / br:.2f} (read)")
        (fw, fr), (hw, hr) = speed["float32", "blosc-lz4"], speed["bfloat16", "raw"]
        print(f"bfloat16 raw / float32 blosc-lz4 (before) = {hw / fw:.2f} (write), {hr / fr:.2f} (read)")


if __name__ == "__main__":
    main()
