"""Prior assets (glp.pipeline.prior): the GLP trained through DeepSpeed and exported (`glp_prior`), and its
evaluation against the full-covariance Gaussian, SAE and PCA baselines (`prior_eval`), with their checks.
"""

import json
from pathlib import Path

import dagster as dg
import numpy as np

from glp import fmt, pipeline
from glp.config import Settings, config_hash
from glp_dagster.metadata import inline, png, readable
from glp_dagster.resources import GLPSettings
from glp_dagster.step import CODE_VERSION, GROUP, numbers_in, reports_errors, require_upstream, user_errors, writing

EVAL_VERSION = "2"  # 2: full-covariance Gaussian, SAE and PCA rows, raw-space FD, FD by n, C2ST, sampler sweep


def build_prior_assets(settings: Settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    @dg.asset(deps=[dg.AssetKey("norm_stats")], partitions_def=partitions, group_name=GROUP, kinds={"deepspeed"},
              code_version=f"{CODE_VERSION}-{config_hash(settings.denoiser)}-{config_hash(settings.train)}")
    def glp_prior(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """The GLP denoiser trained by flow matching through DeepSpeed, exported as safetensors (in this step's
        process, or on `train.world_size` torchrun ranks launched through Dagster Pipes)."""
        from glp.report import loss_curve_inline, loss_curve_png

        s, src = glp.settings, glp.source(context)
        require_upstream(pipeline.source_paths(s, src).norm_stats, "norm_stats", "glp_prior", context.partition_key)
        paths = pipeline.source_paths(s, src)
        # prior/ and its prior.ckpt/; the stores and the stats it trains on stay as they are while it trains
        with user_errors(), writing(context, paths.prior, reads=[paths.activations_dir, paths.norm_stats]):
            if s.train.world_size == 1:
                out = pipeline.build_prior(s, src, log=context.log.info)
            else:  # torchrun ranks through Dagster Pipes
                from glp_dagster.pipes_train import launch_training

                out = launch_training(context, s, src)
            losses = out["losses"]
            png_bytes = loss_curve_png(losses)
            (Path(out["path"]) / "loss_curve.png").write_bytes(png_bytes)
        k = max(1, len(losses) // 10)
        return dg.MaterializeResult(
            metadata=readable({
                "loss_curve": inline(loss_curve_inline(losses)),
                "train_loss_first_10pct (MSE/dim)": sum(losses[:k]) / k,
                "train_loss_last_10pct (MSE/dim)": sum(losses[-k:]) / k,
                "steps": fmt.count(out["steps"]),
                "n_params": fmt.count(out["n_params"]),
                "rows_per_s": fmt.count(out["rows_per_s"]),
                "achieved GFLOP/s": out["achieved_flops"] / 1e9,
                "precision": out["precision"],
                "ranks": out.get("world_size", 1),
                "resumed_from_step": out["resumed_from"],
                "loss_curve_full": png(png_bytes, "loss curve"),
                "path": out["path"],
            }),
            data_version=dg.DataVersion(out["version"]),
        )

    @dg.asset(deps=[glp_prior, dg.AssetKey("sae")], partitions_def=partitions, group_name=GROUP,
              code_version=f"{CODE_VERSION}-{EVAL_VERSION}-{config_hash(settings.eval)}")
    def prior_eval(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """Held-out loss per t vs the optimal affine (Gaussian) predictor; FD (normalized and raw) and a classifier
        two-sample test of GLP samples against the full-covariance Gaussian, SAE and PCA reconstructions and the
        held-out noise floor."""
        from glp.pipeline.layout import sae_dir
        from glp.report import eval_headline, eval_table, loss_by_t_inline, loss_by_t_png

        s, src = glp.settings, glp.source(context)
        paths = pipeline.source_paths(s, src)
        require_upstream(paths.prior, "glp_prior", "prior_eval", context.partition_key)
        require_upstream(sae_dir(paths.root), "sae", "prior_eval", context.partition_key)
        with user_errors(), writing(context, paths.prior_eval, reads=[paths.activations_dir, paths.norm_stats, paths.prior,
                                                                     sae_dir(paths.root)]):
            rep = pipeline.build_prior_eval(s, src, log=context.log.info)
        return dg.MaterializeResult(
            metadata=readable({
                "result": inline(eval_headline(rep)),
                "loss_by_t": inline(loss_by_t_inline(rep)),
                "heldout_loss (MSE/dim)": rep["heldout_loss_mean"],
                "gaussian_baseline_loss (MSE/dim)": rep["gaussian_baseline_loss_mean"],
                "loss_ratio_vs_gaussian": rep["loss_ratio_vs_gaussian"],
                "c2st_auc_glp": rep["c2st_auc_glp"],
                "c2st_auc_full_gaussian": rep["c2st_auc_full_gaussian"],
                "c2st_auc_floor": rep["c2st_auc_floor"],
                "fd_glp": rep["fd_glp"],
                "fd_full_gaussian": rep["fd_full_gaussian"],
                "fd_heldout_floor": rep["fd_heldout_floor"],
                "beats_gaussian": rep["beats_gaussian"],
                "report": dg.MetadataValue.md(eval_table(rep)),
                "loss_by_t_full": png(loss_by_t_png(rep), "held-out loss by t"),
                "path": str(paths.prior_eval),
            }),
            data_version=dg.DataVersion(pipeline.short_sha256(paths.prior_eval)),
        )

    return [glp_prior, prior_eval]


def build_prior_checks(partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset="glp_prior", blocking=True, partitions_def=partitions)
    @reports_errors
    def prior_loss_decreased(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Mean training loss over the last 10% of steps is below that of the first 10%."""
        cfg = json.loads((glp.paths(context).prior / "config.json").read_text())
        losses = cfg["losses"]
        k = max(1, len(losses) // 10)
        first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
        return dg.AssetCheckResult(passed=last < first, metadata={"loss_first_10pct": first, "loss_last_10pct": last})

    @dg.asset_check(asset="glp_prior", blocking=True, partitions_def=partitions)
    @reports_errors
    def prior_input_dim_matches_store(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """The prior's input width equals the activation store's width."""
        from glp.data.store import ActivationStore

        p = glp.paths(context)
        d_prior = json.loads((p.prior / "config.json").read_text())["denoiser"]["d_model"]
        d_store = ActivationStore(p.store("train")).d_model
        return dg.AssetCheckResult(passed=d_prior == d_store, metadata={"prior_d": d_prior, "store_d": d_store})

    @dg.asset_check(asset="prior_eval", blocking=True, partitions_def=partitions)
    @reports_errors
    def prior_eval_finite(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Every number in the evaluation report (nested tables included) is finite."""
        rep = json.loads(Path(glp.paths(context).prior_eval).read_text())
        values = list(numbers_in(rep))
        bad = int((~np.isfinite(np.asarray(values, dtype=float))).sum())
        return dg.AssetCheckResult(passed=bad == 0, metadata={"values": len(values), "nonfinite": bad})

    @dg.asset_check(asset="prior_eval", partitions_def=partitions)
    @reports_errors
    def prior_beats_gaussian_baseline(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """The prior beats the full-covariance Gaussian: held-out loss below the optimal affine predictor's, and
        GLP samples harder to tell from held-out rows (C2ST AUC, CIs apart) than the Gaussian's samples."""
        from glp.prior.evaluate import beats_gaussian

        rep = json.loads(Path(glp.paths(context).prior_eval).read_text())
        ok, reasons = beats_gaussian(rep)
        return dg.AssetCheckResult(
            passed=bool(ok),
            severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(reasons) or None,
            metadata={k: rep[k] for k in ("heldout_loss_mean", "gaussian_baseline_loss_mean", "c2st_auc_glp",
                                          "c2st_auc_full_gaussian", "c2st_auc_floor", "fd_glp", "fd_full_gaussian",
                                          "fd_heldout_floor")},
        )

    return [prior_loss_decreased, prior_input_dim_matches_store, prior_eval_finite, prior_beats_gaussian_baseline]
