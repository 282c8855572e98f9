"""The steering direction: DiffMean of last-token activations of positive vs negative movie snippets, its
held-out AUC, the mean activation norm that scales α, and the default prompts."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glp.ci import auc_ci
from glp.data.activations import forward_batch, tokenize_doc
from glp.data.corpus import iter_documents, load_labelled
from glp.data.lm import SourceLM
from glp.uses.generate import max_positions
from glp.uses.judges import MOVIE_SNIPPETS


def first_sentence(text: str, max_words: int = 12) -> str:
    """The text's first sentence, cut to at most `max_words` words: the first line or sentence piece that ends in
    . ! or ? (so a headline line above an article is passed over), else its first piece."""
    pieces = [p.strip() for p in re.split(r"(?<=[.!?])\s+|\n+", text.strip()) if p.strip()]
    head = next((p for p in pieces if p[-1] in ".!?"), pieces[0] if pieces else "")
    return " ".join(head.split()[:max_words])


def default_prompts(corpus: Path, n: int, corpus_cfg: Any = None, max_words: int = 12,
                    min_words: int = 4) -> list[str]:
    """Neutral prompts: first sentences (<= max_words words) of the first `n` held-out BBC news documents, filled
    from other held-out documents' first sentences when there are fewer BBC ones; sentences under `min_words`
    words and repeats are skipped. `corpus_cfg` (a CorpusConfig) splits a user corpus as the pipeline does."""
    bbc: list[str] = []
    other: list[str] = []
    seen: set[str] = set()
    for doc in iter_documents(corpus, "heldout", corpus_cfg):
        s = first_sentence(doc["text"], max_words)
        if len(s.split()) < min_words or s in seen:
            continue
        pool = bbc if doc.get("source") == "bbc" else other
        if len(pool) < n:
            pool.append(s)
            seen.add(s)
        if len(bbc) >= n:
            break
    prompts = (bbc + other)[:n]
    if len(prompts) < 2:
        raise ValueError(f"only {len(prompts)} usable prompt(s) (first sentences of >= {min_words} words) in the "
                         f"held-out documents of {corpus}: rebuild the corpus or set `steer.prompts`")
    return prompts


@dataclass
class Snippets:
    """Human-rated movie snippets: the direction half by class (capped) and the probe half with labels."""

    pos: list[str]  # use == "direction", rating >= +1
    neg: list[str]  # use == "direction", rating <= -1
    probe_texts: list[str]  # use == "probe"
    probe_labels: np.ndarray  # (n,) 1 = positive


def movie_snippets(folder: Path, n_direction: int, n_probe: int, seed: int) -> Snippets:
    """Read `<folder>/movie_snippets.jsonl`; keep at most `n_direction` direction texts and `n_probe` probe texts
    per class (seeded choice, file order kept)."""
    rows = [r for r in load_labelled(Path(folder), MOVIE_SNIPPETS) if r["text"].strip() and abs(float(r["rating"])) >= 1]
    rng = np.random.default_rng(seed)

    def cap(texts: list[str], k: int) -> list[str]:
        return texts if len(texts) <= k else [texts[i] for i in sorted(rng.choice(len(texts), k, replace=False))]

    def pick(use: str, positive: bool) -> list[str]:
        return [r["text"] for r in rows if r["use"] == use and (float(r["rating"]) > 0) == positive]

    pos, neg = cap(pick("direction", True), n_direction), cap(pick("direction", False), n_direction)
    ppos, pneg = cap(pick("probe", True), n_probe), cap(pick("probe", False), n_probe)
    counts = {"direction": (len(pos), len(neg)), "probe": (len(ppos), len(pneg))}
    if min(*counts["direction"], *counts["probe"]) < 2:
        raise ValueError(f"{folder / MOVIE_SNIPPETS}: need at least 2 positive and 2 negative snippets for each of "
                         f"`direction` and `probe`, found (positive, negative) {counts}: rebuild `dvc repro labelled`")
    return Snippets(pos, neg, ppos + pneg, np.array([1] * len(ppos) + [0] * len(pneg)))


@torch.inference_mode()
def last_token_acts(lm: SourceLM, layer: int, texts: Sequence[str], max_tokens: int = 64,
                    batch_size: int = 64) -> Tensor:
    """Block `layer`'s residual output at the last token of each text (`[BOS] + tokens` truncated to
    `max_tokens`; never BOS), (n, d) float32 on cpu. Batches are length-sorted; rows come back in text order."""
    seqs = [tokenize_doc(lm, t, min(max_tokens, max_positions(lm) or max_tokens)) for t in texts]
    if any(len(s) < 2 for s in seqs):
        raise ValueError("every text needs a token after BOS (position 0 is never used)")
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = torch.empty(len(seqs), lm.d_model)
    for b in range(0, len(order), batch_size):
        idx = order[b : b + batch_size]
        acts, _, mask = forward_batch(lm, layer, [seqs[i] for i in idx])  # (B, T, d) right-padded
        out[idx] = acts[torch.arange(len(idx)), mask.sum(1) - 1]
    return out


def diffmean_direction(acts_a: Tensor, acts_b: Tensor) -> Tensor:
    """Unit vector (d,) along mean(acts_a) - mean(acts_b)."""
    w = acts_a.float().mean(0) - acts_b.float().mean(0)
    return w / w.norm().clamp(min=1e-12)


def sentiment_direction(lm: SourceLM, layer: int, snippets: Snippets, max_tokens: int = 64) -> Tensor:
    """DiffMean positive − negative movie-snippet direction at `layer`, (d,) unit norm."""
    return diffmean_direction(last_token_acts(lm, layer, snippets.pos, max_tokens),
                              last_token_acts(lm, layer, snippets.neg, max_tokens))


def direction_auc(lm: SourceLM, layer: int, w: Tensor, snippets: Snippets, max_tokens: int = 64,
                  n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """ROC-AUC (95% bootstrap CI) of the projection on w separating the held-out probe snippets by sign of rating:
    does the direction read sentiment at all on text it was not built from? (0.5 = no.)"""
    from sklearn.metrics import roc_auc_score

    scores = (last_token_acts(lm, layer, snippets.probe_texts, max_tokens) @ w).numpy()
    y = snippets.probe_labels
    return {"auc": float(roc_auc_score(y, scores)), "auc_ci": auc_ci(y, scores, n_boot, seed),
            "n_probe": [int(y.sum()), int(len(y) - y.sum())],
            "n_direction": [len(snippets.pos), len(snippets.neg)]}


def mean_activation_norm(acts: np.ndarray | Tensor) -> float:
    """Mean L2 norm of activation rows (n, d): the unit of the steering strength r."""
    return float(torch.as_tensor(np.asarray(acts), dtype=torch.float64).norm(dim=1).mean())
