"""The scaling asset: `scaling[src]`, a sweep of priors over compute with its power-law fit and downstream
correlations (glp.uses.scaling). A separate selection, not part of `make run`:

    dagster asset materialize -m glp_dagster.definitions --select scaling --partition smollm2-135m/L15

activations[src], norm_stats[src] ─┐
probe_tasks, labelled ─────────────┼─► scaling[src]
source_lm / source_model ──────────┘

One asset, not a partition per point: each point is an entry of `scaling.points` whose prior is cached by a hash of
what it depends on, so adding a point trains only that point, while the fit and the correlations, which need every
point, are recomputed (seconds). A dynamic partition per point would split what one fit needs over many runs.
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

SCALING_VERSION = "1"


def _root(s: Settings, src) -> Path:  # noqa: ANN001 (SourceConfig)
    from glp.pipeline.layout import scaling_dir

    return scaling_dir(pipeline.source_paths(s, src).root)


def build_scaling_assets(settings: Settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(deps=["activations", "norm_stats", "probe_tasks", "labelled", "source_lm", "source_model"],
              partitions_def=partitions, group_name=GROUP, kinds={"deepspeed", "scipy"},
              code_version=f"{SCALING_VERSION}-{config_hash(settings.scaling)}")
    def scaling(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """Priors over depth × width × activations seen: held-out loss vs C = 6·N·D, the fit L(C) = E + A·C^(−α)
        with bootstrap CIs, and probe AUC / steering / ΔLM against loss (Spearman, bootstrap CIs)."""
        from glp.pipeline.scaling import build_scaling
        from glp.uses.scaling import scaling_headline, scaling_inline, scaling_markdown

        s, src, part = glp.settings, glp.source(context), context.partition_key
        paths = pipeline.source_paths(s, src)
        require_upstream(paths.store("train"), "activations", "scaling", part)
        require_upstream(paths.norm_stats, "norm_stats", "scaling", part)
        require_upstream(Path(s.probe_tasks.path) / "tasks.json", "probe_tasks", "scaling", part)
        if src.model == "builtin":
            require_upstream(pipeline.builtin_lm_dir(s), "source_lm", "scaling", part)
        with user_errors(), writing(context, _root(s, src), reads=[pipeline.source_paths(s, src).activations_dir,
                                                                   pipeline.source_paths(s, src).norm_stats, pipeline.model_dir(s, src)]):
            rep = build_scaling(s, src, log=context.log.info)
        f, pts = rep["fit"], rep["points"]
        c = [p["C"] for p in pts]
        corr = rep["downstream"]["correlations"]
        md = {}
        for m, v in corr.items():
            md[f"rho_loss_vs_{m}"] = v["spearman"]
            md[f"rho_loss_vs_{m}_ci"] = f"[{v['ci_points'][0]:+.3f}, {v['ci_points'][1]:+.3f}] (priors), " \
                                        f"[{v['ci_units'][0]:+.3f}, {v['ci_units'][1]:+.3f}] (units)"
            md[f"lower_loss_better_{m}"] = v["verdict"]
        return dg.MaterializeResult(
            metadata=readable({
                "result": inline(scaling_headline(rep)),
                "loss_vs_compute": inline(scaling_inline(rep)),
                "E": f["E"], "A": f["A"], "alpha": f["alpha"],
                "E_ci": f"[{f['E_ci'][0]:.4g}, {f['E_ci'][1]:.4g}]", "A_ci": f"[{f['A_ci'][0]:.4g}, {f['A_ci'][1]:.4g}]",
                "alpha_ci": f"[{f['alpha_ci'][0]:.4g}, {f['alpha_ci'][1]:.4g}]",
                "rms_log_residual": f["rms_residual_log"],
                "n_points": len(pts), "n_priors": len(rep["priors"]),
                "C_range": f"{min(c):.3g} – {max(c):.3g} FLOPs ({np.log10(max(c) / min(c)):.2f} decades)",
                "spearman_loss_vs_C": rep["spearman_loss_vs_c"],
                "gaussian_prior_loss": rep["gaussian"]["loss"],
                **md,
                "priors_trained_this_run": len(rep["trained_now"]),
                "report": dg.MetadataValue.md(scaling_markdown(rep)),
                "scaling_full": png(Path(rep["png"]).read_bytes(), "held-out loss vs compute, with the paper's shape"),
                "downstream_full": png(Path(rep["downstream_png"]).read_bytes(), "downstream vs held-out loss"),
                "time": fmt.duration(rep["seconds"]["total"]),
                "path": rep["path"],
            }),
            data_version=dg.DataVersion(pipeline.short_sha256(Path(rep["path"]))),
        )

    return [scaling]


def build_scaling_checks(partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    def report(glp: GLPSettings, context: dg.AssetCheckExecutionContext) -> dict:
        return json.loads((_root(glp.settings, glp.source(context)) / "scaling.json").read_text())

    @dg.asset_check(asset="scaling", blocking=True, partitions_def=partitions)
    @reports_errors
    def scaling_fit_converged(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """The least-squares fit of L(C) converged to finite E, A, α, and at least half the bootstrap refits ran."""
        f = report(glp, context)["fit"]
        finite = all(np.isfinite(f[k]) for k in ("E", "A", "alpha"))
        n_boot = report(glp, context)["config"]["n_bootstrap"]
        ok = f["converged"] and finite and f["n_boot_ok"] >= n_boot / 2
        return dg.AssetCheckResult(passed=bool(ok), metadata={
            "converged": f["converged"], "status": f["status"], "message": f["message"], "nfev": f["nfev"],
            "bootstrap_refits": f"{f['n_boot_ok']} of {n_boot}",
            "at_bounds": ", ".join(k for k, v in f["at_bound"].items() if v) or "none"})

    @dg.asset_check(asset="scaling", blocking=True, partitions_def=partitions)
    @reports_errors
    def scaling_residuals_reported(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Every point has a finite residual of the fit (log L − log L̂), reported here point by point."""
        from glp.report import markdown_table

        rep = report(glp, context)
        res = rep["fit"]["residuals_log"]
        ok = len(res) == len(rep["points"]) and bool(np.all(np.isfinite(res)))
        table = markdown_table(["point", "C", "loss", "log residual"],
                               [[p["label"], f"{p['C']:.3g}", f"{p['loss']:.4f}", f"{r:+.4f}"]
                                for p, r in zip(rep["points"], res)])
        return dg.AssetCheckResult(passed=ok, metadata={
            "rms_log_residual": float(rep["fit"]["rms_residual_log"]),
            "max_abs_log_residual": float(rep["fit"]["max_abs_residual_log"]),
            "points": len(rep["points"]), "residuals": dg.MetadataValue.md(table)})

    @dg.asset_check(asset="scaling", blocking=True, partitions_def=partitions)
    @reports_errors
    def scaling_loss_falls_with_compute(context: dg.AssetCheckExecutionContext,
                                        glp: GLPSettings) -> dg.AssetCheckResult:
        """Held-out loss falls with compute on average: Spearman rho of loss vs C over all points is below 0."""
        rep = report(glp, context)
        rho = rep["spearman_loss_vs_c"]
        return dg.AssetCheckResult(passed=bool(np.isfinite(rho) and rho < 0),
                                   metadata={"spearman_loss_vs_C": float(rho), "points": len(rep["points"])})

    return [scaling_fit_converged, scaling_residuals_reported, scaling_loss_falls_with_compute]
