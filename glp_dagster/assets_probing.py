"""Probing assets: the tasks dataset, the SAE baseline and the 1-D probing report, with their checks.

corpus ─► probe_tasks ───────────────────────────────┐
activations[src], norm_stats[src] ─► sae[src] ───────┼─► probes[src]
source_lm, glp_prior[src] ───────────────────────────┘
"""


import json
from pathlib import Path

import dagster as dg
import numpy as np

from glp import pipeline
from glp.config import Settings, config_hash
from glp_dagster.assets import _materialize_hint, user_errors, writing
from glp_dagster.checks import reports_errors
from glp_dagster.resources import GLPSettings

CODE_VERSION = "1"  # bump when a step's code changes what it produces


def require(path: Path, upstream: str, asset: str, partition: str | None) -> None:
    """Fail naming both selections when an upstream artifact is missing: `+key:X` (all ancestors), legacy `+X`."""
    if not Path(path).exists():
        raise dg.Failure(
            description=f"`{asset}` needs `{upstream}`, which is not materialized (missing {path}). "
            f"Materialize it together with all its upstream assets: {_materialize_hint(asset, partition)} "
            f"(`+key:{asset}` selects every ancestor; the legacy `--select '+{asset}'` adds only one layer up, "
            "so it works once the assets above that layer are stored)"
        )


def _sae_dir(s: Settings, src) -> Path:  # noqa: ANN001 (SourceConfig)
    from glp.sae import sae_dir

    return sae_dir(pipeline.source_paths(s, src).root)


def _probes_dir(s: Settings, src) -> Path:  # noqa: ANN001
    from glp.probe import probes_dir

    return probes_dir(pipeline.source_paths(s, src).root)


def build_probing_assets(settings: Settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """`probe_tasks` (unpartitioned), `sae` and `probes` (per source)."""

    @dg.asset(deps=[dg.AssetKey("corpus"), dg.AssetKey("labelled")], group_name="probing", kinds={"dvc"},
              code_version=f"{CODE_VERSION}-{config_hash(settings.probe_tasks)}")
    def probe_tasks(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """Binary probing tasks (DVC stage `probe_tasks`): validated, described, versioned by content hash."""
        from glp.probe_tasks import load_tasks, tasks_hash
        from glp.report import markdown_table

        path = glp.settings.probe_tasks.path
        with user_errors():
            tasks = load_tasks(path)
            digest = tasks_hash(path)
        table = markdown_table(["task", "category", "train", "test", "source", "description"],
                               [[t.name, t.info["category"], len(t.train_y), len(t.test_y), t.info["source"],
                                 t.info["description"]] for t in tasks])
        return dg.MaterializeResult(
            metadata={"path": str(path), "n_tasks": len(tasks),
                      "n_examples": sum(len(t.train_y) + len(t.test_y) for t in tasks),
                      "tasks_hash": digest[:16], "tasks": dg.MetadataValue.md(table)},
            data_version=dg.DataVersion(digest[:16]),
        )

    @dg.asset(deps=[dg.AssetKey("activations"), dg.AssetKey("norm_stats")], partitions_def=partitions,
              group_name="probing", kinds={"pytorch", "safetensors"},
              code_version=f"{CODE_VERSION}-{config_hash(settings.sae)}-{settings.train.epochs}")
    def sae(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """TopK SAE baseline trained on the source's activation store (the prior's budget of rows)."""
        from glp.report import loss_curve_png, png_markdown

        s, src = glp.settings, glp.source(context)
        paths = pipeline.source_paths(s, src)
        require(paths.store("train"), "activations", "sae", context.partition_key)
        require(paths.norm_stats, "norm_stats", "sae", context.partition_key)
        with user_errors(), writing(context, _sae_dir(s, src)):
            from glp.sae import build_sae

            out = build_sae(s, src, log=context.log.info)
        png = loss_curve_png(out["losses"], title="TopK SAE training FVU")
        return dg.MaterializeResult(
            metadata={"path": out["path"], "n_latents": out["n_latents"], "k": out["k"], "steps": out["steps"],
                      "rows_seen": out["rows_seen"], "fvu_first_10pct": out["fvu_first"], "fvu_last_10pct": out["fvu_last"],
                      "heldout_fvu": out["heldout_fvu"], "dead_fraction": out["dead_fraction"],
                      "train_seconds": round(out["seconds"], 1), "rows_per_s": round(out["rows_per_s"], 1),
                      "fvu_curve": dg.MetadataValue.md(png_markdown(png, "SAE FVU"))},
            data_version=dg.DataVersion(out["version"]),
        )

    @dg.asset(deps=[probe_tasks, sae, dg.AssetKey("glp_prior"), dg.AssetKey("source_lm"), dg.AssetKey("source_model")],
              partitions_def=partitions,
              group_name="probing", code_version=f"{CODE_VERSION}-{config_hash(settings.probe)}")
    def probes(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """1-D probing: mean test AUC of the best single unit per family (Table 4), per task, dashboards."""
        from glp.probe import FAMILY_LABELS, per_task_png, table4_markdown
        from glp.report import png_markdown

        s, src = glp.settings, glp.source(context)
        paths, part = pipeline.source_paths(s, src), context.partition_key
        require(Path(s.probe_tasks.path) / "tasks.json", "probe_tasks", "probes", part)
        if src.model == "builtin":
            require(pipeline.builtin_lm_dir(s), "source_lm", "probes", part)
        if "glp" in s.probe.families:
            require(paths.prior, "glp_prior", "probes", part)
        if "sae" in s.probe.families:
            require(_sae_dir(s, src), "sae", "probes", part)
        with user_errors(), writing(context, _probes_dir(s, src)):
            from glp.probe import build_probes

            rep = build_probes(s, src, log=context.log.info)
        fams, summ = rep["families"], rep["summary"]
        md = {f"mean_auc_{f}": summ["one_d"][f]["mean"] for f in fams}
        md |= {f"dense_auc_{f}": summ["dense"][f]["mean"] for f in summ["dense"]}
        return dg.MaterializeResult(
            metadata={
                "path": rep["path"], "n_tasks": len(rep["tasks"]), "n_texts": rep["n_texts"],
                **md,
                "paper_ordering_reproduced": summ["paper_ordering_reproduced"],
                "ordering": " < ".join(FAMILY_LABELS[f] for f in summ["ordering"]),
                "table4": dg.MetadataValue.md(table4_markdown(summ, fams)),
                "per_task": dg.MetadataValue.md(png_markdown(per_task_png(rep["tasks"], fams), "AUC per task")),
                "dashboards": dg.MetadataValue.md((Path(rep["path"]) / "dashboards.md").read_text()),
                "seconds": dg.MetadataValue.json({k: round(v, 1) for k, v in rep["seconds"].items()}),
            },
            data_version=dg.DataVersion(pipeline.short_sha256(Path(rep["path"]) / "results.json")),
        )

    return [probe_tasks, sae, probes]


def build_probing_checks(partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset="probe_tasks", blocking=True)
    @reports_errors
    def probe_tasks_both_classes_in_each_split(context: dg.AssetCheckExecutionContext, glp: GLPSettings
                                               ) -> dg.AssetCheckResult:
        """Every task has positives and negatives in both train and test."""
        from glp.probe_tasks import load_tasks, split_counts

        bad = [t.name for t in load_tasks(glp.settings.probe_tasks.path) if min(split_counts(t).values()) == 0]
        return dg.AssetCheckResult(passed=not bad, metadata={"tasks_missing_a_class": ", ".join(bad) or "none"})

    @dg.asset_check(asset="probe_tasks", blocking=True)
    @reports_errors
    def probe_tasks_balanced_and_large_enough(context: dg.AssetCheckExecutionContext, glp: GLPSettings
                                              ) -> dg.AssetCheckResult:
        """Every task is balanced (equal class sizes) and has at least `probe_tasks.min_examples` examples."""
        from glp.probe_tasks import load_tasks, split_counts

        cfg = glp.settings.probe_tasks
        tasks = load_tasks(cfg.path)
        bad = []
        for t in tasks:
            c = split_counts(t)
            if c["train_pos"] + c["test_pos"] != c["train_neg"] + c["test_neg"] or sum(c.values()) < cfg.min_examples:
                bad.append(t.name)
        return dg.AssetCheckResult(passed=not bad, metadata={"n_tasks": len(tasks), "failing": ", ".join(bad) or "none",
                                                             "min_examples": cfg.min_examples})

    @dg.asset_check(asset="sae", blocking=True, partitions_def=partitions)
    @reports_errors
    def sae_reconstructs(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Weights finite and held-out fraction of variance unexplained below 1 (beats the mean)."""
        from glp.sae import load_sae

        src = glp.source(context)
        model, _, cfg = load_sae(_sae_dir(glp.settings, src))
        finite = all(bool(np.isfinite(p.detach().numpy()).all()) for p in model.parameters())
        fvu = cfg.get("heldout_fvu")
        fvu = cfg["fvu_last"] if fvu is None else fvu
        return dg.AssetCheckResult(passed=finite and fvu < 1.0, metadata={"finite": finite, "fvu": float(fvu)})

    @dg.asset_check(asset="probes", blocking=True, partitions_def=partitions)
    @reports_errors
    def probes_files_intact(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Every file of the probes folder matches the sha256 recorded in its SHA256SUMS when it was written."""
        from glp.artifacts import verify_manifest

        problems = verify_manifest(_probes_dir(glp.settings, glp.source(context)))
        return dg.AssetCheckResult(passed=not problems, metadata={"problems": len(problems)},
                                   description="; ".join(problems[:3]) + " — re-materialize `probes`" if problems else None)

    @dg.asset_check(asset="probes", blocking=True, partitions_def=partitions)
    @reports_errors
    def probes_auc_in_unit_interval(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Every reported AUC (1-D and dense, CV and test) is a number in [0, 1]."""
        rep = json.loads((_probes_dir(glp.settings, glp.source(context)) / "results.json").read_text())
        values = [r[f][k] for r in rep["tasks"] for f in rep["families"] for k in ("cv_auc", "test_auc")]
        values += [r[f]["dense"][k] for r in rep["tasks"] for f in rep["families"] if "dense" in r[f]
                   for k in ("cv_auc", "test_auc") if r[f]["dense"][k] is not None]  # cv_auc None: one C, no CV
        v = np.asarray(values, dtype=float)
        bad = int((~np.isfinite(v) | (v < 0) | (v > 1)).sum())
        return dg.AssetCheckResult(passed=bad == 0, metadata={"aucs": len(values), "out_of_range": bad,
                                                              "min": float(v.min()), "max": float(v.max())})

    @dg.asset_check(asset="probes", blocking=True, partitions_def=partitions)
    @reports_errors
    def probes_every_task_reported(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """The report covers every task of the current dataset with every family: no task silently dropped."""
        from glp.probe_tasks import load_tasks, tasks_hash

        s = glp.settings
        rep = json.loads((_probes_dir(s, glp.source(context)) / "results.json").read_text())
        expected = [t.name for t in load_tasks(s.probe_tasks.path)]
        got = {r["task"]: r for r in rep["tasks"]}
        missing = [n for n in expected if n not in got or any(f not in got[n] for f in rep["families"])]
        same_data = rep["tasks_hash"] == tasks_hash(s.probe_tasks.path)
        return dg.AssetCheckResult(passed=not missing and same_data and list(rep["families"]) == list(s.probe.families),
                                   metadata={"expected": len(expected), "reported": len(got),
                                             "missing": ", ".join(missing) or "none", "same_dataset": same_data})

    return [probe_tasks_both_classes_in_each_split, probe_tasks_balanced_and_large_enough, sae_reconstructs,
            probes_files_intact, probes_auc_in_unit_interval, probes_every_task_reported]
