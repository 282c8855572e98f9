"""Extraction speed: `glp.activations.extract_activations` vs a bare forward pass of the same model.

    ratio = extract tokens/s / bare forward tokens/s      (same model, documents, batches; one run)

Ours, timed end to end: tokenize each document, forward with an early stop after the captured block, write
the rows to a fresh Zarr store (chunked, compressed, fsynced, published). Baseline: `model(input_ids,
attention_mask)` over every block and the LM head on the same documents, already tokenized, padded and on
the device, in exactly the batches extraction makes (windows of 16 batches of documents, each window sorted
by length, as in `extract_activations`): so the baseline has the same padding and pays no I/O and no
tokenization. Tokens = non-pad tokens without the BOS = the rows extraction stores. Above 1, extraction is
faster than a bare forward (early stop saves more than tokenizing and writing cost); below 1, it is slower.

Default model: a GPT-2 with the builtin source LM's shape (`SourceLMConfig()`), random weights (speed
does not depend on them), saved with a byte-level BPE tokenizer of the same vocab and loaded through
`glp.lm.load_source_lm`. `--model DIR` benchmarks any local HF causal LM instead. Nothing is downloaded.

    python benchmarks/extract.py [--docs 384] [--batch-size 32] [--corpus] [--model DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch

from glp.activations import extract_activations, tokenize_doc
from glp.config import CorpusConfig, SourceConfig, SourceLMConfig, StoreConfig
from glp.lm import SourceLM, load_source_lm

WINDOW_BATCHES = 16  # extract_activations' default window: batch_size * 16 documents


def synthetic_texts(n: int, seed: int) -> list[str]:
    """n English-ish documents of 1-8 sentences (~5-130 tokens) over a Zipf lexicon of pseudo-words."""
    rng = random.Random(seed)
    onset = "b c d f g h l m n p r s t v w br st tr pl gr ch sh th".split()
    nucleus = "a e i o u ai ea ou oo".split()
    coda = ["", "n", "r", "s", "t", "l", "m", "nd", "st", "ck", "ng"]

    def word() -> str:
        n_syllables = rng.choice([1, 1, 2, 2, 3])
        return "".join(rng.choice(onset) + rng.choice(nucleus) + rng.choice(coda) for _ in range(n_syllables))

    lexicon = sorted({word() for _ in range(12_000)})
    rng.shuffle(lexicon)
    cum, total = [], 0.0
    for rank in range(len(lexicon)):  # Zipf: p(word of rank r) ~ 1 / r
        total += 1.0 / (rank + 1)
        cum.append(total)
    function_words = "the a of and to in is was that it for on with as by at from his her they this".split()

    def sentence() -> str:
        words = rng.choices(lexicon, cum_weights=cum, k=rng.randint(4, 16))
        words = [rng.choice(function_words) if rng.random() < 0.35 else w for w in words]
        return " ".join(words).capitalize() + rng.choice(".?!,.")

    return [" ".join(sentence() for _ in range(rng.randint(1, 8))) for _ in range(n)]


def corpus_texts(n: int, seed: int) -> list[str]:
    """A seeded sample of n documents from the prepared corpus's train split."""
    from glp.corpus import load_documents

    docs = load_documents(CorpusConfig().path, "train")
    return [d["text"] for d in random.Random(seed).sample(docs, min(n, len(docs)))]


def build_random_lm(path: Path, texts: list[str], cfg: SourceLMConfig) -> Path:
    """Byte-level BPE trained on `texts` + a random-init GPT-2 of the builtin LM's shape, saved to `path`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from glp.source_lm import train_tokenizer

    tok = train_tokenizer(texts, cfg.vocab_size, cfg.n_ctx)
    torch.manual_seed(cfg.seed)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.n_ctx, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    ))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def make_batches(lm: SourceLM, texts: list[str], cfg: StoreConfig) -> tuple[list[dict[str, torch.Tensor]], int]:
    """The padded batches `extract_activations` forwards (same windows, same length sort), on the device."""
    seqs = [s for s in (tokenize_doc(lm, t, cfg.max_seq_len) for t in texts) if len(s) > 1]
    window_docs = cfg.batch_size * WINDOW_BATCHES
    batches = []
    for w in range(0, len(seqs), window_docs):
        window = sorted(seqs[w : w + window_docs], key=lambda s: -len(s))
        for b in range(0, len(window), cfg.batch_size):
            rows = window[b : b + cfg.batch_size]
            ids = torch.full((len(rows), len(rows[0])), lm.pad_id, dtype=torch.long)  # (B, T), longest first
            mask = torch.zeros_like(ids)
            for i, s in enumerate(rows):
                ids[i, : len(s)] = torch.tensor(s)
                mask[i, : len(s)] = 1
            batches.append({"input_ids": ids.to(lm.device), "attention_mask": mask.to(lm.device)})
    n_tokens = sum(len(s) - 1 for s in seqs)  # BOS excluded
    return batches, n_tokens


def time_bare_forward(lm: SourceLM, batches: list[dict[str, torch.Tensor]]) -> float:
    """Seconds for a full forward (all blocks + LM head) over every batch."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for batch in batches:
            lm.model(**batch, use_cache=False)
    if lm.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def time_extract(lm: SourceLM, layer: int, texts: list[str], root: Path, cfg: StoreConfig) -> tuple[float, int]:
    """Seconds for `extract_activations` end to end into a fresh store (removed afterwards), and rows written."""
    out = Path(tempfile.mkdtemp(dir=root)) / "acts.zarr"
    t0 = time.perf_counter()
    res = extract_activations(lm, layer, texts, out, cfg, None, {"model": lm.path, "split": "bench"})
    seconds = time.perf_counter() - t0
    shutil.rmtree(out.parent)
    return seconds, res.n_rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="local HF model dir (default: random-init builtin-shaped GPT-2)")
    p.add_argument("--corpus", action="store_true", help="sample documents from assets/datasets/corpus (train)")
    p.add_argument("--docs", type=int, default=384, help="documents per measurement (default 384)")
    p.add_argument("--batch-size", type=int, default=StoreConfig().batch_size)
    p.add_argument("--max-seq-len", type=int, default=StoreConfig().max_seq_len)
    p.add_argument("--layers", type=int, nargs="+", help="blocks to extract (default: source default, middle, top)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory(prefix="glp_bench_extract_") as tmp:
        tmp = Path(tmp)
        # the texts also train the default model's tokenizer: enough of them to fill its vocabulary
        n_texts = args.docs if args.model else max(args.docs, 20_000 if args.corpus else 4_000)
        texts = corpus_texts(n_texts, args.seed) if args.corpus else synthetic_texts(n_texts, args.seed)
        if args.model:
            lm = load_source_lm(args.model, device=args.device)
            what = f"{args.model} (its own weights)"
        else:
            shape = SourceLMConfig()
            lm = load_source_lm(build_random_lm(tmp / "model", texts, shape), device=args.device)
            what = (f"GPT-2 with the builtin source LM's shape ({shape.n_layer} layers, d={shape.n_embd}, "
                    f"{shape.n_head} heads, vocab {shape.vocab_size}; tokenizer {len(lm.tokenizer)}), "
                    "RANDOM weights: a speed benchmark only")
        texts = texts[: args.docs]
        cfg = StoreConfig(root=tmp, batch_size=args.batch_size, max_seq_len=args.max_seq_len)
        n = lm.n_layers
        layers = args.layers or sorted({SourceConfig().layer, n // 2, n - 1} & set(range(n)))
        batches, n_tokens = make_batches(lm, texts, cfg)

        warm = 2 * cfg.batch_size  # warm up both on two batches: allocator, kernels, Zarr
        time_bare_forward(lm, batches[:2])
        for layer in layers:
            time_extract(lm, layer, texts[:warm], tmp, cfg)
        bare, ext = [], {layer: [] for layer in layers}
        for _ in range(args.repeats):  # interleaved, so drift in machine speed hits both sides alike
            bare.append(time_bare_forward(lm, batches))
            for layer in layers:
                seconds, rows = time_extract(lm, layer, texts, tmp, cfg)
                assert rows == n_tokens, f"extraction stored {rows} rows, expected {n_tokens} tokens"
                ext[layer].append(seconds)

    threads = f", {torch.get_num_threads()} threads" if lm.device.type == "cpu" else ""
    source = "corpus sample" if args.corpus else "synthetic"
    print(f"model: {what}")
    print(f"device {lm.device}{threads}; {len(texts)} {source} docs, {n_tokens:,} tokens (non-pad, BOS excluded), "
          f"batch {cfg.batch_size}, max_seq_len {cfg.max_seq_len}; median of {args.repeats} interleaved runs")
    bare_tps = n_tokens / statistics.median(bare)

    def runs(seconds: list[float]) -> str:  # the spread shows how noisy the machine was
        return " ".join(f"{x:.2f}" for x in seconds)

    print(f"bare forward (all {n} blocks + LM head, pre-tokenized): {bare_tps:>8,.0f} tok/s  [runs {runs(bare)} s]")
    for layer in layers:
        tps = n_tokens / statistics.median(ext[layer])
        print(f"extract L{layer} (stop after block {layer + 1}/{n}, + tokenize + Zarr write): {tps:>8,.0f} tok/s  "
              f"[runs {runs(ext[layer])} s]  extract L{layer} / bare forward = {tps / bare_tps:.2f} "
              f"(best-of-{args.repeats}: {min(bare) / min(ext[layer]):.2f})")


if __name__ == "__main__":
    main()
