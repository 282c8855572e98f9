"""Asset checks: one property each, evidence in metadata; blocking where downstream consumes the asset.

A check never errors: `reports_errors` turns an exception in its body (a corrupt chunk, a missing file) into a failed
check with the error as evidence and what to do, so the UI shows a red check rather than a crashed step.
"""


import functools
import json
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import dagster as dg
import numpy as np

from glp import pipeline
from glp_dagster.resources import GLPSettings


def _numbers(obj: object) -> Iterator[float]:
    """Every numeric leaf of a JSON value (bools and strings are not numbers here)."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield float(obj)


def error_result(context: dg.AssetCheckExecutionContext, check: str, e: Exception) -> dg.AssetCheckResult:
    """A failed check whose evidence is the exception its body raised."""
    asset = context.check_specs[0].asset_key.to_user_string()
    part = context.partition_key if context.has_partition_key else None
    select = f"--select '{asset}'" + (f" --partition '{part}'" if part else "")
    error = f"{type(e).__name__}: {e}"
    return dg.AssetCheckResult(
        passed=False,
        description=f"`{check}` could not evaluate `{asset}`{f' for `{part}`' if part else ''} ({error[:300]}). "
                    f"The artifact (or an input the check reads) is missing, unreadable or corrupt: re-materialize it "
                    f"(dagster asset materialize -m glp_dagster.definitions {select}); if the check fails the same "
                    "way on a fresh artifact, the traceback in this result's metadata shows where.",
        metadata={"error": error[:2000],
                  "traceback": dg.MetadataValue.text("".join(traceback.format_exception(e))[-4000:])},
    )


def reports_errors(check: Callable[..., dg.AssetCheckResult]) -> Callable[..., dg.AssetCheckResult]:
    """Wrap a check body (under `@dg.asset_check`) so that an exception becomes a failed result, never an error."""

    @functools.wraps(check)
    def body(context: dg.AssetCheckExecutionContext, **resources: object) -> dg.AssetCheckResult:
        try:
            return check(context, **resources)
        except Exception as e:  # noqa: BLE001 (the point: any failure to evaluate is reported as a failed check)
            return error_result(context, check.__name__, e)

    body.reports_errors = True  # type: ignore[attr-defined]  # tests assert every check carries it
    return body


def norm_stats_suite_result(mean: np.ndarray, std: np.ndarray, n_rows: int, store_rows: int) -> tuple[bool, dict]:
    """Validate the normalization stats with a great-expectations suite (ephemeral context, nothing written)."""
    import great_expectations as gx
    import pandas as pd

    from great_expectations.data_context.types.base import ProgressBarsConfig

    df = pd.DataFrame({"dim": np.arange(len(mean)), "mean": mean, "std": std, "n": n_rows})
    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)  # its tqdm bars would litter the run's console
    batch = (
        ctx.data_sources.add_pandas("norm_stats")
        .add_dataframe_asset("per_dim")
        .add_batch_definition_whole_dataframe("all")
        .get_batch(batch_parameters={"dataframe": df})
    )
    big = float(np.finfo(np.float32).max)
    suite = ctx.suites.add(gx.ExpectationSuite(name="norm_stats", expectations=[
        gx.expectations.ExpectColumnValuesToNotBeNull(column="mean"),
        gx.expectations.ExpectColumnValuesToNotBeNull(column="std"),
        gx.expectations.ExpectColumnValuesToBeBetween(column="std", min_value=0, max_value=big, strict_min=True),
        gx.expectations.ExpectColumnValuesToBeBetween(column="mean", min_value=-big, max_value=big),
        gx.expectations.ExpectColumnValuesToBeBetween(column="n", min_value=store_rows, max_value=store_rows),
        gx.expectations.ExpectColumnValuesToBeUnique(column="dim"),
    ]))
    res = batch.validate(suite)
    failed = [r.expectation_config.type for r in res.results if not r.success]
    return bool(res.success), {"expectations": len(res.results), "failed": ", ".join(failed) or "none"}


def build_checks(partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    def paths(glp: GLPSettings, context: dg.AssetCheckExecutionContext) -> pipeline.SourcePaths:
        return pipeline.source_paths(glp.settings, glp.source(context))

    @dg.asset_check(asset="activations", blocking=True, partitions_def=partitions)
    @reports_errors
    def activations_finite(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Every stored activation (train and held-out) is finite."""
        from glp.data.store import ActivationStore

        meta = {}
        ok = True
        for split in ("train", "heldout"):
            store = ActivationStore(paths(glp, context).store(split))
            bad = sum(int((~np.isfinite(c)).sum()) for c in store.iter_chunks())
            meta[f"nonfinite_{split}"] = bad
            ok &= bad == 0
        return dg.AssetCheckResult(passed=ok, metadata=meta)

    @dg.asset_check(asset="activations", blocking=True, partitions_def=partitions)
    @reports_errors
    def activations_checksums(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Every chunk of every array (train and held-out) decodes and matches the checksum recorded at publish."""
        from glp.data.store import ActivationStore

        meta: dict = {}
        problems: list[dict] = []
        for split in ("train", "heldout"):
            store = ActivationStore(paths(glp, context).store(split))
            found = store.verify()
            meta[f"chunks_{split}"] = store.n_chunks * 4
            meta[f"problems_{split}"] = len(found)
            problems += [{"split": split, **p} for p in found]
        if problems:
            meta["first_problems"] = dg.MetadataValue.json(problems[:5])
        return dg.AssetCheckResult(
            passed=not problems, metadata=meta,
            description=None if not problems else f"{len(problems)} corrupt chunk(s), first: {problems[0]['problem']}")

    @dg.asset_check(asset="activations", blocking=True, partitions_def=partitions)
    @reports_errors
    def activations_row_count(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Rows = non-BOS tokens of the covered documents (re-tokenized independently); no BOS row."""
        from glp.data.store import ActivationStore

        src = glp.source(context)
        meta, ok = {}, True
        for split in ("train", "heldout"):
            store = ActivationStore(paths(glp, context).store(split))
            tokens = pipeline.count_tokens(glp.settings, src, split)
            bos_rows = int((store.provenance("position") == 0).sum())
            meta |= {f"rows_{split}": store.n_rows, f"tokens_{split}": tokens, f"bos_rows_{split}": bos_rows}
            ok &= store.n_rows == tokens and bos_rows == 0
        return dg.AssetCheckResult(passed=ok, metadata=meta)

    @dg.asset_check(asset="norm_stats", blocking=True, partitions_def=partitions)
    @reports_errors
    def norm_stats_expectations(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Great-expectations suite: finite mean, std > 0 on every dim, row count = store rows."""
        from glp.data.stats import NormStats
        from glp.data.store import ActivationStore

        p = paths(glp, context)
        stats = NormStats.load(p.norm_stats)
        ok, meta = norm_stats_suite_result(stats.mean, np.sqrt(stats.var), stats.n, ActivationStore(p.store("train")).n_rows)
        return dg.AssetCheckResult(passed=ok, metadata={**meta, "min_std": float(np.sqrt(stats.var).min())})

    @dg.asset_check(asset="norm_stats", blocking=True, partitions_def=partitions)
    @reports_errors
    def norm_stats_no_outlier_dims(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """No dimension's train std is more than 3x off (either way) the held-out store's: one corrupted value
        blows up one dimension's std, which the suite's per-dimension bounds cannot see."""
        from glp.data.stats import NormStats, compute_stats, std_outliers
        from glp.data.store import ActivationStore

        p = paths(glp, context)
        stats = NormStats.load(p.norm_stats)
        ref = compute_stats(ActivationStore(p.store("heldout")), with_cov=False)
        out = std_outliers(stats.var, ref.var)
        ratio = np.sqrt(stats.var / np.maximum(ref.var, 1e-30))
        return dg.AssetCheckResult(
            passed=not out,
            metadata={"outlier_dims": len(out), "std_ratio_min": round(float(ratio.min()), 3),
                      "std_ratio_max": round(float(ratio.max()), 3),
                      **({"worst": dg.MetadataValue.json(out[:5])} if out else {})},
            description=None if not out else f"dimension {out[0]['dim']}: train std is {out[0]['std_ratio']:.3g}x the "
                        "held-out store's: a corrupt value in the train store? verify it (activations_checksums) and "
                        "re-materialize `activations`",
        )

    @dg.asset_check(asset="glp_prior", blocking=True, partitions_def=partitions)
    @reports_errors
    def prior_loss_decreased(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Mean training loss over the last 10% of steps is below that of the first 10%."""
        cfg = json.loads((paths(glp, context).prior / "config.json").read_text())
        losses = cfg["losses"]
        k = max(1, len(losses) // 10)
        first, last = float(np.mean(losses[:k])), float(np.mean(losses[-k:]))
        return dg.AssetCheckResult(passed=last < first, metadata={"loss_first_10pct": first, "loss_last_10pct": last})

    @dg.asset_check(asset="glp_prior", blocking=True, partitions_def=partitions)
    @reports_errors
    def prior_input_dim_matches_store(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """The prior's input width equals the activation store's width."""
        from glp.data.store import ActivationStore

        p = paths(glp, context)
        d_prior = json.loads((p.prior / "config.json").read_text())["denoiser"]["d_model"]
        d_store = ActivationStore(p.store("train")).d_model
        return dg.AssetCheckResult(passed=d_prior == d_store, metadata={"prior_d": d_prior, "store_d": d_store})

    @dg.asset_check(asset="prior_eval", blocking=True, partitions_def=partitions)
    @reports_errors
    def prior_eval_finite(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Every number in the evaluation report (nested tables included) is finite."""
        rep = json.loads(Path(paths(glp, context).prior_eval).read_text())
        values = list(_numbers(rep))
        bad = int((~np.isfinite(np.asarray(values, dtype=float))).sum())
        return dg.AssetCheckResult(passed=bad == 0, metadata={"values": len(values), "nonfinite": bad})

    @dg.asset_check(asset="prior_eval", partitions_def=partitions)
    @reports_errors
    def prior_beats_gaussian_baseline(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """The prior beats the full-covariance Gaussian: held-out loss below the optimal affine predictor's, and
        GLP samples harder to tell from held-out rows (C2ST AUC, CIs apart) than the Gaussian's samples."""
        from glp.prior.evaluate import beats_gaussian

        rep = json.loads(Path(paths(glp, context).prior_eval).read_text())
        ok, reasons = beats_gaussian(rep)
        return dg.AssetCheckResult(
            passed=bool(ok),
            severity=dg.AssetCheckSeverity.WARN,
            description="; ".join(reasons) or None,
            metadata={k: rep[k] for k in ("heldout_loss_mean", "gaussian_baseline_loss_mean", "c2st_auc_glp",
                                          "c2st_auc_full_gaussian", "c2st_auc_floor", "fd_glp", "fd_full_gaussian",
                                          "fd_heldout_floor")},
        )

    return [activations_finite, activations_checksums, activations_row_count, norm_stats_expectations,
            norm_stats_no_outlier_dims, prior_loss_decreased,
            prior_input_dim_matches_store, prior_eval_finite, prior_beats_gaussian_baseline]
