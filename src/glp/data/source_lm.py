"""The builtin source LM (DATA.md option 2): a small GPT-2-style causal LM trained on the corpus train split.

No pretrained causal LM ships offline, so the pipeline trains its own: a byte-level BPE tokenizer
(`<|endoftext|>` is bos = eos = pad; the tokenizer prepends it, so `tokenizer(text).input_ids` is
`[bos] + tokens`) and a `GPT2LMHeadModel`, trained with plain torch on random windows of `n_ctx` tokens drawn
from the concatenated train documents (each document preceded by the separator token). It is saved with
`save_pretrained`, so every later step loads it like any user model:
`AutoModelForCausalLM.from_pretrained(dir)` and `AutoTokenizer.from_pretrained(dir)`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from glp.artifacts import publish_dir, staging_dir
from glp.config import CorpusConfig, SourceLMConfig, config_hash
from glp.data.corpus import corpus_hash, load_documents

EOT = "<|endoftext|>"
REPORT = "train_report.json"
SAMPLE_PROMPTS = ("The dog", "A person who", "money (noun):", "run (verb):", "Life is")
WEIGHT_DECAY = 0.1  # on matrices only (nanoGPT's choice); biases, LayerNorms and position tables are not decayed
MIN_LR_RATIO = 0.1  # cosine schedule floor, as for the prior (DESIGN.md)
BETAS = (0.9, 0.95)
GRAD_CLIP = 1.0
N_LOSS_POINTS = 100  # loss-curve resolution: mean training loss over each of this many step intervals


def source_lm_dir(root: Path, cfg: SourceLMConfig, corpus_hash: str) -> Path:
    """Where the builtin LM for this config and corpus lives: `root/source_lm/<hash>`."""
    key = hashlib.sha256(f"{config_hash(cfg)}:{corpus_hash}".encode()).hexdigest()[:12]
    return Path(root) / "source_lm" / key


def load_report(out_dir: Path) -> dict | None:
    """The training report of a complete model folder, or None if there is none."""
    path = Path(out_dir) / REPORT
    if not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def train_tokenizer(texts: Sequence[str], vocab_size: int, n_ctx: int):
    """Byte-level BPE trained on `texts`, wrapped as a `PreTrainedTokenizerFast` that prepends `<|endoftext|>`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=[EOT],  # id 0
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer, length=len(texts))
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single=f"{EOT} $A", pair=f"{EOT} $A {EOT} $B", special_tokens=[(EOT, 0)]),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOT, eos_token=EOT, pad_token=EOT, model_max_length=n_ctx
    )


def _encode(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """`[bos] + tokens` for each text (the tokenizer's post-processor adds the bos)."""
    return tokenizer(list(texts), add_special_tokens=True, verbose=False)["input_ids"]


def _lr_at(step: int, cfg: SourceLMConfig) -> float:
    """Linear warmup, then cosine decay to MIN_LR_RATIO * lr."""
    warmup = max(1, round(cfg.warmup_frac * cfg.steps))
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, cfg.steps - warmup)
    return cfg.lr * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def _heldout_nll(model, ids: list[list[int]], batch_size: int = 64) -> tuple[float, int]:
    """Token-weighted mean NLL (nats) of every token after the bos, and the number of tokens scored."""
    import torch
    import torch.nn.functional as F

    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))  # similar lengths per batch: little padding
    total, count = 0.0, 0
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            rows = [ids[i] for i in order[start : start + batch_size]]
            width = max(len(r) for r in rows)
            x = torch.zeros(len(rows), width, dtype=torch.long)  # (B, T); padding = 0 = eot, masked below
            mask = torch.zeros(len(rows), width, dtype=torch.long)
            for j, r in enumerate(rows):
                x[j, : len(r)] = torch.tensor(r)
                mask[j, : len(r)] = 1
            logits = model(input_ids=x, attention_mask=mask).logits[:, :-1]  # (B, T-1, V)
            nll = F.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")  # (B, T-1)
            keep = mask[:, 1:].bool()
            total += nll[keep].double().sum().item()
            count += int(keep.sum())
    return total / count, count


def _unigram_nll(train_ids: list[list[int]], heldout_ids: list[list[int]], vocab: int) -> float:
    """Mean NLL of the held-out tokens under add-one-smoothed train token frequencies (the baseline)."""
    import torch

    counts = torch.ones(vocab, dtype=torch.float64)
    for r in train_ids:
        counts += torch.bincount(torch.tensor(r[1:]), minlength=vocab).double()
    logp = (counts / counts.sum()).log()
    targets = torch.tensor([t for r in heldout_ids for t in r[1:]])
    return -logp[targets].mean().item()


def _samples(model, tokenizer, seed: int, prompts: Sequence[str] = SAMPLE_PROMPTS, max_new_tokens: int = 40) -> list[dict]:
    """Seeded top-k samples from fixed prompts, to show the model writes English."""
    import torch

    out = []
    for i, prompt in enumerate(prompts):
        torch.manual_seed(seed + i)
        ids = tokenizer(prompt, return_tensors="pt")
        room = model.config.n_positions - ids["input_ids"].shape[1]  # never run past the position table
        with torch.inference_mode():
            gen = model.generate(
                **ids, do_sample=True, top_k=50, temperature=0.8, max_new_tokens=min(max_new_tokens, room),
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            )
        out.append({"prompt": prompt, "text": tokenizer.decode(gen[0], skip_special_tokens=True)})
    return out


def train_source_lm(
    corpus_path: Path, cfg: SourceLMConfig, out_dir: Path, log: Callable[[str], None] | None = None,
    corpus_cfg: CorpusConfig | None = None,
) -> dict:
    """Train the builtin LM on the corpus train split and publish it at `out_dir`; return its report.

    A complete `out_dir` trained from the same config and corpus is reused as is (no retraining).
    """
    import torch
    import torch.nn.functional as F
    from transformers import GPT2Config, GPT2LMHeadModel

    log = log or (lambda msg: None)
    out_dir = Path(out_dir)
    chash, cfg_hash = corpus_hash(corpus_path, corpus_cfg), config_hash(cfg)
    cached = load_report(out_dir)
    if cached and cached.get("config_hash") == cfg_hash and cached.get("corpus_hash") == chash:
        log(f"source LM {out_dir} is up to date (config {cfg_hash}, corpus {chash[:12]}): not retraining")
        return cached

    t_start = time.perf_counter()
    train_texts = [d["text"] for d in load_documents(corpus_path, "train", corpus_cfg)]
    heldout_texts = [d["text"] for d in load_documents(corpus_path, "heldout", corpus_cfg)]
    tokenizer = train_tokenizer(train_texts, cfg.vocab_size, cfg.n_ctx)
    vocab = len(tokenizer)
    train_ids = _encode(tokenizer, train_texts)
    heldout_ids = [r[: cfg.n_ctx] for r in _encode(tokenizer, heldout_texts)]
    heldout_ids = [r for r in heldout_ids if len(r) > 1]
    stream = torch.tensor([t for r in train_ids for t in r], dtype=torch.long)  # (n_tokens,) docs after their bos
    if len(stream) <= cfg.n_ctx + 1:
        raise ValueError(f"corpus {corpus_path} has {len(stream)} train tokens: need more than n_ctx + 1 = {cfg.n_ctx + 1}")
    log(f"tokenizer: vocab {vocab}, {len(stream):,} train tokens, {len(heldout_ids)} held-out docs "
        f"({time.perf_counter() - t_start:.1f}s)")

    torch.manual_seed(cfg.seed)
    bos = tokenizer.bos_token_id
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=vocab, n_positions=cfg.n_ctx, n_embd=cfg.n_embd, n_layer=cfg.n_layer, n_head=cfg.n_head,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,  # short single-pass training: no dropout
        bos_token_id=bos, eos_token_id=bos, pad_token_id=bos,
    ))
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2 and p is not model.transformer.wpe.weight]
    no_decay = [p for p in model.parameters() if not any(p is q for q in decay)]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": WEIGHT_DECAY}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr, betas=BETAS,
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    offsets = torch.arange(cfg.n_ctx + 1)
    every = max(1, cfg.steps // N_LOSS_POINTS)
    curve: list[tuple[int, float]] = []
    running = 0.0
    t_train = time.perf_counter()
    model.train()
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, cfg)
        starts = torch.randint(0, len(stream) - cfg.n_ctx - 1, (cfg.batch_size, 1), generator=gen)
        window = stream[starts + offsets]  # (B, n_ctx + 1)
        logits = model(input_ids=window[:, :-1]).logits  # (B, n_ctx, V)
        loss = F.cross_entropy(logits.reshape(-1, vocab), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        opt.step()
        running += loss.item()
        if (step + 1) % every == 0 or step + 1 == cfg.steps:
            n = (step % every) + 1
            curve.append((step + 1, running / n))
            running = 0.0
            if len(curve) % 10 == 0 or step + 1 == cfg.steps:
                log(f"step {step + 1}/{cfg.steps} loss {curve[-1][1]:.3f} ({time.perf_counter() - t_train:.0f}s)")
    train_seconds = time.perf_counter() - t_train

    heldout_nll, heldout_tokens = _heldout_nll(model, heldout_ids)
    unigram_nll = _unigram_nll(train_ids, heldout_ids, vocab)
    samples = _samples(model, tokenizer, cfg.seed)
    report = {
        "config": cfg.model_dump(mode="json"),
        "config_hash": cfg_hash,
        "corpus_hash": chash,
        "vocab_size": vocab,
        "n_params": n_params,
        "train_tokens": len(stream),
        "steps": cfg.steps,
        "tokens_seen": cfg.steps * cfg.batch_size * cfg.n_ctx,
        "epochs_seen": cfg.steps * cfg.batch_size * cfg.n_ctx / len(stream),
        "loss_curve": [list(point) for point in curve],
        "heldout_perplexity": math.exp(heldout_nll),
        "unigram_perplexity": math.exp(unigram_nll),
        "heldout_tokens": heldout_tokens,
        "heldout_rule": f"heldout.jsonl docs as [bos] + tokens truncated to n_ctx={cfg.n_ctx}; every token after bos scored",
        "samples": samples,
        "train_seconds": train_seconds,
        "seconds": time.perf_counter() - t_start,
        "torch_threads": torch.get_num_threads(),
    }
    log(f"held-out perplexity {report['heldout_perplexity']:.1f} (unigram {report['unigram_perplexity']:.1f}), "
        f"{report['seconds']:.0f}s")
    _save(model, tokenizer, report, out_dir)
    return report


def _save(model, tokenizer, report: dict, out_dir: Path) -> None:
    """Write model, tokenizer and report into a temp sibling folder, then rename it into place."""
    with staging_dir(out_dir) as tmp:  # removed if anything below fails; dead runs' temp folders first
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")  # written last
        publish_dir(tmp, out_dir)  # fsyncs, then renames
