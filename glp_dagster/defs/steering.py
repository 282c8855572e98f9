"""Steering assets: `steering[src]` (concept–fluency Pareto report, raw vs GLP) and `delta_lm[src]` (ΔLM loss).

glp_prior[src] ─┬─► steering[src] ◄─ labelled   (movie snippets: direction; Amazon reviews + tweets: judge)
                └─► prior_eval[src] ─► delta_lm[src] ◄─ sae[src]   (GLP vs SAE / PCA / mean reconstructions)
"""


import json
from pathlib import Path

import dagster as dg
import numpy as np

from glp import fmt, pipeline
from glp.config import Settings, config_hash
from glp_dagster.metadata import inline, png, readable
from glp_dagster.resources import GLPSettings
from glp_dagster.step import GROUP, reports_errors, require_upstream, user_errors, writing

DELTA_LM_VERSION = "2"  # 2: SAE arm, PCA-k chosen on selection documents, CIs over documents
STEERING_VERSION = "3"  # 2: movie-snippet direction, trained judge, BBC prompts, signed r, clustered CIs;
# 3: gated post-processing (calibrated off-manifold gate), fluency cost vs held-out loss over the prior's snapshots


def build_steering_assets(settings: Settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(deps=["glp_prior", "labelled"], partitions_def=partitions, group_name=GROUP,
              code_version=f"{STEERING_VERSION}-{config_hash(settings.steer)}")
    def steering(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """DiffMean sentiment steering with and without GLP post-processing: a concept–fluency Pareto report."""
        from glp.pipeline.steering import build_steering
        from glp.uses.steer_report import gated_statement, pareto_inline, steering_markdown, trend_statement

        s, src = glp.settings, glp.source(context)
        require_upstream(pipeline.source_paths(s, src).prior, "glp_prior", "steering", context.partition_key)
        paths = pipeline.source_paths(s, src)
        with user_errors(), writing(context, paths.root / "steering.json",
                                    reads=[paths.activations_dir, paths.prior, pipeline.model_dir(s, src)]):
            rep = build_steering(s, src, log=context.log.info)
        by = {(r["mode"], r["r"]): r for r in rep["rows"]}
        r_max = max(s.steer.r_values)
        return dg.MaterializeResult(
            metadata=readable({
                "frontier": inline(rep["frontier"]["statement"]),
                "pareto": inline(pareto_inline(rep)),
                "report": dg.MetadataValue.md(steering_markdown(rep)),
                "pareto_full": png(rep["png"], "steering Pareto plot"),
                "gated": inline(gated_statement(rep)),
                "fluency_trend": inline(trend_statement(rep)),
                **({"fluency_trend_full": png(rep["trend_png"], "fluency cost vs held-out loss")}
                   if rep.get("trend_png") else {}),
                "continuations_per_setting": rep["n_continuations"],
                "passes_per_token": rep["passes_per_token"],
                "mean_activation_norm": rep["mean_norm"],
                "direction_auc_heldout": rep["direction"]["auc"],
                "direction_auc_ci_low": rep["direction"]["auc_ci"][0],
                "judge_accuracy_heldout": rep["judge"]["accuracy"],
                "judge_auc_heldout": rep["judge"]["auc"],
                "spearman_r_vs_concept_raw": rep["concept_trend"]["spearman_r_vs_concept_raw"],
                "concept_raw_rmax": by[("raw", r_max)]["concept"],
                "concept_glp_rmax": by[("glp", r_max)]["concept"],
                "nll_raw_rmax (nats/token)": by[("raw", r_max)]["nll"],
                "nll_glp_rmax (nats/token)": by[("glp", r_max)]["nll"],
                "time": fmt.duration(rep["seconds"]["total"]),
                "path": rep["path"],
            }),
            data_version=dg.DataVersion(pipeline.short_sha256(Path(rep["path"]))),
        )

    @dg.asset(deps=["glp_prior", "prior_eval", "sae"], partitions_def=partitions, group_name=GROUP,
              code_version=f"{DELTA_LM_VERSION}-{config_hash(settings.delta_lm)}")
    def delta_lm(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """Next-token CE increase when the layer is replaced by GLP / SAE / PCA-k / mean reconstructions."""
        from glp.pipeline.layout import sae_dir
        from glp.pipeline.steering import build_delta_lm
        from glp.report import delta_lm_inline
        from glp.uses.delta_lm import delta_lm_markdown

        s, src = glp.settings, glp.source(context)
        require_upstream(pipeline.source_paths(s, src).prior, "glp_prior", "delta_lm", context.partition_key)
        require_upstream(sae_dir(pipeline.source_paths(s, src).root), "sae", "delta_lm", context.partition_key)
        paths = pipeline.source_paths(s, src)
        with user_errors(), writing(context, paths.root / "delta_lm.json",
                                    reads=[paths.activations_dir, paths.prior, sae_dir(paths.root), pipeline.model_dir(s, src)]):
            rep = build_delta_lm(s, src, log=context.log.info)
        m = rep["methods"]
        return dg.MaterializeResult(
            metadata=readable({
                "delta_ce": inline(delta_lm_inline(rep)),
                "report": dg.MetadataValue.md(delta_lm_markdown(rep)),
                "clean_ce (nats/token)": rep["clean_ce"],
                "delta_ce_glp (nats/token)": m["glp"]["delta_ce"],
                "delta_ce_sae (nats/token)": m["sae"]["delta_ce"],
                "delta_ce_pca (nats/token)": m["pca"]["delta_ce"],
                "delta_ce_glp_minus_sae (nats/token)": rep["paired"]["glp_minus_sae"]["d"],
                "pca_k": m["pca"]["k"],
                "delta_ce_mean_ablation (nats/token)": m["mean_ablation"]["delta_ce"],
                "prior_heldout_loss (MSE/dim)": rep["prior_heldout_loss"],
                "n_tokens": fmt.count(rep["n_tokens"]),
                "path": rep["path"],
            }),
            data_version=dg.DataVersion(pipeline.short_sha256(Path(rep["path"]))),
        )

    return [steering, delta_lm]


def _finite(values: list) -> tuple[int, int]:
    arr = np.asarray(values, dtype=float)
    return int(arr.size), int((~np.isfinite(arr)).sum())


def build_steering_checks(partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    def report(glp: GLPSettings, context: dg.AssetCheckExecutionContext, name: str) -> dict:
        return json.loads((pipeline.source_paths(glp.settings, glp.source(context)).root / name).read_text())

    @dg.asset_check(asset="steering", blocking=True, partitions_def=partitions)
    @reports_errors
    def steering_scores_finite(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Every score, CI and paired difference in the steering report is finite."""
        rep = report(glp, context, "steering.json")
        keys = ("concept", "vader", "nll", "distinct1", "distinct2")
        vals = [x for st in rep["settings"] for k in keys for x in st[k]]  # every continuation's scores
        vals += [x for r in rep["rows"] for k in ("concept_ci", "vader_ci", "nll_ci", "distinct2_ci") for x in r[k]]
        vals += [x for p in rep["paired"] for x in (p["d_nll"], *p["d_nll_ci"], p["d_concept"], *p["d_concept_ci"])]
        vals += [rep["direction"]["auc"], *rep["direction"]["auc_ci"], rep["judge"]["accuracy"], rep["judge"]["auc"]]
        n, bad = _finite(vals)
        return dg.AssetCheckResult(passed=bad == 0, metadata={"values": n, "nonfinite": bad})

    @dg.asset_check(asset="steering", blocking=True, partitions_def=partitions)
    @reports_errors
    def steering_r0_is_unsteered(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """The raw r=0 row equals plain generation (no hook), regenerated here, token for token."""
        from glp.data.lm import load_source_lm
        from glp.uses.generate import encode, generate

        s, src = glp.settings, glp.source(context)
        rep = report(glp, context, "steering.json")
        lm = load_source_lm(pipeline.model_dir(s, src), s.device, "float32", s.trust_remote_code)
        cfg = s.steer
        plain = generate(lm, [encode(lm, p) for p in rep["prompts"]], cfg.max_new_tokens, cfg.decoding,
                         cfg.temperature, cfg.seed)
        raw0 = next(x for x in rep["settings"] if x["mode"] == "raw" and x["r"] == 0.0)["tokens"]
        same = sum(a == b for a, b in zip(raw0, plain))
        return dg.AssetCheckResult(passed=same == len(plain) == len(raw0),
                                   metadata={"rows": len(plain), "identical_rows": same})

    @dg.asset_check(asset="steering", blocking=True, partitions_def=partitions)
    @reports_errors
    def steering_paired_prompts_and_seeds(context: dg.AssetCheckExecutionContext,
                                          glp: GLPSettings) -> dg.AssetCheckResult:
        """Every GLP mode (the main t_start and each extra one) covers the raw rows' r values, and every setting
        used the same prompts and seed."""
        rep = report(glp, context, "steering.json")
        r_raw = sorted(r["r"] for r in rep["rows"] if r["mode"] == "raw")
        modes = sorted({r["mode"] for r in rep["rows"]} - {"raw"})
        r_glp = sorted(r["r"] for r in rep["rows"] if r["mode"] == "glp")
        same_r = "glp" in modes and all(sorted(r["r"] for r in rep["rows"] if r["mode"] == m) == r_raw for m in modes)
        n_rows = {len(x["tokens"]) for x in rep["settings"]}
        ok = same_r and n_rows == {len(rep["prompts"])} and len(rep["settings"]) == (1 + len(modes)) * len(r_raw)
        return dg.AssetCheckResult(passed=bool(ok), metadata={"r_raw": str(r_raw), "r_glp": str(r_glp),
                                                              "glp_modes": ", ".join(modes),
                                                              "prompts": len(rep["prompts"]),
                                                              "seed": rep["config"]["seed"]})

    @dg.asset_check(asset="steering", blocking=False, partitions_def=partitions)
    @reports_errors
    def steering_direction_reads_sentiment(context: dg.AssetCheckExecutionContext,
                                           glp: GLPSettings) -> dg.AssetCheckResult:
        """The DiffMean direction separates held-out (probe-half) movie snippets by rating: the ROC-AUC of the
        projection on w is above 0.5 with its 95% bootstrap CI's lower bound above 0.5 too (warning only)."""
        d = report(glp, context, "steering.json")["direction"]
        return dg.AssetCheckResult(passed=bool(d["auc_ci"][0] > 0.5), severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"auc": d["auc"], "auc_ci_low": d["auc_ci"][0],
                                             "auc_ci_high": d["auc_ci"][1],
                                             "probe_snippets": sum(d["n_probe"])})

    @dg.asset_check(asset="steering", blocking=False, partitions_def=partitions)
    @reports_errors
    def steering_concept_rises_with_r(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Raw steering moves the judge: Spearman rho of r vs P(positive) over raw rows > 0, its CI (prompts
        resampled) above 0 (warning only)."""
        from glp.uses.steer_report import concept_rises

        rep = report(glp, context, "steering.json")
        t = rep["concept_trend"]

        def at(x: dict) -> str:
            return f"r={x['r']:g}: {x['concept']:.3f} [{x['concept_ci'][0]:.3f}, {x['concept_ci'][1]:.3f}]"

        return dg.AssetCheckResult(passed=concept_rises(rep), severity=dg.AssetCheckSeverity.WARN, metadata={
            "spearman_rho": t["spearman_r_vs_concept_raw"], "rho_ci_low": t["spearman_ci"][0],
            "rho_ci_high": t["spearman_ci"][1], "concept_at_min_r": at(t["concept_at_min_r"]),
            "concept_at_max_r": at(t["concept_at_max_r"])})

    @dg.asset_check(asset="steering", blocking=False, partitions_def=partitions)
    @reports_errors
    def steering_gate_hits_its_false_positive_rate(context: dg.AssetCheckExecutionContext,
                                                    glp: GLPSettings) -> dg.AssetCheckResult:
        """The gate flags the share of real held-out activations it was calibrated for: the 95% binomial CI of the
        rate measured on held-out rows it was not calibrated on holds steer.gate_fpr (warning only; passes when
        the report has no gated rows)."""
        cal = report(glp, context, "steering.json").get("gate_calibration")
        if not cal:
            return dg.AssetCheckResult(passed=True, metadata={"gated": "not run (steer.post lacks 'gated')"})
        lo, hi = cal["fpr_check_ci"]
        return dg.AssetCheckResult(passed=bool(lo <= cal["fpr_target"] <= hi), severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"fpr_target": cal["fpr_target"], "fpr_measured": cal["fpr_check"],
                                             "ci_low": lo, "ci_high": hi, "rows": cal["n_check"]})

    @dg.asset_check(asset="delta_lm", blocking=True, partitions_def=partitions)
    @reports_errors
    def delta_lm_finite(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Clean CE and every method's ΔCE, CI and reconstruction MSE are finite."""
        rep = report(glp, context, "delta_lm.json")
        vals = [rep["clean_ce"]] + [x for m in rep["methods"].values()
                                    for x in (m["delta_ce"], *m["delta_ce_ci"], m["recon_mse_normalized"])]
        n, bad = _finite(vals)
        return dg.AssetCheckResult(passed=bad == 0, metadata={"values": n, "nonfinite": bad})

    return [steering_scores_finite, steering_r0_is_unsteered, steering_paired_prompts_and_seeds,
            steering_direction_reads_sentiment, steering_concept_rises_with_r,
            steering_gate_hits_its_false_positive_rate, delta_lm_finite]
