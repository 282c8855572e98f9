"""Local judges for steering: concept (sentiment) and fluency (conditional NLL, distinct-n), plus CIs.

Concept judge: VADER (vaderSentiment 3.3.2, MIT; Hutto & Gilbert 2014) — a rule-based lexicon scorer that
ships its lexicon inside the wheel, runs offline, is deterministic and reads only the generated *text*, never
the LLM's activations (so steering cannot game it through the representation it edits). Its compound score is
in [-1, 1]. Fluency judge: the continuation's mean next-token NLL under the *unsteered* source LM, and
distinct-n (unique n-grams / n-grams) of its tokens as a repetition measure.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from glp.lm import SourceLM


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment_lexicon() -> dict[str, float]:
    """VADER's word -> valence map (about -4 to +4)."""
    return dict(_vader().lexicon)


def sentiment_scores(texts: Sequence[str]) -> np.ndarray:
    """VADER compound score of each text, (n,) in [-1, 1]; positive = positive sentiment."""
    analyzer = _vader()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], dtype=np.float64)


def distinct_n(ids: Sequence[int], n: int = 2) -> float:
    """Unique n-grams / n-grams of a token sequence (1.0 = no repetition; 1.0 when too short to tell)."""
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


@torch.inference_mode()
def continuation_nll(
    lm: SourceLM, prompts: Sequence[list[int]], continuations: Sequence[list[int]], batch_size: int = 32
) -> np.ndarray:
    """Mean next-token NLL (nats) of each continuation given its prompt, under `lm` (unsteered), (n,)."""
    out = np.zeros(len(prompts))
    for b in range(0, len(prompts), batch_size):
        seqs = [list(p) + list(c) for p, c in zip(prompts[b : b + batch_size], continuations[b : b + batch_size])]
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), lm.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        target = torch.zeros_like(ids, dtype=torch.bool)  # positions whose *next* token is a continuation token
        for i, (s, p) in enumerate(zip(seqs, prompts[b : b + batch_size])):
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
            target[i, len(p) - 1 : len(s) - 1] = True
        logits = lm.model(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device), use_cache=False).logits
        nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), ids[:, 1:].to(lm.device), reduction="none")
        t = target[:, :-1].to(lm.device)
        out[b : b + len(seqs)] = ((nll * t).sum(1) / t.sum(1).clamp(min=1)).cpu().numpy()
    return out
