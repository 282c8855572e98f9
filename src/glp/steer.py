"""On-manifold steering (SDEdit with the GLP prior) and its concept–fluency Pareto report.

    a' = a + alpha * w,   alpha = r * (mean activation norm at the layer),   w unit (DiffMean)
    GLP: z = normalize(a'); noise z to t_start; integrate the schedule's levels below t_start to 0; denormalize.

During generation only the newest position is edited at each forward pass (the prompt's last position on the
first pass, then each new token's); with the KV cache, earlier edits persist through the cached keys/values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from glp.config import SteerConfig
from glp.flow import euler_schedule, interpolate, project_on_manifold
from glp.artifacts import write_atomic
from glp.evaluate import bootstrap_ci
from glp.judges import continuation_nll, distinct_n, sentiment_lexicon, sentiment_scores
from glp.lm import SourceLM
from glp.prior import Prior

Edit = Callable[[Tensor], Tensor]  # (B, d) newest-position activations -> edited (B, d)

DEFAULT_PROMPTS = [
    "I think that", "The weather today", "My friend said", "When we arrived at the house",
    "The story of the", "He looked at the", "In the morning we", "The food was",
    "This book is", "She told me that", "Life is", "The city at night",
    "Our new neighbour", "The meeting ended", "A man walked into", "The old house",
]
"""Neutral openings (no sentiment word), continued by every steering setting."""

# Texts whose last token carries the sentiment: the DiffMean reads last-token activations.
_TEMPLATES = ["It was {w}", "I feel {w}", "The day was {w}", "That is so {w}", "She said it was {w}",
              "Everything seemed {w}", "Life is {w}", "The news was {w}"]


# ---------------------------------------------------------------- DiffMean direction


def sentiment_texts(
    n: int, seed: int = 0, min_valence: float = 2.0, known: Callable[[str], bool] | None = None
) -> tuple[list[str], list[str]]:
    """n positive and n negative templated texts, words drawn (seeded) from VADER's strongest lexicon entries.

    `known(word)` restricts the words (e.g. to single tokens of the LM's vocabulary: words it has learned).
    """
    lex = sentiment_lexicon()
    keep = [w for w in sorted(lex) if w.isalpha() and len(w) > 2 and (known is None or known(w))]
    pos = [w for w in keep if lex[w] >= min_valence]
    neg = [w for w in keep if lex[w] <= -min_valence]
    if not pos or not neg:
        raise ValueError(f"no sentiment words left with |valence| >= {min_valence} ({len(pos)} positive, "
                         f"{len(neg)} negative): lower min_valence")
    rng = np.random.default_rng(seed)

    def draw(words: list[str]) -> list[str]:
        return [_TEMPLATES[rng.integers(len(_TEMPLATES))].format(w=words[rng.integers(len(words))]) for _ in range(n)]

    return draw(pos), draw(neg)


def encode(lm: SourceLM, text: str) -> list[int]:
    """`[BOS] + tokens` (the same convention as activation extraction)."""
    return [lm.bos_id, *lm.tokenizer(text, add_special_tokens=False)["input_ids"]]


@torch.inference_mode()
def last_token_acts(lm: SourceLM, layer: int, texts: Sequence[str], batch_size: int = 32) -> Tensor:
    """Block `layer`'s residual output at the last token of each text, (n, d) float32 on cpu."""
    from glp.activations import forward_batch

    rows = []
    for b in range(0, len(texts), batch_size):
        seqs = [encode(lm, t) for t in texts[b : b + batch_size]]
        acts, _, mask = forward_batch(lm, layer, seqs)  # (B, T, d) right-padded
        rows.append(acts[torch.arange(len(seqs)), mask.sum(1) - 1])
    return torch.cat(rows)


def diffmean_direction(acts_a: Tensor, acts_b: Tensor) -> Tensor:
    """Unit vector (d,) along mean(acts_a) - mean(acts_b)."""
    w = acts_a.float().mean(0) - acts_b.float().mean(0)
    return w / w.norm().clamp(min=1e-12)


def lm_sentiment_texts(lm: SourceLM, n: int, seed: int) -> tuple[list[str], list[str]]:
    """`sentiment_texts` restricted to words that are one token of the LM's vocabulary (words it has learned);
    every word when the vocabulary holds too few (tiny test tokenizers)."""

    def single_token(word: str) -> bool:
        return len(lm.tokenizer(" " + word, add_special_tokens=False)["input_ids"]) == 1

    try:
        return sentiment_texts(n, seed, known=single_token)
    except ValueError:
        return sentiment_texts(n, seed)


def sentiment_direction(lm: SourceLM, layer: int, n: int = 64, seed: int = 0) -> Tensor:
    """DiffMean positive − negative sentiment direction at `layer`, (d,) unit norm."""
    pos, neg = lm_sentiment_texts(lm, n, seed)
    return diffmean_direction(last_token_acts(lm, layer, pos), last_token_acts(lm, layer, neg))


def direction_auc(lm: SourceLM, layer: int, w: Tensor, n: int = 64, seed: int = 1) -> float:
    """ROC-AUC of the projection on w separating fresh (other-seed) positive from negative templated texts:
    does the direction read sentiment at all? (0.5 = no.)"""
    from sklearn.metrics import roc_auc_score

    pos, neg = lm_sentiment_texts(lm, n, seed)
    scores = torch.cat([last_token_acts(lm, layer, pos), last_token_acts(lm, layer, neg)]) @ w
    return float(roc_auc_score([1] * n + [0] * n, scores.numpy()))


def mean_activation_norm(acts: np.ndarray | Tensor) -> float:
    """Mean L2 norm of activation rows (n, d): the unit of the steering strength r."""
    return float(torch.as_tensor(np.asarray(acts), dtype=torch.float64).norm(dim=1).mean())


# ---------------------------------------------------------------- GLP post-processing


def sdedit_levels(t_start: float, steps: int) -> Tensor:
    """The noise levels SDEdit integrates: t_start, then the `steps`-step grid levels strictly below it
    (the same path as `glp.flow.project_on_manifold`)."""
    ts = euler_schedule(steps)
    return torch.cat([torch.tensor([t_start], dtype=ts.dtype), ts[ts < t_start - 1e-6]])


def solver_passes(t_start: float, steps: int, solver: str) -> int:
    """Denoiser passes per SDEdit call."""
    n = len(sdedit_levels(t_start, steps)) - 1
    return n if solver == "euler" else 2 * n


@torch.no_grad()
def sdedit(
    prior: Prior,
    acts: Tensor,
    t_start: float = 0.5,
    steps: int = 20,
    solver: Literal["euler", "heun", "midpoint"] = "euler",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Project raw activations (..., d) onto the prior's manifold: normalize, noise to t_start, denoise, denormalize."""
    model = prior.denoiser
    param = next(model.parameters())
    z = prior.normalizer.normalize(acts.to(param.device, param.dtype))
    if solver == "euler":
        out = project_on_manifold(model, z, t_start, steps, generator=generator)
        return prior.normalizer.denormalize(out).to(acts.dtype)
    shape = z.shape
    z = z.reshape(-1, shape[-1])
    eps = torch.randn(z.shape, generator=generator, device=z.device, dtype=z.dtype)  # same draw as project_on_manifold
    x, _ = interpolate(z, eps, t_start)
    levels = sdedit_levels(t_start, steps).tolist()
    for t, t_next in zip(levels[:-1], levels[1:]):
        h = t_next - t  # negative: towards data
        v1 = model(x, torch.full((len(x),), t, device=x.device, dtype=x.dtype))
        if solver == "heun":
            v2 = model(x + h * v1, torch.full((len(x),), t_next, device=x.device, dtype=x.dtype))
            x = x + h * 0.5 * (v1 + v2)
        else:  # midpoint
            v2 = model(x + 0.5 * h * v1, torch.full((len(x),), t + 0.5 * h, device=x.device, dtype=x.dtype))
            x = x + h * v2
    return prior.normalizer.denormalize(x.reshape(shape)).to(acts.dtype)


def steer_edit(
    w: Tensor,
    alpha: Tensor | float,
    prior: Prior | None = None,
    t_start: float = 0.5,
    steps: int = 20,
    solver: Literal["euler", "heun", "midpoint"] = "euler",
    generator: torch.Generator | None = None,
) -> Edit:
    """The edit a -> a + alpha w (alpha scalar or per row (B,)), then SDEdit with `prior` if given."""

    def edit(a: Tensor) -> Tensor:
        al = torch.as_tensor(alpha, dtype=a.dtype, device=a.device)
        out = a + (al.reshape(-1, 1) if al.ndim else al) * w.to(a)
        return out if prior is None else sdedit(prior, out, t_start, steps, solver, generator)

    return edit


@contextmanager
def newest_position_hook(block: nn.Module, edit: Edit) -> Iterator[None]:
    """While active, the block's output at the last position (B, -1, d) is replaced by `edit` of it."""

    def hook(_module: nn.Module, _inputs: tuple, output: Any) -> Any:
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, -1] = edit(hidden[:, -1])
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ---------------------------------------------------------------- generation


@torch.inference_mode()
def generate(
    lm: SourceLM,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    decoding: Literal["greedy", "sample"] = "greedy",
    temperature: float = 1.0,
    seed: int = 0,
    layer: int | None = None,
    edit: Edit | None = None,
) -> list[list[int]]:
    """Continue each token list (left-padded batch, KV cache); with `edit`, steer block `layer` at the newest
    position on every forward. Sampling draws from a cpu generator seeded with `seed`. Returns new ids per row."""
    B, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((B, width), lm.pad_id, dtype=torch.long)
    mask = torch.zeros((B, width), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = torch.tensor(p)
        mask[i, width - len(p) :] = 1
    pos = (mask.cumsum(1) - 1).clamp(min=0)
    gen = torch.Generator().manual_seed(seed)
    ids, mask, pos = ids.to(lm.device), mask.to(lm.device), pos.to(lm.device)
    hook = newest_position_hook(lm.block(layer), edit) if edit is not None else nullcontext()
    new: list[Tensor] = []
    past = None
    with hook:
        inp = ids
        for _ in range(max_new_tokens):
            out = lm.model(input_ids=inp, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True)
            past = out.past_key_values
            logits = out.logits[:, -1].float().cpu()
            if decoding == "greedy":
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen).squeeze(1)
            new.append(nxt)
            inp = nxt.to(lm.device).unsqueeze(1)
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=mask.device)], 1)
            pos = pos[:, -1:] + 1
    return torch.stack(new, 1).tolist()


# ---------------------------------------------------------------- the Pareto report


def steering_report(lm: SourceLM, layer: int, prior: Prior, w: Tensor, mean_norm: float, cfg: SteerConfig,
                    log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Generate for every (r, raw/GLP) with identical prompts and seeds; judge concept and fluency; bootstrap CIs."""
    prompts = list(cfg.prompts or DEFAULT_PROMPTS)
    reps = 1 if cfg.decoding == "greedy" else cfg.samples_per_prompt
    texts = [p for p in prompts for _ in range(reps)]
    prompt_ids = [encode(lm, p) for p in texts]
    gen_kw = dict(max_new_tokens=cfg.max_new_tokens, decoding=cfg.decoding, temperature=cfg.temperature, seed=cfg.seed)
    t0 = time.perf_counter()
    unsteered = generate(lm, prompt_ids, **gen_kw)
    rows, settings = [], []
    for mode in ("raw", "glp"):
        for r in cfg.r_values:
            g = torch.Generator(device=next(prior.denoiser.parameters()).device).manual_seed(cfg.seed + 1)
            edit = steer_edit(w, r * mean_norm, prior if mode == "glp" else None, cfg.t_start, cfg.steps, cfg.solver, g)
            cont = generate(lm, prompt_ids, layer=layer, edit=edit, **gen_kw)
            decoded = [lm.tokenizer.decode(c, skip_special_tokens=True) for c in cont]
            concept = sentiment_scores(decoded)
            nll = continuation_nll(lm, prompt_ids, cont)
            dist = np.array([distinct_n(c, 2) for c in cont])
            settings.append({"mode": mode, "r": r, "tokens": cont, "concept": concept, "nll": nll})
            rows.append({
                "mode": mode, "r": r, "alpha": r * mean_norm,
                "concept": float(concept.mean()), "concept_ci": bootstrap_ci(concept, cfg.n_bootstrap, cfg.seed),
                "nll": float(nll.mean()), "nll_ci": bootstrap_ci(nll, cfg.n_bootstrap, cfg.seed),
                "distinct2": float(dist.mean()),
                "examples": [{"prompt": p, "continuation": d} for p, d in list(zip(texts, decoded))[:: reps][:3]],
            })
            if log:
                log(f"steer {mode} r={r}: concept {concept.mean():+.3f} nll {nll.mean():.3f}")
    # paired GLP − raw differences per r (same prompts, same sampling seed)
    paired = []
    for r in cfg.r_values:
        a = next(s for s in settings if s["mode"] == "raw" and s["r"] == r)
        b = next(s for s in settings if s["mode"] == "glp" and s["r"] == r)
        dn, dc = b["nll"] - a["nll"], b["concept"] - a["concept"]
        paired.append({"r": r, "d_nll": float(dn.mean()), "d_nll_ci": bootstrap_ci(dn, cfg.n_bootstrap, cfg.seed),
                       "d_concept": float(dc.mean()), "d_concept_ci": bootstrap_ci(dc, cfg.n_bootstrap, cfg.seed)})
    return {
        "layer": layer, "mean_norm": mean_norm, "config": cfg.model_dump(mode="json"),
        "prompts": texts, "n_continuations": len(texts),
        "passes_per_token": solver_passes(cfg.t_start, cfg.steps, cfg.solver),
        "unsteered_tokens": unsteered,
        "settings": [{"mode": s["mode"], "r": s["r"], "tokens": s["tokens"]} for s in settings],
        "rows": rows, "paired": paired, "seconds": time.perf_counter() - t0,
    }


def pareto_png(report: dict[str, Any]) -> bytes:
    """Concept (VADER compound, up) vs fluency (NLL under the unsteered LM, left = better), one curve per mode."""
    from glp.report import pyplot, to_png

    plt = pyplot()

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for mode, color in (("raw", "#d95f02"), ("glp", "#1b9e77")):
        rows = [r for r in report["rows"] if r["mode"] == mode]
        x = [r["nll"] for r in rows]
        y = [r["concept"] for r in rows]
        xerr = np.array([[r["nll"] - r["nll_ci"][0], r["nll_ci"][1] - r["nll"]] for r in rows]).T
        yerr = np.array([[r["concept"] - r["concept_ci"][0], r["concept_ci"][1] - r["concept"]] for r in rows]).T
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, color=color, marker="o", capsize=2, lw=1.4,
                    label="with GLP" if mode == "glp" else "raw steering")
        for r in rows:
            ax.annotate(f"r={r['r']:g}", (r["nll"], r["concept"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set(xlabel="continuation NLL under unsteered LM (nats, lower = more fluent)",
           ylabel="sentiment (VADER compound)", title="steering: concept vs fluency (95% bootstrap CI)")
    ax.legend()
    return to_png(fig)


def steering_markdown(report: dict[str, Any]) -> str:
    """The Pareto table, the paired GLP − raw differences, and 3 example generations per setting."""
    from glp.report import markdown_table

    def ci(c: Sequence[float]) -> str:
        return f"[{c[0]:.3f}, {c[1]:.3f}]"

    table = markdown_table(
        ["mode", "r", "alpha", "sentiment", "95% CI", "NLL", "95% CI", "distinct-2"],
        [[r["mode"], r["r"], round(r["alpha"], 2), round(r["concept"], 3), ci(r["concept_ci"]), round(r["nll"], 3),
          ci(r["nll_ci"]), round(r["distinct2"], 3)] for r in report["rows"]],
    )
    paired = markdown_table(
        ["r", "ΔNLL (GLP − raw)", "95% CI", "Δsentiment (GLP − raw)", "95% CI"],
        [[p["r"], round(p["d_nll"], 3), ci(p["d_nll_ci"]), round(p["d_concept"], 3), ci(p["d_concept_ci"])]
         for p in report["paired"]],
    )
    ex = []
    for r in report["rows"]:
        ex.append(f"**{r['mode']} r={r['r']:g}**")
        ex += [f"- *{e['prompt']}* → {e['continuation']!r}" for e in r["examples"]]
    auc = report.get("direction_auc_heldout")
    return (f"{report['n_continuations']} continuations per setting, {report['passes_per_token']} denoiser passes "
            f"per token with GLP." + (f" Direction AUC on fresh labelled texts: {auc:.3f}." if auc else "")
            + "\n\n" + table + "\n\nPaired differences (same prompts and seeds):\n\n" + paired
            + "\n\nExamples:\n\n" + "\n".join(ex))


def r0_matches_unsteered(report: dict[str, Any]) -> bool:
    """The raw r=0 setting generated exactly the unsteered tokens."""
    raw0 = next(s for s in report["settings"] if s["mode"] == "raw" and s["r"] == 0.0)
    return raw0["tokens"] == report["unsteered_tokens"]


def build_steering(settings: Any, source: Any, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Pipeline step: direction, Pareto report, plot; written atomically to `<source root>/steering{.json,.png}`."""
    from glp import pipeline
    from glp.lm import load_source_lm
    from glp.prior import load_prior
    from glp.store import ActivationStore

    paths = pipeline.source_paths(settings, source)
    cfg: SteerConfig = settings.steer
    lm = load_source_lm(pipeline.model_dir(settings, source), settings.device, "float32", settings.trust_remote_code)
    prior = load_prior(paths.prior, lm.device)
    mean_norm = mean_activation_norm(ActivationStore(paths.store("heldout")).acts[:])
    w = sentiment_direction(lm, source.layer, cfg.n_direction_texts, cfg.seed)
    report = steering_report(lm, source.layer, prior, w, mean_norm, cfg, log=log)
    report["direction_auc_heldout"] = direction_auc(lm, source.layer, w, cfg.n_direction_texts, cfg.seed + 1)
    write_atomic(paths.root / "steering.json", json.dumps(report, indent=1, default=float))
    png = pareto_png(report)
    write_atomic(paths.root / "steering_pareto.png", png)
    return {**report, "path": str(paths.root / "steering.json"), "png": png}
