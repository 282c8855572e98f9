"""Probing assets: the tasks dataset, the SAE baseline and the 1-D probing report, with their checks.

corpus ─► probe_tasks ───────────────────────────────┐
activations[src], norm_stats[src] ─► sae[src] ───────┼─► probes[src]
source_lm, glp_prior[src] ───────────────────────────┘
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

CODE_VERSION = "1"  # bump when a step's code changes what it produces


def _sae_dir(s: Settings, src) -> Path:  # noqa: ANN001 (SourceConfig)
    from glp.pipeline.layout import sae_dir

    return sae_dir(pipeline.source_paths(s, src).root)


def _probes_dir(s: Settings, src) -> Path:  # noqa: ANN001
    from glp.pipeline.layout import probes_dir

    return probes_dir(pipeline.source_paths(s, src).root)


def build_probing_assets(settings: Settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """`probe_tasks` (unpartitioned), `sae` and `probes` (per source)."""

    @dg.asset(deps=[dg.AssetKey("corpus"), dg.AssetKey("labelled")], group_name=GROUP, kinds={"dvc"},
              code_version=f"{CODE_VERSION}-{config_hash(settings.probe_tasks)}")
    def probe_tasks(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """Binary probing tasks (DVC stage `probe_tasks`): validated, described, versioned by content hash."""
        from glp.data.probe_tasks import load_tasks, tasks_hash
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
              group_name=GROUP, kinds={"pytorch", "safetensors"},
              code_version=f"{CODE_VERSION}-{config_hash(settings.sae)}-{settings.train.epochs}")
    def sae(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """TopK SAE baseline trained on the source's activation store (the prior's budget of rows)."""
        from glp.report import loss_curve_inline, loss_curve_png

        s, src = glp.settings, glp.source(context)
        paths = pipeline.source_paths(s, src)
        require_upstream(paths.store("train"), "activations", "sae", context.partition_key)
        require_upstream(paths.norm_stats, "norm_stats", "sae", context.partition_key)
        with user_errors(), writing(context, _sae_dir(s, src), reads=[paths.activations_dir, paths.norm_stats]):
            from glp.pipeline.probing import build_sae

            out = build_sae(s, src, log=context.log.info)
        fvu = "fraction of variance unexplained"
        return dg.MaterializeResult(
            metadata=readable({
                "fvu_curve": inline(loss_curve_inline(out["losses"], "SAE training FVU")),
                "heldout_fvu": out["heldout_fvu"], "fvu_first_10pct": out["fvu_first"], "fvu_last_10pct": out["fvu_last"],
                "n_latents": fmt.count(out["n_latents"]), "k": out["k"], "steps": fmt.count(out["steps"]),
                "rows_seen": fmt.count(out["rows_seen"]), "dead_fraction": out["dead_fraction"],
                "train_time": fmt.duration(out["seconds"]), "rows_per_s": fmt.count(out["rows_per_s"]),
                "fvu_curve_full": png(loss_curve_png(out["losses"], title=f"TopK SAE training FVU ({fvu})",
                                                     ylabel="FVU (1 = predicts the mean)"), "SAE FVU"),
                "path": out["path"]}),
            data_version=dg.DataVersion(out["version"]),
        )

    @dg.asset(deps=[probe_tasks, sae, dg.AssetKey("glp_prior"), dg.AssetKey("source_lm"), dg.AssetKey("source_model")],
              partitions_def=partitions,
              group_name=GROUP, code_version=f"{CODE_VERSION}-{config_hash(settings.probe)}")
    def probes(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """1-D probing: mean test AUC of the best single unit per family (Table 4), per task, dashboards."""
        from glp.uses.probe import FAMILY_LABELS, mean_auc_inline, per_task_png, probing_headline, table4_markdown

        s, src = glp.settings, glp.source(context)
        paths, part = pipeline.source_paths(s, src), context.partition_key
        require_upstream(Path(s.probe_tasks.path) / "tasks.json", "probe_tasks", "probes", part)
        if src.model == "builtin":
            require_upstream(pipeline.builtin_lm_dir(s), "source_lm", "probes", part)
        if "glp" in s.probe.families:
            require_upstream(paths.prior, "glp_prior", "probes", part)
        if "sae" in s.probe.families:
            require_upstream(_sae_dir(s, src), "sae", "probes", part)
        with user_errors(), writing(context, _probes_dir(s, src), reads=[paths.activations_dir, paths.prior,
                                                                        _sae_dir(s, src), pipeline.model_dir(s, src)]):
            from glp.pipeline.probing import build_probes

            rep = build_probes(s, src, log=context.log.info)
        fams, summ = rep["families"], rep["summary"]
        md = {f"mean_auc_{f}": summ["one_d"][f]["mean"] for f in fams}
        md |= {f"dense_auc_{f}": summ["dense"][f]["mean"] for f in summ["dense"]}
        n_tasks = len(rep["tasks"])
        return dg.MaterializeResult(
            metadata=readable({
                "result": inline(probing_headline(summ, fams, n_tasks)),
                "mean_auc": inline(mean_auc_inline(summ, fams)),
                **md,
                "order_of_means": " < ".join(FAMILY_LABELS[f] for f in summ["ordering"]),
                "n_tasks": n_tasks, "n_texts": fmt.count(rep["n_texts"]),
                "table4": dg.MetadataValue.md(table4_markdown(summ, fams, n_tasks)),
                "per_task": png(per_task_png(rep["tasks"], fams), "AUC per task"),
                "dashboards": dg.MetadataValue.md((Path(rep["path"]) / "dashboards.md").read_text()),
                "time": dg.MetadataValue.json({k: fmt.duration(v) for k, v in rep["seconds"].items()}),
                "path": rep["path"],
            }),
            data_version=dg.DataVersion(pipeline.short_sha256(Path(rep["path"]) / "results.json")),
        )

    return [probe_tasks, sae, probes]


def build_probing_checks(partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset="probe_tasks", blocking=True)
    @reports_errors
    def probe_tasks_both_classes_in_each_split(context: dg.AssetCheckExecutionContext, glp: GLPSettings
                                               ) -> dg.AssetCheckResult:
        """Every task has positives and negatives in both train and test."""
        from glp.data.probe_tasks import load_tasks, split_counts

        bad = [t.name for t in load_tasks(glp.settings.probe_tasks.path) if min(split_counts(t).values()) == 0]
        return dg.AssetCheckResult(passed=not bad, metadata={"tasks_missing_a_class": ", ".join(bad) or "none"})

    @dg.asset_check(asset="probe_tasks", blocking=True)
    @reports_errors
    def probe_tasks_balanced_and_large_enough(context: dg.AssetCheckExecutionContext, glp: GLPSettings
                                              ) -> dg.AssetCheckResult:
        """Every task is balanced (equal class sizes) and has at least `probe_tasks.min_examples` examples."""
        from glp.data.probe_tasks import load_tasks, split_counts

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
        from glp.uses.sae import load_sae

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
        from glp.data.probe_tasks import load_tasks, tasks_hash

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
