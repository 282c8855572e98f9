"""Local judges for steering: concept (sentiment) and fluency (conditional NLL, distinct-n).

Concept judge, independent of the steering direction's source: a TF-IDF (word 1–2-grams) + logistic regression
sentiment classifier trained on human-rated **Amazon reviews** (rating > +0.5 vs < −0.5) and **tweets**
(positive vs negative) from the `labelled` dataset, never on the movie snippets the direction is built from.
Its P(positive) is the concept score; its accuracy and AUC on a seeded held-out split are reported with it.
VADER (vaderSentiment 3.3.2, MIT; Hutto & Gilbert 2014), a rule-based lexicon scorer, gives a second opinion.
Both read only the generated *text*, never the LLM's activations.

Fluency judge: the continuation's mean next-token NLL under the *unsteered* source LM (prompts prefilled once,
every continuation set scored against that cache), and distinct-n (unique n-grams / n-grams) of its tokens.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from glp.ci import auc_ci, bootstrap_ci
from glp.data.corpus import load_labelled
from glp.data.lm import SourceLM, pad_tokens

MOVIE_SNIPPETS = "movie_snippets.jsonl"
AMAZON_REVIEWS = "amazon_reviews.jsonl"
TWEETS = "tweets.jsonl"


# ---------------------------------------------------------------- labelled data


def judge_training_data(folder: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(texts, labels 1 = positive, source 0 = Amazon / 1 = tweet): Amazon reviews rated > +0.5 or < −0.5 and
    positive / negative tweets (neutral ones dropped), exact duplicate texts dropped (first kept)."""
    texts, labels, sources = [], [], []
    for r in load_labelled(Path(folder), AMAZON_REVIEWS):
        if abs(float(r["rating"])) > 0.5:
            texts.append(r["text"]), labels.append(int(float(r["rating"]) > 0)), sources.append(0)
    for r in load_labelled(Path(folder), TWEETS):
        if r["label"] in ("positive", "negative"):
            texts.append(r["text"]), labels.append(int(r["label"] == "positive")), sources.append(1)
    seen: set[str] = set()
    keep = [i for i, t in enumerate(texts) if not (t in seen or seen.add(t))]
    return [texts[i] for i in keep], np.array(labels)[keep], np.array(sources)[keep]


# ---------------------------------------------------------------- concept: the sentiment classifier


@dataclass
class SentimentJudge:
    """A fitted text → P(positive) classifier and its held-out report."""

    model: Any  # sklearn Pipeline(TfidfVectorizer, LogisticRegression)
    report: dict[str, Any] = field(default_factory=dict)

    def p_positive(self, texts: Sequence[str]) -> np.ndarray:
        """P(positive sentiment) of each text, (n,) in [0, 1]."""
        return self.model.predict_proba(list(texts))[:, 1].astype(np.float64)


def fit_sentiment_judge(folder: Path, seed: int = 0, test_fraction: float = 0.2, n_boot: int = 1000) -> SentimentJudge:
    """Fit the concept judge on Amazon reviews + tweets of `folder` (seeded split stratified by source and label)
    and report its held-out accuracy and ROC-AUC (95% bootstrap CIs), overall and per source."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline


    t0 = time.perf_counter()
    texts, y, src = judge_training_data(folder)
    if min(y.sum(), len(y) - y.sum()) < 4:
        raise ValueError(f"judge training data in {folder} has {int(y.sum())} positive and {int(len(y) - y.sum())} "
                         "negative texts: it needs at least 4 of each")
    idx_train, idx_test = train_test_split(np.arange(len(y)), test_size=test_fraction, random_state=seed,
                                           stratify=2 * src + y)
    model = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
        # balanced: the tweets are 2:1 negative; a balanced judge puts text without sentiment near P = 0.5
        LogisticRegression(class_weight="balanced", max_iter=1000, random_state=seed),
    )
    model.fit([texts[i] for i in idx_train], y[idx_train])
    judge = SentimentJudge(model)
    p = judge.p_positive([texts[i] for i in idx_test])
    y_test, src_test = y[idx_test], src[idx_test]
    correct = ((p > 0.5) == y_test).astype(np.float64)
    by_source = {}
    for code, name in ((0, "amazon_reviews"), (1, "tweets")):
        m = src_test == code
        if m.any():
            by_source[name] = {"n_test": int(m.sum()), "accuracy": float(correct[m].mean())}
    judge.report = {
        "kind": "TF-IDF word 1-2-grams + logistic regression (class-balanced)",
        "trained_on": "Amazon reviews (rating > +0.5 vs < -0.5) + tweets (positive vs negative); no movie snippets",
        "n_train": len(idx_train), "n_test": len(idx_test), "test_fraction": test_fraction, "seed": seed,
        "accuracy": float(correct.mean()), "accuracy_ci": bootstrap_ci(correct, n_boot, seed),
        "auc": float(roc_auc_score(y_test, p)), "auc_ci": auc_ci(y_test, p, n_boot, seed),
        "by_source": by_source, "seconds": time.perf_counter() - t0,
    }
    return judge


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_compound(texts: Sequence[str]) -> np.ndarray:
    """VADER compound score of each text, (n,) in [-1, 1]; positive = positive sentiment (the second opinion)."""
    analyzer = _vader()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)


# ---------------------------------------------------------------- fluency


def distinct_n(ids: Sequence[int], n: int = 2) -> float:
    """Unique n-grams / n-grams of a token sequence (1.0 = no repetition; 1.0 when too short to tell)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def left_pad(prompts: Sequence[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded (ids, mask, position_ids), each (B, W): every prompt ends in the last column."""
    ids, mask = pad_tokens(prompts, pad_id, left=True)
    return ids, mask, (mask.cumsum(1) - 1).clamp(min=0)


def rewind_cache(past: Any, length: int) -> None:
    """Drop the positions after the first `length` from a transformers KV cache, in place."""
    extra = past.get_seq_length() - length
    if extra > 0:
        past.crop(-extra)  # negative: tokens to remove (transformers >= 5; also accepted by 4.x)


@torch.inference_mode()
def continuation_nll_sets(
    lm: SourceLM, prompts: Sequence[list[int]], sets: Sequence[Sequence[list[int]]], batch_size: int = 64
) -> list[np.ndarray]:
    """Mean next-token NLL (nats) of each continuation given its prompt under `lm` (unsteered), for several
    continuation sets of the same prompts: each batch of prompts is prefilled once (KV cache) and every set's
    continuations are scored against it. Returns one (n,) array per set."""
    if any(len(p) < 2 for p in prompts):
        raise ValueError("every prompt needs a token after BOS: position 0 (BOS) is never scored")
    out = [np.zeros(len(prompts)) for _ in sets]
    for b in range(0, len(prompts), batch_size):
        chunk = list(prompts[b : b + batch_size])
        ids, mask, pos = left_pad(chunk, lm.pad_id)
        width = ids.shape[1]
        first = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                         position_ids=pos.to(lm.device), use_cache=True, logits_to_keep=1)
        past, last_logits = first.past_key_values, first.logits[:, -1:].float()  # (B, 1, V): predicts token 0
        for k, conts in enumerate(sets):
            conts = [list(c) for c in conts[b : b + batch_size]]
            n = max(len(c) for c in conts)
            cont = torch.full((len(chunk), n), lm.pad_id, dtype=torch.long)
            cmask = torch.zeros((len(chunk), n), dtype=torch.long)
            for i, c in enumerate(conts):
                cont[i, : len(c)] = torch.tensor(c, dtype=torch.long)
                cmask[i, : len(c)] = 1
            logits = last_logits
            if n > 1:  # tokens 1..n-1 are predicted from the continuation's own positions 0..n-2
                rewind_cache(past, width)  # back to the prompts alone
                full_mask = torch.cat([mask, cmask[:, :-1]], 1)
                cpos = pos[:, -1:] + torch.arange(1, n)
                more = lm.model(input_ids=cont[:, :-1].to(lm.device), attention_mask=full_mask.to(lm.device),
                                position_ids=cpos.to(lm.device), past_key_values=past, use_cache=True).logits
                logits = torch.cat([last_logits, more.float()], 1)  # (B, n, V)
            nll = F.cross_entropy(logits.transpose(1, 2), cont.to(lm.device), reduction="none").cpu()  # (B, n)
            out[k][b : b + len(chunk)] = ((nll * cmask).sum(1) / cmask.sum(1).clamp(min=1)).numpy()
    return out


def continuation_nll(
    lm: SourceLM, prompts: Sequence[list[int]], continuations: Sequence[list[int]], batch_size: int = 64
) -> np.ndarray:
    """Mean next-token NLL (nats) of each continuation given its prompt, under `lm` (unsteered), (n,)."""
    return continuation_nll_sets(lm, prompts, [continuations], batch_size)[0]
