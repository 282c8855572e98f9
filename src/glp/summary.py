"""The project summary: the results section written whole from a source's artifacts (`glp summary --markdown`) and
the model card of an exported prior."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from glp import fmt
from glp.report import markdown_table, read_json


def _n_params(prior_dir) -> int:  # noqa: ANN001
    """Parameters of an exported prior, read from its safetensors header (no weights loaded)."""
    import math

    from safetensors import safe_open

    with safe_open(str(prior_dir / "model.safetensors"), "np") as f:
        return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())


def _vs(d: float, ci: list[float], name: str, lower_is_better: bool = True) -> str:
    """'beats X' / 'loses to X' / 'ties X' from a paired difference (ours − X) and its 95% CI."""
    better, worse = (ci[1] < 0, ci[0] > 0) if lower_is_better else (ci[0] > 0, ci[1] < 0)
    return f"beats {name}" if better else f"loses to {name}" if worse else f"ties {name}"


def headline_markdown(settings, source) -> str:  # noqa: ANN001 (Settings, SourceConfig: kept import-light)
    """The README's headline table (use | measured here | paper | holds here?), one row per artifact that exists,
    each verdict read from the paired CIs of the artifacts, so the table cannot say more than they do."""
    from glp import pipeline
    from glp.uses.probe import FAMILY_LABELS, PAPER_MEAN_AUC
    from glp.uses.scaling import PAPER_FIT

    paths = pipeline.source_paths(settings, source)
    root: Path = paths.root
    rows = []
    if ev := read_json(paths.prior_eval):
        g, b = ev["heldout_loss_mean"], ev["gaussian_baseline_loss_mean"]
        rows.append(["prior quality", f"held-out flow-matching loss: GLP **{g:.4f}** vs full-covariance Gaussian "
                     f"**{b:.4f}** ({100 * (1 - g / b):.1f}% below); two-sample AUC {ev['c2st_auc_glp']:.3f} vs "
                     f"{ev['c2st_auc_full_gaussian']:.3f} (0.5 = indistinguishable)", "—",
                     "yes" if g < b and ev["c2st_auc_glp"] < ev["c2st_auc_full_gaussian"] else "no"])
    if dl := read_json(root / "delta_lm.json"):
        m, paired = dl["methods"], dl.get("paired", {})
        vs = {k.removeprefix("glp_minus_"): p for k, p in paired.items()}
        said = [_vs(p["d"], p["ci"], f"the {k.upper()}" if k == "sae" else k.upper()) for k, p in vs.items()]
        sae = vs.get("sae")
        rows.append(["ΔLM (CE increase when the layer is replaced, nats)",
                     f"GLP **{m['glp']['delta_ce']:.3f}**" + "".join(
                         f" vs {k.upper() if k == 'sae' else 'PCA-' + str(m[k]['k'])} {m[k]['delta_ce']:.3f}"
                         for k in ("sae", "pca") if k in m)
                     + (f" (GLP − SAE {sae['d']:+.3f} [{sae['ci'][0]:+.3f}, {sae['ci'][1]:+.3f}])" if sae else ""),
                     "GLP 0.051 vs SAE 0.198 (Llama-8B)",
                     ("yes" if sae and sae["ci"][1] < 0 else "no") + (": " + ", ".join(said) if said else "")])
    if pr := read_json(root / "probes" / "results.json"):
        one, gaps = pr["summary"]["one_d"], pr["summary"]["glp_minus"]
        said = [_vs(gp["mean"], [gp["ci_low"], gp["ci_high"]], FAMILY_LABELS[f], lower_is_better=False)
                for f, gp in gaps.items()]
        rows.append([f"1-D probing (mean AUC, {len(pr['tasks'])} tasks)",
                     ", ".join(f"{FAMILY_LABELS[f]} {one[f]['mean']:.3f}" for f in ("glp", "layer", "mlp", "sae")
                               if f in one),
                     " > ".join(f"{FAMILY_LABELS[f]} {PAPER_MEAN_AUC[f]:.2f}" for f in ("glp", "mlp", "layer", "sae"))
                     + " (Llama-1B)",
                     ("yes" if all(g["ci_low"] > 0 for g in gaps.values()) else "no") + ": GLP " + ", ".join(said)])
    if st := read_json(root / "steering.json"):
        t0 = st["config"]["t_start"]
        sets = {f"SDEdit t = {t0:g}": st["paired"], **{f"SDEdit t = {k.removeprefix('glp@')}": v
                                                       for k, v in st.get("paired_t_start", {}).items()}}
        if st.get("paired_gated"):
            sets["gated"] = st["paired_gated"]
        parts, lowers = [], False
        for name, ps in sets.items():
            d = [p["d_nll"] for p in ps]
            lower = [p["r"] for p in ps if p["d_nll_ci"][1] < 0]
            lowers |= bool(lower)
            parts.append(f"{name}: ΔNLL vs raw {min(d):+.2f} to {max(d):+.2f} nats over r"
                         + (f", below raw at r = {', '.join(f'{r:g}' for r in lower)}" if lower else ""))
        rows.append(["steering (post-processing the steered activation)", "; ".join(parts),
                     "moves the concept–fluency frontier",
                     "yes: lowers NLL somewhere" if lowers else "no: costs fluency at every r (no CI below raw)"])
    if oo := read_json(root / "ood.json"):
        n = len(oo["sets"])
        count = {k: (sum(s["diff"][k]["ci"][0] > 0 for s in oo["sets"]), sum(s["diff"][k]["ci"][1] < 0 for s in oo["sets"]))
                 for k in ("mahalanobis", "sae")}
        (wm, lm), (ws, ls) = count["mahalanobis"], count["sae"]
        rows.append(["out-of-manifold detection (AUROC)",
                     f"GLP diffusion score beats Mahalanobis on {wm} of {n} sets, loses on {lm}; beats the SAE error "
                     f"on {ws}, loses on {ls}", "—",
                     "yes" if wm and not lm else "mixed" if wm else "no"])
    if sc := read_json(root / "scaling" / "scaling.json"):
        f = sc["fit"]
        c = [p["C"] for p in sc["points"]]
        corr = sc.get("downstream", {}).get("correlations", {})
        short = {"probe_auc": "probe AUC", "steer_concept": "steering concept", "steer_nll_cost": "steering fluency cost",
                 "delta_lm": "ΔLM"}
        holds = [f"{short.get(k, v['label'])} (ρ {v['spearman']:+.2f})" for k, v in corr.items() if v["verdict"] == "holds"]
        rows.append(["scaling, L(C) = E + A·C^(−α)",
                     f"α {f['alpha']:.3f} [{f['alpha_ci'][0]:.3f}, {f['alpha_ci'][1]:.3f}] over "
                     f"{np.log10(max(c) / min(c)):.1f} decades; lower loss goes with better: "
                     + (", ".join(holds) if holds else "none of the downstream metrics"),
                     f"α {PAPER_FIT['alpha']}", ("α lower; " if f["alpha_ci"][1] < PAPER_FIT["alpha"] else "")
                     + f"{len(holds)} of {len(corr)} downstream metrics follow the loss"])
    return markdown_table(["use", f"measured here ({source.key})", "paper", "holds here?"], rows) + "\n"


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
            [f"held-out flow-matching loss (MSE per dim, {len(ev['t'])} fixed t)", f"GLP **{ev['heldout_loss_mean']:.4f}** vs optimal "
             f"linear (Gaussian) baseline **{ev['gaussian_baseline_loss_mean']:.4f}** ({100 * rel:.1f}% below)"],
            ["classifier two-sample test (AUC, 0.5 = indistinguishable from held-out rows)",
             f"GLP samples **{ev['c2st_auc_glp']:.3f}** {fmt.ci(*ev['c2st']['glp']['auc_ci'])} vs full-covariance Gaussian "
             f"**{ev['c2st_auc_full_gaussian']:.3f}** {fmt.ci(*ev['c2st']['gaussian_full']['auc_ci'])}; SAE reconstructions "
             f"{ev['c2st']['sae']['auc']:.3f}, PCA-{ev['pca_k']} {ev['c2st']['pca']['auc']:.3f}, held-out floor "
             f"{ev['c2st_auc_floor']:.3f}"],
            ["Fréchet distance to held-out (normalized / raw)",
             "; ".join(f"{c['label'].split(' (')[0]} {c['fd']:.1f} / {c['fd_raw']:,.0f}" for c in ev["candidates"].values())],
            ["denoiser", f"{prior_meta.get('denoiser', {}).get('n_blocks', '?')} blocks, width x"
             f"{prior_meta.get('denoiser', {}).get('width_mult', '?')}, {_n_params(paths.prior) / 1e6:.1f} M parameters, "
             f"{prior_meta.get('steps', '?')} steps"],
        ]))
    if st := read_json(root / "steering.json"):
        from glp.uses.steer_report import gated_statement, trend_statement

        d, j = st["direction"], st["judge"]
        rows = {(r["mode"], r["r"]): r for r in st["rows"]}
        paired = {p["r"]: p for p in st["paired"]}
        extra = {m: {p["r"]: p for p in ps} for m, ps in st.get("paired_t_start", {}).items()}
        gated = {p["r"]: p for p in st.get("paired_gated") or []}
        t0 = st["config"]["t_start"]
        table = markdown_table(
            ["r", "concept raw [CI]", "concept GLP", "VADER raw", "NLL raw [CI]", f"NLL GLP (t {t0:g})",
             f"ΔNLL GLP − raw [CI] (t {t0:g})", *[f"ΔNLL GLP − raw [CI] (t {m.removeprefix('glp@')})" for m in extra],
             *(["ΔNLL gated − raw [CI]", "Δconcept gated − raw [CI]"] if gated else []),
             "distinct-2 raw / GLP"],
            [[r, f"{rows['raw', r]['concept']:.3f} {fmt.ci(*rows['raw', r]['concept_ci'])}", f"{rows['glp', r]['concept']:.3f}",
              f"{rows['raw', r]['vader']:+.3f}", f"{rows['raw', r]['nll']:.2f} {fmt.ci(*rows['raw', r]['nll_ci'], 2)}",
              f"{rows['glp', r]['nll']:.2f}", f"{paired[r]['d_nll']:+.2f} {fmt.ci(*paired[r]['d_nll_ci'], 2)}",
              *[f"{e[r]['d_nll']:+.2f} {fmt.ci(*e[r]['d_nll_ci'], 2)}" for e in extra.values()],
              *([f"{gated[r]['d_nll']:+.2f} {fmt.ci(*gated[r]['d_nll_ci'], 2)}",
                 f"{gated[r]['d_concept']:+.3f} {fmt.ci(*gated[r]['d_concept_ci'])}"] if gated else []),
              f"{rows['raw', r]['distinct2']:.2f} / {rows['glp', r]['distinct2']:.2f}"]
             for r in sorted(paired)])
        trend = st["concept_trend"]
        out.append(
            f"**Steering** ({st['n_prompts']} prompts, {st['config']['decoding']} decoding, "
            f"{st['config']['max_new_tokens']} tokens; GLP = SDEdit from t = {st['config']['t_start']}, "
            f"{st['passes_per_token']} denoiser passes per token; CIs clustered by prompt). Direction: DiffMean of "
            f"{d['n_direction'][0]} + {d['n_direction'][1]} human-rated movie snippets, held-out AUC "
            f"{d['auc']:.3f} {fmt.ci(*d['auc_ci'])}. Concept = P(positive) of a judge trained on Amazon reviews + tweets "
            f"(held-out accuracy {j['accuracy']:.3f}); VADER compound as a second opinion.\n\n{table}\n\n"
            f"Spearman(r, raw concept) {trend['spearman_r_vs_concept_raw']:+.3f} {fmt.ci(*trend['spearman_ci'])}. "
            + f"With t_start {t0:g}: " + st["frontier"]["statement"]
            + "".join(f" With t_start {m.removeprefix('glp@')}: " + f["statement"]
                      for m, f in st.get("frontier_t_start", {}).items())
            + "".join(f"\n\n{line}" for line in (gated_statement(st), trend_statement(st))))
    if dl := read_json(root / "delta_lm.json"):
        from glp.uses.delta_lm import delta_lm_markdown

        out.append("**ΔLM** (held-out; the layer's activations replaced at every non-BOS position):\n\n"
                   + delta_lm_markdown({**dl, "prior_heldout_loss": None}))
    if pr := read_json(root / "probes" / "results.json"):
        from glp.uses.probe import table4_markdown

        out.append(f"**1-D probing** ({len(pr['tasks'])} tasks, {pr['n_texts']:,} texts):\n\n"
                   + table4_markdown(pr["summary"], pr["families"], len(pr["tasks"])))
    if oo := read_json(root / "ood.json"):
        from glp.uses.ood import ood_markdown

        out.append(f"**Out-of-manifold detection** ({oo['n_rows']:,} rows per set; GLP scores at t ∈ "
                   f"{{{', '.join(f'{t:g}' for t in oo['config']['ts'])}}}, SDEdit from t = "
                   f"{oo['config']['sdedit_t_start']:g}):\n\n" + ood_markdown(oo))
    if sc := read_json(root / "scaling" / "scaling.json"):
        from glp.uses.scaling import scaling_markdown

        out.append("**Scaling** (`make scaling`; held-out loss vs C = 6·N·D, downstream vs loss):\n\n"
                   + scaling_markdown(sc))
    seeds_md = root / "seeds" / "seeds.md"
    if seeds_md.is_file():
        out.append("**Over prior seeds** (`glp seeds`; the main run is seed 0):\n\n" + seeds_md.read_text().strip())
    return "\n\n".join(out) + "\n"


def model_card(settings, source) -> str:  # noqa: ANN001 (Settings, SourceConfig: kept import-light)
    """The README.md of an exported prior, from its artifacts: source LLM and layer, data and token counts, compute
    (N, D, C = 6ND), held-out evaluation with CIs, licences. Hub-style YAML front matter on top."""
    from glp import pipeline
    from glp.config import PACKAGED, config_hash
    from glp.data.source_model import is_packaged
    from glp.data.store import ActivationStore

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
                         f"{c2['glp']['auc']:.3f} {fmt.ci(*c2['glp']['auc_ci'])}",
                         f"full-covariance Gaussian {c2['gaussian_full']['auc']:.3f} {fmt.ci(*c2['gaussian_full']['auc_ci'])}"])
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
