"""Out-of-manifold detection: `ood[src]`, real held-out activations vs off-manifold sets, scored by the prior and by
the baselines (Mahalanobis under the training covariance, SAE reconstruction error), as AUROC with CIs.

glp_prior[src], sae[src], labelled ─► ood[src]
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

OOD_VERSION = "1"  # bump when the step's code changes what it produces


def build_ood_assets(settings: Settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(deps=["glp_prior", "sae", "labelled"], partitions_def=partitions, group_name=GROUP,
              code_version=f"{OOD_VERSION}-{config_hash(settings.ood)}")
    def ood(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """Off-manifold detection: AUROC of the GLP diffusion score and SDEdit error vs Mahalanobis, SAE error and
        norm, on steered, noised, dimension-shuffled, other-layer and other-text activations."""
        from glp.pipeline.layout import sae_dir
        from glp.pipeline.ood import build_ood
        from glp.uses.ood import ood_inline, ood_markdown

        s, src = glp.settings, glp.source(context)
        paths = pipeline.source_paths(s, src)
        require_upstream(paths.prior, "glp_prior", "ood", context.partition_key)
        require_upstream(sae_dir(paths.root), "sae", "ood", context.partition_key)
        with user_errors(), writing(context, paths.root / "ood.json", reads=[paths.activations_dir, paths.prior,
                                                                            sae_dir(paths.root), pipeline.model_dir(s, src)]):
            rep = build_ood(s, src, log=context.log.info)
        by = {x["name"]: x for x in rep["sets"]}
        per_set = {f"auroc_glp {x['name']}": x["auroc"]["glp"] for x in rep["sets"] if x["kind"] != "null"}
        return dg.MaterializeResult(
            metadata=readable({
                "headline": inline(rep["headline"]),
                "auroc_glp": inline(ood_inline(rep)),
                "report": dg.MetadataValue.md(ood_markdown(rep)),
                "roc_full": png(rep["roc_png"], "ROC curves per set"),
                "hist_full": png(rep["hist_png"], "GLP score histograms, real vs each set"),
                "auroc_null_glp (real vs real)": by["real (other held-out rows)"]["auroc"]["glp"],
                **per_set,
                "rows_per_set": rep["n_rows"],
                "other_layers": ", ".join(str(x) for x in rep["other_layers"]),
                "glp_score_flag_threshold": rep["glp_heldout_quantiles"][f"{1 - s.ood.fpr:g}"],
                "time": fmt.duration(rep["seconds"]["total"]),
                "path": rep["path"],
            }),
            data_version=dg.DataVersion(pipeline.short_sha256(Path(rep["path"]))),
        )

    return [ood]


def build_ood_checks(partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    def report(glp: GLPSettings, context: dg.AssetCheckExecutionContext) -> dict:
        return json.loads((pipeline.source_paths(glp.settings, glp.source(context)).root / "ood.json").read_text())

    @dg.asset_check(asset="ood", blocking=True, partitions_def=partitions)
    @reports_errors
    def ood_scores_finite(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Every score of every row (real and off-manifold) is finite, and so is every AUROC, CI and difference."""
        rep = report(glp, context)
        bad_rows = sum(rep["nonfinite_real"].values()) + sum(v for x in rep["sets"] for v in x["nonfinite"].values())
        vals = [v for x in rep["sets"] for k in x["auroc"] for v in (x["auroc"][k], *x["ci"][k])]
        vals += [v for x in rep["sets"] for d in x["diff"].values() for v in (d["d"], *d["ci"])]
        arr = np.asarray(vals, dtype=float)
        bad = int((~np.isfinite(arr)).sum())
        return dg.AssetCheckResult(passed=bad == 0 and bad_rows == 0,
                                   metadata={"values": arr.size, "nonfinite": bad, "nonfinite_row_scores": bad_rows})

    @dg.asset_check(asset="ood", blocking=True, partitions_def=partitions)
    @reports_errors
    def ood_sets_complete(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Every configured set is in the report (null, steered and noised at each r, shuffled dims, each other
        layer, each text set), each with at least 20 rows on both sides."""
        cfg = glp.settings.ood
        rep = report(glp, context)
        kinds = [x["kind"] for x in rep["sets"]]
        want = {"null": 1, "steered": len(cfg.r_values), "noised": len(cfg.r_values), "shuffled_dims": 1,
                "other_layer": len(rep["other_layers"]), "text": len(cfg.text_sets)}
        have = {k: kinds.count(k) for k in want}
        small = [x["name"] for x in rep["sets"] if min(x["n_real"], x["n_off"]) < 20]
        return dg.AssetCheckResult(passed=have == want and not small,
                                   metadata={"sets": len(kinds), "expected": json.dumps(want),
                                             "found": json.dumps(have), "too_small": ", ".join(small) or "none"})

    @dg.asset_check(asset="ood", blocking=False, partitions_def=partitions)
    @reports_errors
    def ood_null_set_is_chance(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Real held-out rows vs other real held-out rows: every score's AUROC CI holds 0.5 (warning only; a score
        that separates two real samples measures something other than the manifold)."""
        null = next(x for x in report(glp, context)["sets"] if x["kind"] == "null")
        off = [k for k, (lo, hi) in null["ci"].items() if not lo <= 0.5 <= hi]
        return dg.AssetCheckResult(passed=not off, severity=dg.AssetCheckSeverity.WARN,
                                   metadata={**{f"auroc_{k}": v for k, v in null["auroc"].items()},
                                             "scores_off_chance": ", ".join(off) or "none"})

    @dg.asset_check(asset="ood", blocking=False, partitions_def=partitions)
    @reports_errors
    def ood_glp_detects_noise(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """The GLP diffusion score tells the most strongly noised rows from real ones: AUROC CI above 0.5
        (warning only)."""
        noised = [x for x in report(glp, context)["sets"] if x["kind"] == "noised"]
        top = max(noised, key=lambda x: x["r"])
        lo, hi = top["ci"]["glp"]
        return dg.AssetCheckResult(passed=bool(lo > 0.5), severity=dg.AssetCheckSeverity.WARN,
                                   metadata={"set": top["name"], "auroc": top["auroc"]["glp"], "ci_low": lo,
                                             "ci_high": hi})

    return [ood_scores_finite, ood_sets_complete, ood_null_set_is_chance, ood_glp_detects_noise]
