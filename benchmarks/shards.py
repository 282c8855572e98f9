"""Sharded extraction speed-up: 2 shard workers in parallel vs one worker, through the real pipeline steps.

    speed-up = one-worker train extraction seconds / (2 parallel shard workers + merge) seconds      (one run)

Both sides extract the same train store (the script asserts the merged rows equal the one-worker rows) of a
random-init GPT-2 of the builtin LM's shape (or `--model DIR`) over synthetic documents (or the prepared corpus
with `--corpus`). Each side runs in fresh spawned processes, timed from after their imports (torch, transformers,
glp: paid once by a long-lived worker) to their end, model loading and the held-out store (64 rows) included:
- one worker: `glp.pipeline.build_activations` with `store.shards = 1`, once with 1 torch thread and once with
  `--threads` (default: all cores) threads;
- two workers: `glp.pipeline.build_activation_shard(k)` for k = 0, 1 in two processes at once, 1 thread each
  (one of them plans the shards, a tokenization pass, while the other waits for the plan), from the first start to
  the last end; then the merge step (`build_activations` keeps both published shards and concatenates them).

Two ratios: vs one worker on 1 thread (how well shards scale: 2.0 is perfect) and vs one worker on all cores'
threads (what sharding buys on this box over intra-op threading). On a shared machine both are lower bounds.

    python benchmarks/shards.py [--tokens 120000] [--batch-size 16] [--threads N] [--model DIR] [--corpus]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def _settings(values: dict):
    from glp.config import load_settings

    return load_settings(**values)


def _ready(threads: int) -> None:
    """Imports done before the clock starts (they cost the same on both sides; a long-lived worker pays them once)."""
    import torch
    from transformers import AutoModelForCausalLM  # noqa: F401

    import glp.pipeline  # noqa: F401

    torch.set_num_threads(threads)


def _one_worker(values: dict, threads: int, q: mp.Queue) -> None:
    _ready(threads)
    from glp import pipeline

    t0 = time.time()
    s = _settings(values)
    out = pipeline.build_activations(s, s.sources[0])
    q.put((t0, time.time(), out["train"]["seconds"]))  # the train store's own seconds (the merge's, when sharded)


def _shard_worker(values: dict, k: int, q: mp.Queue) -> None:
    _ready(1)
    from glp import pipeline

    t0 = time.time()
    s = _settings(values)
    out = pipeline.build_activation_shard(s, s.sources[0], k)
    q.put((t0, time.time(), k, out["seconds"], out["rows"]))


def _wall(results: list) -> float:
    """From the first worker's start to the last one's end (wall clock, across processes)."""
    return max(r[1] for r in results) - min(r[0] for r in results)


def _run(target, *args) -> list:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=target, args=(*a, q)) for a in args]
    for p in procs:
        p.start()
    results = [q.get() for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"a worker failed (exit code {p.exitcode})")
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokens", type=int, default=120_000, help="train rows to extract")
    ap.add_argument("--batch-size", type=int, default=16, help="documents per forward (windows: x16)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch threads of the one-worker run")
    ap.add_argument("--model", type=Path, help="a local HF causal LM (default: random GPT-2 of the builtin shape)")
    ap.add_argument("--layer", type=int, default=1)
    ap.add_argument("--corpus", action="store_true", help="documents of the prepared corpus instead of synthetic ones")
    ap.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = ap.parse_args()

    sys.path.insert(0, str(Path(__file__).parent))
    from extract import build_random_lm, corpus_texts, synthetic_texts

    from glp.config import SourceLMConfig
    from glp.data.store import ActivationStore

    tmp = Path(tempfile.mkdtemp(prefix="glp-shards-"))
    try:
        n_docs = max(2_000, args.tokens // 20)
        texts = corpus_texts(n_docs, 0) if args.corpus else synthetic_texts(n_docs, 0)
        corpus = tmp / "corpus"
        corpus.mkdir()
        for split, rows in (("train", texts), ("heldout", texts[:64])):
            with open(corpus / f"{split}.jsonl", "w") as f:
                f.writelines(json.dumps({"id": f"{split}-{i}", "text": t, "source": "bench"}) + "\n"
                             for i, t in enumerate(rows))
        (corpus / "manifest.json").write_text(json.dumps({"files": {"train.jsonl": "b", "heldout.jsonl": "b"}}))
        model = args.model or build_random_lm(tmp / "model", texts[:4_000], SourceLMConfig())
        values = {"corpus": {"path": str(corpus)}, "sources": [{"model": str(model), "layer": args.layer}],
                  "device": "cpu", "store": {"root": str(tmp / "one"), "max_tokens": args.tokens, "heldout_max_tokens": 64,
                                             "batch_size": args.batch_size, "dtype": "float32"}}
        one_1t = _wall(_run(_one_worker, (values, 1)))
        shutil.rmtree(tmp / "one")
        one_nt = _wall(_run(_one_worker, (values, args.threads)))
        two = {**values, "store": {**values["store"], "root": str(tmp / "two"), "shards": 2}}
        res = _run(_shard_worker, (two, 0), (two, 1))
        t_shards = _wall(res)
        shards = sorted((k, sec, rows) for _, _, k, sec, rows in res)
        # the merge (both shards are published: kept), then the small held-out store, as the `activations` step
        merge = _run(_one_worker, (two, 1))
        t_merge, t_concat = _wall(merge), merge[0][2]
        from glp import pipeline

        one_store = ActivationStore(pipeline.source_paths(_settings(values), _settings(values).sources[0]).store("train"))
        two_store = ActivationStore(pipeline.source_paths(_settings(two), _settings(two).sources[0]).store("train"))
        assert (one_store.rows() == two_store.rows()).all(), "the merged store differs from the one-worker store"
        total = t_shards + t_merge
        fig = {
            "rows": one_store.n_rows, "cpus": os.cpu_count(), "load_avg_1min": os.getloadavg()[0],
            "one_worker_1_thread_s": one_1t, f"one_worker_{args.threads}_threads_s": one_nt,
            "two_workers_s": t_shards, "shard_rows": [r for _, _, r in shards],
            "shard_extract_s": [s for _, s, _ in shards], "merge_step_s": t_merge, "merge_copy_s": t_concat,
            "store_mb": one_store.n_rows * one_store.d_model * 4 / 1e6,
            "speedup_vs_1_thread": one_1t / total, f"speedup_vs_{args.threads}_threads": one_nt / total,
        }
        print(f"train rows: {one_store.n_rows:,} (merged = one-worker, row for row); {os.cpu_count()} CPUs, "
              f"load average {fig['load_avg_1min']:.2f} when done")
        print(f"one worker, 1 thread:        {one_1t:7.1f} s")
        print(f"one worker, {args.threads} threads:       {one_nt:7.1f} s")
        print(f"two shard workers, 1 thread: {t_shards:7.1f} s (shards {', '.join(f'{s:.1f}' for _, s, _ in shards)} s "
              f"of extraction) + merge step {t_merge:.1f} s (the copy {t_concat:.1f} s of it)")
        print(f"2 workers / 1 worker (1 thread)  = {fig['speedup_vs_1_thread']:.2f}x speed-up")
        print(f"2 workers / 1 worker ({args.threads} threads) = {fig[f'speedup_vs_{args.threads}_threads']:.2f}x speed-up")
        if args.json:
            args.json.write_text(json.dumps(fig, indent=2) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
