"""Human-readable renderings of pipeline results: PNG plots and markdown tables (for the UI and files)."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display here or in Dagster workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def loss_curve_png(losses: Sequence[float], title: str = "flow-matching training loss") -> bytes:
    """Per-step loss (light) and its moving average (dark), as PNG bytes."""
    plt = pyplot()
    y = np.asarray(losses, dtype=float)
    k = max(1, len(y) // 50)
    smooth = np.convolve(y, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(np.arange(1, len(y) + 1), y, color="#9ecae1", lw=0.8, label="step")
    ax.plot(np.arange(k, len(y) + 1), smooth, color="#08519c", lw=1.6, label=f"mean of {k}")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    return to_png(fig)


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown that embeds a PNG inline (Dagster's UI renders it)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def eval_table(report: dict) -> str:
    """The prior_eval report as markdown: the loss summary, the candidates (FD, raw FD, FD by n, C2ST AUC), the
    sampler sweep, then loss per t against the Gaussian baseline."""
    summary = markdown_table(
        ["metric", "GLP", "baseline", "baseline kind"],
        [["held-out flow-matching loss", report["heldout_loss_mean"], report["gaussian_baseline_loss_mean"],
          "optimal affine predictor (= the full-covariance Gaussian)"]],
    )
    sizes = list(next(iter(report["candidates"].values()))["fd_by_n"])
    cands = markdown_table(
        ["candidate vs held-out rows", "FD (normalized)", "FD (raw)", *[f"FD at n={m}" for m in sizes],
         "C2ST AUC [95% CI]", "max row norm (normalized)"],
        [[c["label"], f"{c['fd']:,.1f}", "" if c["fd_raw"] is None else f"{c['fd_raw']:,.0f}",
          *[f"{c['fd_by_n'][m]:,.1f}" for m in sizes],
          f"{c['c2st']['auc']:.3f} [{c['c2st']['auc_ci'][0]:.3f}, {c['c2st']['auc_ci'][1]:.3f}]",
          f"{c['row_norm']['max']:,.0f}"] for c in report["candidates"].values()],
    )
    sweep = markdown_table(["GLP sampler steps", "FD (normalized)", "C2ST AUC"],
                           [[r["steps"], f"{r['fd']:,.1f}", f"{r['c2st_auc']:.3f}"] for r in report["sampler_sweep"]])
    verdict = ("**Beats the full-covariance Gaussian**" if report["beats_gaussian"]
               else "**Does not beat the full-covariance Gaussian**: " + "; ".join(report["beats_gaussian_reasons"]))
    per_t = markdown_table(
        ["t (0 = data, 1 = noise)", "GLP loss (per dim)", "optimal affine loss", "GLP − affine"],
        [[f"{t:.3f}", f"{a:.4f}", f"{b:.4f}", f"{a - b:+.4f}"]
         for t, a, b in zip(report["t"], report["heldout_loss"], report["gaussian_baseline_loss"])],
    )
    return "\n\n".join([summary, verdict + f" (held-out loss, and C2ST on {report['n_fd']} rows per set; the "
                          f"reference row norm reaches {report['reference_row_norm']['max']:.0f})", cands, sweep, per_t])


def loss_by_t_png(report: dict) -> bytes:
    """Held-out flow-matching loss per noise level t: GLP against the optimal affine (Gaussian) predictor."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(report["t"], report["gaussian_baseline_loss"], "o--", color="#888888", label="optimal affine (Gaussian)")
    ax.plot(report["t"], report["heldout_loss"], "o-", color="#08519c", label="GLP")
    ax.set(xlabel="noise level t", ylabel="loss per dim", title="held-out flow-matching loss by t")
    ax.legend()
    return to_png(fig)


def read_json(path: Path) -> dict | None:
    """An artifact's JSON, or None when it has not been materialized."""
    return json.loads(path.read_text()) if path.is_file() else None


def _ci(c: Sequence[float], digits: int = 3) -> str:
    return f"[{c[0]:.{digits}f}, {c[1]:.{digits}f}]"


def _n_params(prior_dir) -> int:  # noqa: ANN001
    """Parameters of an exported prior, read from its safetensors header (no weights loaded)."""
    import math

    from safetensors import safe_open

    with safe_open(str(prior_dir / "model.safetensors"), "np") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def results_markdown(settings, source) -> str:  # noqa: ANN001 (Settings, SourceConfig: kept import-light)
    """The README's results section for one source, generated from its artifacts (whatever exists)."""
    from glp import pipeline

    paths = pipeline.source_paths(settings, source)
    root: Path = paths.root

    out = [f"### Results on `{source.key}` (generated by `glp summary --markdown` from the artifacts)"]
    prior_meta = read_json(paths.prior / "config.json") or {}
    if ev := read_json(paths.prior_eval):
        rel = 1 - ev["heldout_loss_mean"] / ev["gaussian_baseline_loss_mean"]
        out.append(markdown_table(["prior", "value"], [
            ["held-out flow-matching loss (nats/dim, 16 fixed t)", f"GLP **{ev['heldout_loss_mean']:.4f}** vs optimal "
             f"linear (Gaussian) baseline **{ev['gaussian_baseline_loss_mean']:.4f}** ({100 * rel:.1f}% below)"],
            ["classifier two-sample test (AUC, 0.5 = indistinguishable from held-out rows)",
             f"GLP samples **{ev['c2st_auc_glp']:.3f}** {_ci(ev['c2st']['glp']['auc_ci'])} vs full-covariance Gaussian "
             f"**{ev['c2st_auc_full_gaussian']:.3f}** {_ci(ev['c2st']['gaussian_full']['auc_ci'])}; SAE reconstructions "
             f"{ev['c2st']['sae']['auc']:.3f}, PCA-{ev['pca_k']} {ev['c2st']['pca']['auc']:.3f}, held-out floor "
             f"{ev['c2st_auc_floor']:.3f}"],
            ["Fréchet distance to held-out (normalized / raw)",
             "; ".join(f"{c['label'].split(' (')[0]} {c['fd']:.1f} / {c['fd_raw']:,.0f}" for c in ev["candidates"].values())],
            ["denoiser", f"{prior_meta.get('denoiser', {}).get('n_blocks', '?')} blocks, width x"
             f"{prior_meta.get('denoiser', {}).get('width_mult', '?')}, {_n_params(paths.prior) / 1e6:.1f} M parameters, "
             f"{prior_meta.get('steps', '?')} steps"],
        ]))
    if st := read_json(root / "steering.json"):
        d, j = st["direction"], st["judge"]
        rows = {(r["mode"], r["r"]): r for r in st["rows"]}
        paired = {p["r"]: p for p in st["paired"]}
        extra = {m: {p["r"]: p for p in ps} for m, ps in st.get("paired_t_start", {}).items()}
        t0 = st["config"]["t_start"]
        table = markdown_table(
            ["r", "concept raw [CI]", "concept GLP", "VADER raw", "NLL raw [CI]", f"NLL GLP (t {t0:g})",
             f"ΔNLL GLP − raw [CI] (t {t0:g})", *[f"ΔNLL GLP − raw [CI] (t {m.removeprefix('glp@')})" for m in extra],
             "distinct-2 raw / GLP"],
            [[r, f"{rows['raw', r]['concept']:.3f} {_ci(rows['raw', r]['concept_ci'])}", f"{rows['glp', r]['concept']:.3f}",
              f"{rows['raw', r]['vader']:+.3f}", f"{rows['raw', r]['nll']:.2f} {_ci(rows['raw', r]['nll_ci'], 2)}",
              f"{rows['glp', r]['nll']:.2f}", f"{paired[r]['d_nll']:+.2f} {_ci(paired[r]['d_nll_ci'], 2)}",
              *[f"{e[r]['d_nll']:+.2f} {_ci(e[r]['d_nll_ci'], 2)}" for e in extra.values()],
              f"{rows['raw', r]['distinct2']:.2f} / {rows['glp', r]['distinct2']:.2f}"]
             for r in sorted(paired)])
        trend = st["concept_trend"]
        out.append(
            f"**Steering** ({st['n_prompts']} prompts, {st['config']['decoding']} decoding, "
            f"{st['config']['max_new_tokens']} tokens; GLP = SDEdit from t = {st['config']['t_start']}, "
            f"{st['passes_per_token']} denoiser passes per token; CIs clustered by prompt). Direction: DiffMean of "
            f"{d['n_direction'][0]} + {d['n_direction'][1]} human-rated movie snippets, held-out AUC "
            f"{d['auc']:.3f} {_ci(d['auc_ci'])}. Concept = P(positive) of a judge trained on Amazon reviews + tweets "
            f"(held-out accuracy {j['accuracy']:.3f}); VADER compound as a second opinion.\n\n{table}\n\n"
            f"Spearman(r, raw concept) {trend['spearman_r_vs_concept_raw']:+.3f} {_ci(trend['spearman_ci'])}. "
            + f"With t_start {t0:g}: " + st["frontier"]["statement"]
            + "".join(f" With t_start {m.removeprefix('glp@')}: " + f["statement"]
                      for m, f in st.get("frontier_t_start", {}).items()))
    if dl := read_json(root / "delta_lm.json"):
        from glp.delta_lm import delta_lm_markdown

        out.append("**ΔLM** (held-out; the layer's activations replaced at every non-BOS position):\n\n"
                   + delta_lm_markdown({**dl, "prior_heldout_loss": None}))
    table_md = root / "probes" / "table.md"
    if (pr := read_json(root / "probes" / "results.json")) and table_md.is_file():
        out.append(f"**1-D probing** ({len(pr['tasks'])} tasks, {pr['n_texts']:,} texts):\n\n" + table_md.read_text().strip())
    seeds_md = root / "seeds" / "seeds.md"
    if seeds_md.is_file():
        out.append("**Over prior seeds** (`glp seeds`; the main run is seed 0):\n\n" + seeds_md.read_text().strip())
    return "\n\n".join(out) + "\n"


def model_card(settings, source) -> str:  # noqa: ANN001 (Settings, SourceConfig: kept import-light)
    """The README.md of an exported prior, from its artifacts: source LLM and layer, data and token counts, compute
    (N, D, C = 6ND), held-out evaluation with CIs, licences. Hub-style YAML front matter on top."""
    from glp import pipeline
    from glp.config import config_hash
    from glp.source_model import PACKAGED, is_packaged
    from glp.store import ActivationStore

    paths = pipeline.source_paths(settings, source)
    cfg = read_json(paths.prior / "config.json") or {}
    n_params = _n_params(paths.prior)
    train = ActivationStore(paths.store("train"), verify=False)
    held = ActivationStore(paths.store("heldout"), verify=False)
    same_train_cfg = cfg.get("train_config") == config_hash(settings.train)
    rows_seen = cfg.get("steps", 0) * settings.train.batch_size if same_train_cfg else None
    licence = PACKAGED[source.model].license if is_packaged(source.model) else "see the source model's own card"
    lines = ["---", "library_name: glp", "license: other",
             "tags: [generative-latent-prior, flow-matching, interpretability, activations]", "---", "",
             f"# GLP prior for `{source.model_name}`, decoder block {source.layer}", "",
             f"A flow-matching prior (a *Generative Latent Prior*) over the residual-stream output of decoder block "
             f"{source.layer} of `{source.model_name}`, trained with glp (flow matching through DeepSpeed) on "
             f"{train.n_rows:,} activations. It models single-token activations in normalized space "
             "(`norm.safetensors`: the per-dimension mean and std it was trained with).", "",
             "## Use", "", "```python", "import glp", "from glp.flow import sample", 'prior = glp.load_prior("<this folder>")',
             "z = sample(prior.denoiser, 8, prior.d_model, steps=20)        # normalized samples",
             "acts = prior.normalizer.denormalize(z)                        # (8, d) activations", "```", "",
             "## Source and data", "",
             markdown_table(["item", "value"], [
                 ["source model", f"`{source.model}` ({licence})"],
                 ["layer", f"decoder block {source.layer} (residual-stream output; BOS rows excluded)"],
                 ["width d", str(train.d_model)],
                 ["train activations", f"{train.n_rows:,} tokens of {int(train.attrs.get('n_docs', 0)):,} documents"],
                 ["held-out activations", f"{held.n_rows:,} tokens"],
                 ["corpus (content hash)", f"`{str(train.attrs.get('corpus_hash', '?'))[:16]}`"],
                 ["activation dtype", str(train.attrs.get("dtype", "?"))],
             ]), "",
             "## Training and compute", "",
             markdown_table(["item", "value"], [
                 ["denoiser", ", ".join(f"{k} {v}" for k, v in cfg.get("denoiser", {}).items())],
                 ["parameters N", f"{n_params:,}"],
                 ["steps", f"{cfg.get('steps', '?')} (precision {cfg.get('precision', '?')})"],
                 ["activations seen D", f"{rows_seen:,}" if rows_seen else "unknown (train config changed since)"],
                 ["compute C = 6·N·D", f"{6 * n_params * rows_seen:.3g} FLOP" if rows_seen else "unknown"],
                 ["final training loss", f"{cfg.get('final_loss', float('nan')):.4f}"],
             ]), ""]
    if ev := read_json(paths.prior_eval):
        c2 = ev.get("c2st", {})
        rows = [["held-out flow-matching loss (per dim)", f"{ev['heldout_loss_mean']:.4f}",
                 f"optimal affine (Gaussian) predictor {ev['gaussian_baseline_loss_mean']:.4f}"]]
        if "glp" in c2:
            rows.append(["two-sample test AUC (0.5 = indistinguishable from held-out)",
                         f"{c2['glp']['auc']:.3f} {_ci(c2['glp']['auc_ci'])}",
                         f"full-covariance Gaussian {c2['gaussian_full']['auc']:.3f} {_ci(c2['gaussian_full']['auc_ci'])}"])
        rows.append(["Fréchet distance to held-out (normalized)", f"{ev['fd_glp']:.1f}",
                     f"noise floor {ev['fd_heldout_floor']:.1f}"
                     + (f", full-covariance Gaussian {ev['fd_full_gaussian']:.1f}" if "fd_full_gaussian" in ev else "")])
        lines += ["## Evaluation (held-out)", "", markdown_table(["metric", "this prior", "baseline"], rows), ""]
    datasheet = Path(settings.corpus.path).parent / "README.md"
    text = datasheet.read_text() if datasheet.is_file() else ""
    if "## Sources and licences" in text:
        table = text.split("## Sources and licences", 1)[1].split("\n## ", 1)[0].strip()
        lines += ["## Licences", "", f"Source model: {licence}. Training text (from the corpus datasheet):", "", table, ""]
    else:
        lines += ["## Licences", "", f"Source model: {licence}. Training text: see the corpus's own datasheet.", ""]
    return "\n".join(lines)
