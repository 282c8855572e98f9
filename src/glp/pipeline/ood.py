"""Out-of-manifold step: the AUROC report of the GLP score and its baselines on every off-manifold set (`ood`), and
`glp score` on a user's text."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from glp.pipeline.layout import SourceArtifacts
from glp.prior.manifold import diffusion_score
from glp.uses.ood import (
    SCORE_LABELS,
    SCORES,
    auroc_table,
    default_other_layers,
    doc_rows,
    heldout_split,
    mahalanobis_whitener,
    moved_rows,
    ood_headline,
    ood_hist_png,
    ood_roc_png,
    position_matched,
    random_directions,
    score_rows,
    shuffle_dims,
    shuffle_words,
    standardize,
)


def build_ood(settings: Any, source: Any, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Pipeline step: real held-out activations vs the off-manifold sets, every score's AUROC with CIs; written
    atomically to `<source root>/ood.json`, `ood_roc.png` and `ood_hist.png`."""
    import json
    import time
    from pathlib import Path

    from glp.artifacts import write_atomic
    from glp.data.corpus import iter_documents, load_labelled
    from glp.uses.direction import mean_activation_norm, movie_snippets, sentiment_direction

    say = log or (lambda _m: None)
    t0 = time.perf_counter()
    cfg = settings.ood
    art = SourceArtifacts(settings, source, "ood")
    paths = art.paths
    store, lm, prior = art.store("heldout"), art.lm(), art.prior("cpu")
    sae, sae_norm, _ = art.sae("cpu")
    whitener = mahalanobis_whitener(art.norm_stats().cov_normalized)
    heldout, pos_all = torch.from_numpy(store.rows()), store.provenance("position")
    n, perm = heldout_split(len(heldout), cfg)
    if n < 20:
        raise ValueError(f"the held-out store has {len(heldout)} rows: ood needs 3 x 20 (real, base of the synthetic "
                         "sets, null); raise store.heldout_max_tokens")
    real_idx, base_idx, null_idx = perm[:n], perm[n : 2 * n], perm[2 * n : 3 * n]
    pool = np.setdiff1d(np.arange(len(heldout)), base_idx)  # real rows for the position-matched references
    mean_norm = mean_activation_norm(heldout.numpy())
    layer = source.layer
    other_layers = cfg.other_layers if cfg.other_layers is not None else default_other_layers(layer, lm.n_layers)
    for x in other_layers:
        if not 0 <= x < lm.n_layers or x == layer:
            raise ValueError(f"ood.other_layers has {x}: choose layers in 0..{lm.n_layers - 1} other than {layer}")

    def scores(acts: Tensor) -> dict[str, np.ndarray]:
        return score_rows(prior, whitener, sae, sae_norm, acts, cfg)

    t1 = time.perf_counter()
    real = scores(heldout[real_idx])
    base = heldout[base_idx]
    w = sentiment_direction(lm, layer, movie_snippets(settings.steer.labelled, cfg.n_direction_texts, 2, cfg.seed),
                            settings.steer.direction_max_tokens)
    dirs = random_directions(n, prior.d_model, cfg.seed + 1)
    norm = prior.normalizer  # on the cpu: the prior was loaded there
    z_base = norm.normalize(base)
    # name -> (kind, r or layer, off-manifold raw rows, key of the real reference)
    sets: list[tuple[str, str, float | None, Tensor, str]] = [("real (other held-out rows)", "null", None,
                                                              heldout[null_idx], "heldout")]
    sets += [(f"steered r={r:g}", "steered", r, moved_rows(base, w, r * mean_norm), "heldout") for r in cfg.r_values]
    sets += [(f"noised r={r:g}", "noised", r, moved_rows(base, dirs, r * mean_norm), "heldout") for r in cfg.r_values]
    sets.append(("dims shuffled", "shuffled_dims", None,
                 norm.denormalize(shuffle_dims(z_base, cfg.seed + 2)), "heldout"))
    refs: dict[str, dict[str, np.ndarray]] = {"heldout": real}
    ref_info: dict[str, str] = {"heldout": f"{n} held-out rows (seeded shuffle)"}
    docs = [d["text"] for d in iter_documents(settings.corpus.path, "heldout", settings.corpus)]
    if other_layers:
        by_layer, _ = doc_rows(lm, [layer, *other_layers], docs, cfg.max_seq_len, n)
        refs["same_tokens"] = scores(by_layer[layer])
        ref_info["same_tokens"] = f"layer {layer} at the same {len(by_layer[layer])} held-out tokens"
        for x in other_layers:
            renorm = norm.denormalize(standardize(by_layer[x]))
            sets.append((f"layer {x}", "other_layer", float(x), renorm, "same_tokens"))
    rng = np.random.default_rng(cfg.seed + 3)
    for kind in cfg.text_sets:
        if kind == "tweets":
            rows = load_labelled(settings.steer.labelled, "tweets.jsonl")
            texts = [rows[i]["text"] for i in rng.permutation(len(rows))]
        else:
            texts = [shuffle_words(t, rng) for t in docs]
        by_layer, positions = doc_rows(lm, [layer], texts, cfg.max_seq_len, n)
        key = f"positions_{kind}"
        match = pool[position_matched(pos_all[pool], positions, cfg.seed + 4)]
        refs[key] = scores(heldout[match])
        ref_info[key] = f"{len(match)} held-out rows at the same token positions"
        sets.append((kind.replace("_", " "), "text", None, by_layer[layer], key))
    say(f"ood: {len(sets)} sets of up to {n:,} rows built; scoring ({time.perf_counter() - t1:.0f} s so far)")
    results, hist, t2 = [], {}, time.perf_counter()
    for name, kind, r, acts, ref in sets:
        off = scores(acts)
        nonfinite = {k: int((~np.isfinite(v)).sum()) for k, v in off.items()}
        table = auroc_table(refs[ref], off, cfg.n_bootstrap, cfg.seed)
        results.append({"name": name, "kind": kind, "r": r, "reference": ref, "nonfinite": nonfinite, **table})
        hist[name] = (refs[ref], off)
    say(f"ood: scored and bootstrapped {len(sets)} sets in {time.perf_counter() - t2:.0f} s")
    real_glp = real["glp"].astype(np.float64)
    report: dict[str, Any] = {
        "source": source.key, "config": cfg.model_dump(mode="json"), "n_rows": n, "mean_norm": mean_norm,
        "other_layers": other_layers, "references": ref_info, "scores": {k: SCORE_LABELS[k] for k in SCORES},
        "sets": results, "nonfinite_real": {k: int((~np.isfinite(v)).sum()) for k, v in real.items()},
        # the real held-out distribution of the GLP score: `glp score` flags tokens above its (1 - fpr) quantile
        "glp_heldout_quantiles": {f"{q:g}": float(np.quantile(real_glp, q)) for q in (0.5, 0.9, 1 - cfg.fpr, 0.99)},
        "seconds": {"total": time.perf_counter() - t0},
    }
    report["headline"] = ood_headline(report)
    root = Path(paths.root)
    write_atomic(root / "ood.json", json.dumps(report, indent=1, default=float))
    roc, hst = ood_roc_png(hist), ood_hist_png(hist)
    write_atomic(root / "ood_roc.png", roc)
    write_atomic(root / "ood_hist.png", hst)
    return {**report, "path": str(root / "ood.json"), "roc_png": roc, "hist_png": hst}


def score_text(settings: Any, source: Any, text: str) -> dict[str, Any]:
    """Per-token GLP diffusion scores of `text` at the source's layer, each with its percentile among real held-out
    tokens (the `ood` asset's reference rows: same seeded shuffle, same noise) and a flag above the (1 − ood.fpr)
    quantile."""
    from glp.data.activations import forward_batch, tokenize_doc

    cfg = settings.ood
    art = SourceArtifacts(settings, source, "glp score")
    store, lm, prior = art.store("heldout"), art.lm(), art.prior("cpu")
    seq = tokenize_doc(lm, text, cfg.max_seq_len)
    if len(seq) < 2:
        raise ValueError(f"{text!r} has no token to score (empty after tokenization): pass some text")
    acts, _, _ = forward_batch(lm, source.layer, [seq])
    norm = prior.normalizer  # on the cpu: the prior was loaded there
    scores = diffusion_score(prior.denoiser, norm.normalize(acts[0, 1:]), cfg.ts, cfg.seed).numpy()
    heldout = store.rows()
    n, perm = heldout_split(len(heldout), cfg)
    real_idx = perm[: n or len(heldout)]  # a store too small for the asset's three sets: every row
    ref = np.sort(diffusion_score(prior.denoiser, norm.normalize(torch.from_numpy(heldout[real_idx])), cfg.ts,
                                  cfg.seed).numpy())
    threshold = float(np.quantile(ref, 1 - cfg.fpr))
    pct = np.searchsorted(ref, scores, side="right") / len(ref) * 100
    tokens = [lm.tokenizer.decode([i]) for i in seq[1:]]
    return {"source": source.key, "tokens": tokens, "scores": scores.tolist(), "percentile": pct.tolist(),
            "off_manifold": (scores > threshold).tolist(), "threshold": threshold, "fpr": cfg.fpr,
            "n_reference": len(ref), "ts": list(cfg.ts)}
