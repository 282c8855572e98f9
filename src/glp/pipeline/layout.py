"""The pipeline steps, one function per artifact, with the artifact layout in one place.

Orchestrators (the Dagster assets, the `glp` CLI, a notebook) call these; each step reads its inputs from
the layout below, writes its artifact atomically and returns a JSON-able summary (what the UI shows).

    <store.root>/source_lm/<hash>/                       builtin source LM (save_pretrained)
    <store.root>/source_model/<gguf sha256[:16]>/        packaged source LLM converted from its GGUF (save_pretrained)
    <store.root>/<model>/L<layer>/activations/train.zarr  activation store (and heldout.zarr), or with
                                                         store.activations_url: <url>/<model>/L<layer>/train.zarr
    <store.root>/<model>/L<layer>/activations/shards/    train-<k>-of-<n>.zarr shard stores (store.shards > 1, until
                                                         merged; beside the stores when they live at a URL) + plans
    <store.root>/<model>/L<layer>/norm_stats.safetensors
    <store.root>/<model>/L<layer>/prior/                  exported prior (prior.ckpt/ = DeepSpeed checkpoints)
    <store.root>/<model>/L<layer>/prior_eval.json
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from glp.artifacts import sha256_file, write_atomic
from glp.config import BUILTIN_MODEL, Settings, SourceConfig, config_hash

if TYPE_CHECKING:
    from glp.data.store import Location

Log = Callable[[str], None]


def _nolog(_: str) -> None:
    pass


def short_sha256(path: Path, length: int = 16) -> str:
    """Short content hash of a file, used as a Dagster data version."""
    return sha256_file(path)[:length]


def _hash(*parts: object, length: int = 16) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:length]


@dataclass(frozen=True)
class SourcePaths:
    root: Path  # <store.root>/<model>/L<layer>
    activations_url: str | None = None  # <store.activations_url>/<model>/L<layer>, when the stores live elsewhere

    @property
    def activations(self) -> Path:
        """The local activations folder: the stores (unless `activations_url`) and their write lock."""
        return self.root / "activations"

    def _located(self, name: str) -> Location:
        """`name` under the activations: a local Path, or a UPath at `store.activations_url`."""
        from glp.data.store import as_location

        return as_location(f"{self.activations_url}/{name}") if self.activations_url else self.activations / name

    def store(self, split: str) -> Location:
        """The activation store of a split: a local Path, or a UPath at `store.activations_url`."""
        return self._located(f"{split}.zarr")

    def shard_store(self, split: str, k: int, n: int) -> Location:
        """Shard k of n of a split's store (glp.data.shards), beside the stores."""
        return self._located(f"shards/{split}-{k}-of-{n}.zarr")

    def shard_plan(self, version: str, n: int) -> Path:
        """The cached shard plan of an activations version (local: it is small)."""
        return self.activations / "shards" / f"plan-{version}-{n}.json"

    @property
    def norm_stats(self) -> Path:
        return self.root / "norm_stats.safetensors"

    @property
    def prior(self) -> Path:
        return self.root / "prior"

    @property
    def checkpoints(self) -> Path:
        return self.root / "prior.ckpt"

    @property
    def prior_eval(self) -> Path:
        return self.root / "prior_eval.json"


def source_paths(settings: Settings, source: SourceConfig) -> SourcePaths:
    rel = f"{source.model_name}/L{source.layer}"
    url = settings.store.activations_url
    return SourcePaths(settings.store.root / rel, f"{url.rstrip('/')}/{rel}" if url else None)


# ---------------------------------------------------------------- corpus and source LM


def check_corpus(settings: Settings) -> dict[str, Any]:
    """Validate the prepared corpus (both splits parse, none empty) and describe it."""
    from glp.data.corpus import corpus_hash, load_documents

    path = settings.corpus.path
    counts = {split: load_documents(path, split, settings.corpus) for split in ("train", "heldout")}
    return {
        "path": str(path),
        "corpus_hash": corpus_hash(path, settings.corpus),
        "train_docs": len(counts["train"]),
        "heldout_docs": len(counts["heldout"]),
        "train_chars": sum(len(d["text"]) for d in counts["train"]),
    }


def builtin_lm_dir(settings: Settings) -> Path:
    from glp.data.corpus import corpus_hash
    from glp.data.source_lm import source_lm_dir

    return source_lm_dir(settings.store.root, settings.source_lm, corpus_hash(settings.corpus.path, settings.corpus))


def uses_builtin(settings: Settings) -> bool:
    return any(s.model == BUILTIN_MODEL for s in settings.sources)


def build_source_lm(settings: Settings, log: Log = _nolog) -> dict[str, Any]:
    """Train (or reuse) the builtin source LM; returns its training report plus its path."""
    from glp.data.source_lm import train_source_lm

    out = builtin_lm_dir(settings)
    report = train_source_lm(settings.corpus.path, settings.source_lm, out, log=log, corpus_cfg=settings.corpus)
    return {**report, "path": str(out)}


def uses_packaged(settings: Settings) -> list[str]:
    """The packaged source models (glp.data.source_model.PACKAGED) the configured sources name."""
    from glp.data.source_model import is_packaged

    return sorted({s.model for s in settings.sources if is_packaged(s.model)})


def build_source_model(settings: Settings, log: Log = _nolog) -> list[dict[str, Any]]:
    """Convert (or reuse) every packaged source model into its `save_pretrained` folder; one report each."""
    from glp.data.source_model import convert_packaged

    return [convert_packaged(name, settings.store.root, log=log) for name in uses_packaged(settings)]


def model_dir(settings: Settings, source: SourceConfig) -> Path:
    """The local folder `from_pretrained` loads for a source: the builtin LM's, a packaged model's conversion, or
    the user's own folder."""
    from glp.data.source_model import converted_dir, is_packaged

    if source.model == BUILTIN_MODEL:
        return builtin_lm_dir(settings)
    if is_packaged(source.model):
        return converted_dir(settings.store.root, source.model)
    return Path(source.model)


def model_fingerprint(path: Path) -> str:
    """Identity of a saved model: its config.json content plus the names and sizes of its weight files."""
    path = Path(path)
    files = sorted((p.name, p.stat().st_size) for p in path.glob("*.safetensors")) + sorted(
        (p.name, p.stat().st_size) for p in path.glob("*.bin")
    )
    return _hash(short_sha256(path / "config.json") if (path / "config.json").is_file() else "", files)


# ---------------------------------------------------------------- activations


def activations_version(settings: Settings, source: SourceConfig) -> str:
    """What the stored activations depend on: model identity, layer, corpus, extraction config."""
    from glp.data.corpus import corpus_hash

    return _hash(model_fingerprint(model_dir(settings, source)), source.layer, corpus_hash(settings.corpus.path, settings.corpus),
                 config_hash(settings.store))


def build_activations(settings: Settings, source: SourceConfig, log: Log = _nolog) -> dict[str, Any]:
    """Extract the train and held-out activation stores of one source (the train split in `store.shards` shards,
    merged, when more than one: glp.data.shards)."""
    from glp.data.activations import extract_activations
    from glp.data.corpus import iter_documents
    from glp.data.lm import load_source_lm

    paths = source_paths(settings, source)
    mdir = model_dir(settings, source)
    lm = load_source_lm(mdir, settings.device, settings.store.dtype, settings.trust_remote_code)
    lm.block(source.layer)  # wrong layer: fail before reading the corpus
    version = activations_version(settings, source)
    attrs = _attrs(settings, source, mdir, version)
    out: dict[str, Any] = {"version": version, "model_path": str(mdir), "layer": source.layer, "d_model": lm.d_model,
                           "n_layers": lm.n_layers}
    for split, cap in (("train", settings.store.max_tokens), ("heldout", settings.store.heldout_max_tokens)):
        if (done := finished_store(paths.store(split), version, split, log)) is not None:
            out[split] = done  # e.g. the run was killed during held-out extraction: train is not redone
            continue
        if split == "train" and settings.store.shards > 1:
            out[split] = merge_activation_shards(settings, source, lm, log)
            continue
        texts = (d["text"] for d in iter_documents(settings.corpus.path, split, settings.corpus))  # streamed: bounded memory
        res = extract_activations(lm, source.layer, texts, paths.store(split), settings.store, cap,
                                  {**attrs, "split": split}, log=log)
        out[split] = {"path": str(res.path), "rows": res.n_rows, "docs": res.n_docs, "tokens_per_s": res.tokens_per_s,
                      "seconds": res.seconds}
    return out


def _attrs(settings: Settings, source: SourceConfig, mdir: Path, version: str) -> dict[str, Any]:
    """The attrs every store of a source carries; `version` = activations_version (computed once by the caller: it
    hashes the corpus and fingerprints the model)."""
    from glp.data.corpus import corpus_hash

    return {"model": source.model_name, "model_path": str(mdir),
            "corpus_hash": corpus_hash(settings.corpus.path, settings.corpus), "version": version}


def shard_plan(settings: Settings, source: SourceConfig, lm: Any, version: str, log: Log = _nolog) -> Any:
    """The train split's shard plan (glp.data.shards.ShardPlan), computed once per activations version and cached."""
    from glp.data.activations import window_docs_of
    from glp.data.corpus import iter_documents
    from glp.data.shards import ShardPlan, plan_shards

    from filelock import FileLock

    n = settings.store.shards
    path = source_paths(settings, source).shard_plan(version, n)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(path.with_name(path.name + ".lock")):  # shards starting together: one plans, the others read it
        if path.is_file():
            return ShardPlan.from_json(path.read_text())
        texts = (d["text"] for d in iter_documents(settings.corpus.path, "train", settings.corpus))
        plan = plan_shards(lm, texts, settings.store.max_seq_len, window_docs_of(settings.store),
                           settings.store.max_tokens, n)
        write_atomic(path, plan.to_json())
    log(f"shard plan: {plan.n_rows:,} train rows from {plan.n_docs:,} documents in {n} shards of "
        f"{', '.join(f'{r:,}' for _, _, r in plan.shards)} rows")
    return plan


def build_activation_shard(settings: Settings, source: SourceConfig, k: int, log: Log = _nolog,
                           lm: Any = None) -> dict[str, Any]:
    """Extract shard k of the train split (`store.shards` shards; glp.data.shards), or keep it when already published."""
    from glp.data.activations import extract_activations
    from glp.data.corpus import iter_documents
    from glp.data.lm import load_source_lm
    from glp.data.shards import shard_attrs

    n = settings.store.shards
    if not 0 <= k < n:
        raise ValueError(f"shard {k} out of range for store.shards={n}: choose 0..{n - 1}")
    paths, version = source_paths(settings, source), activations_version(settings, source)
    path = paths.shard_store("train", k, n)
    if lm is None:
        lm = load_source_lm(model_dir(settings, source), settings.device, settings.store.dtype, settings.trust_remote_code)
        lm.block(source.layer)
    plan = shard_plan(settings, source, lm, version, log)
    extra = shard_attrs(k, plan)
    if (done := finished_store(path, version, "train", log, expect=extra)) is not None:
        return done
    texts = (d["text"] for d in iter_documents(settings.corpus.path, "train", settings.corpus))
    res = extract_activations(lm, source.layer, texts, path, settings.store, settings.store.max_tokens,
                              {**_attrs(settings, source, model_dir(settings, source), version), "split": "train", **extra},
                              log=log, doc_range=tuple(extra["doc_range"]))
    return {"path": str(res.path), "rows": res.n_rows, "docs": res.n_docs, "tokens_per_s": res.tokens_per_s,
            "seconds": res.seconds, "doc_range": extra["doc_range"]}


def merge_activation_shards(settings: Settings, source: SourceConfig, lm: Any, log: Log = _nolog) -> dict[str, Any]:
    """Extract the missing train shards (each kept when already published), merge them into the train store, and
    delete them."""
    import time

    from glp.data.shards import merge_shards
    from glp.data.store import ActivationStore, remove_store

    n, paths = settings.store.shards, source_paths(settings, source)
    for k in range(n):
        build_activation_shard(settings, source, k, log, lm=lm)
    t0 = time.perf_counter()
    shards = [paths.shard_store("train", k, n) for k in range(n)]
    store = ActivationStore(merge_shards(shards, paths.store("train"), log))
    for shard in shards:
        remove_store(shard)
    return {"path": str(store.path), "rows": store.n_rows, "docs": int(store.attrs["n_docs"]),
            "tokens_per_s": float(store.attrs["tokens_per_s"]), "seconds": time.perf_counter() - t0, "shards": n}


def finished_store(path: Location, version: str, split: str, log: Log = _nolog,
                   expect: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The summary of a published store of this exact `version` (and `expect`ed attrs, e.g. a shard's) whose every
    chunk verifies, or None (extract it).

    Extraction is deterministic, so such a store is what extracting again would write; a store of another
    version, an unverifiable or a corrupt one is extracted again (the new store replaces it atomically)."""
    from glp.data.store import ActivationStore, StoreError

    if not path.exists():
        return None
    try:
        store = ActivationStore(path)
        if store.attrs.get("version") != version or store.attrs.get("split") != split:
            return None
        if any(store.attrs.get(k) != v for k, v in (expect or {}).items()):
            return None
        problems = store.verify()
    except StoreError:
        return None
    if problems:
        log(f"{path.name}: {len(problems)} chunk problem(s) ({problems[0]['problem']}); extracting it again")
        return None
    log(f"{path.name}: already extracted for this version ({store.n_rows} rows, every chunk verified); kept")
    return {"path": str(path), "rows": store.n_rows, "docs": int(store.attrs["n_docs"]),
            "tokens_per_s": float(store.attrs.get("tokens_per_s", 0.0)), "seconds": 0.0}


def count_tokens(settings: Settings, source: SourceConfig, split: str) -> int:
    """Non-BOS tokens of the documents a store says it covers, re-tokenized independently of extraction."""
    from glp.data.activations import tokenize_doc
    from itertools import islice

    from glp.data.corpus import iter_documents
    from glp.data.lm import load_source_lm
    from glp.data.store import ActivationStore

    store = ActivationStore(source_paths(settings, source).store(split))
    lm = load_source_lm(model_dir(settings, source), "cpu", "float32", settings.trust_remote_code)
    docs = islice(iter_documents(settings.corpus.path, split, settings.corpus), int(store.attrs["n_docs"]))
    return sum(len(tokenize_doc(lm, d["text"], settings.store.max_seq_len)) - 1 for d in docs)


# ---------------------------------------------------------------- normalization stats


def build_norm_stats(settings: Settings, source: SourceConfig) -> dict[str, Any]:
    from glp.data.stats import compute_stats
    from glp.data.store import ActivationStore

    paths = source_paths(settings, source)
    stats = compute_stats(ActivationStore(paths.store("train")))
    stats.save(paths.norm_stats)
    return {"path": str(paths.norm_stats), "n": stats.n, "d_model": len(stats.mean), "version": short_sha256(paths.norm_stats)}


# ---------------------------------------------------------------- prior


def prior_meta(settings: Settings, source: SourceConfig) -> dict[str, Any]:
    return {"source": source.key, "denoiser_config": config_hash(settings.denoiser), "train_config": config_hash(settings.train)}


def build_prior(settings: Settings, source: SourceConfig, log: Log = _nolog) -> dict[str, Any]:
    """Train the prior through DeepSpeed (resuming from its checkpoints) and export it.

    With `train.world_size` W > 1 this runs in each of W processes started by `torchrun` (glp_dagster.pipes_train):
    all of them train, rank 0 exports and returns the summary; the other ranks return only their steps and losses."""
    import os

    from glp.data.lm import resolve_device
    from glp.prior import save_prior
    from glp.data.stats import NormStats
    from glp.data.store import ActivationStore
    from glp.prior.train import train_prior

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world != settings.train.world_size:
        raise ValueError(f"train.world_size is {settings.train.world_size} but this process is one of {world}: "
                         f"materialize `glp_prior` (it launches torchrun --nproc_per_node {settings.train.world_size}), "
                         "or launch `python -m torch.distributed.run --nproc_per_node W -m glp_dagster.pipes_train` "
                         "yourself")
    paths = source_paths(settings, source)
    store = ActivationStore(paths.store("train"))
    stats = NormStats.load(paths.norm_stats)
    if len(stats.mean) != store.d_model:
        raise ValueError(f"norm_stats width {len(stats.mean)} != activation store width {store.d_model}: "
                         "re-materialize `norm_stats`")
    # Checkpoints of another config or data must not be resumed: key the folder by what the run depends on.
    run_key = _hash(prior_meta(settings, source), store.attrs.get("version"), stats.n)
    ckpt = paths.checkpoints / run_key
    if rank == 0 and paths.checkpoints.exists():
        for other in paths.checkpoints.iterdir():
            if other.name != run_key:
                shutil.rmtree(other, ignore_errors=True)
    model, res = train_prior(store, stats.normalizer(), settings.denoiser, settings.train, ckpt,
                             resolve_device(settings.device), log=log)
    if rank != 0:  # rank 0 exports
        return {"steps": res.steps, "losses": res.losses, "rank": rank}
    meta = {**prior_meta(settings, source), "activations_version": store.attrs.get("version"), "steps": res.steps,
            "final_loss": float(sum(res.losses[-50:]) / len(res.losses[-50:])), "precision": res.precision,
            "losses": res.losses}
    save_prior(paths.prior, model, stats.normalizer(), meta, snapshots=res.snapshots)
    shutil.rmtree(ckpt, ignore_errors=True)  # exported: the resume point is no longer needed
    return {"path": str(paths.prior), "version": short_sha256(paths.prior / "model.safetensors"), "steps": res.steps,
            "losses": res.losses, "n_params": res.n_params, "seconds": res.seconds, "rows_per_s": res.rows_per_s,
            "achieved_flops": res.flops / max(res.seconds, 1e-9), "precision": res.precision,
            "resumed_from": res.resumed_from, "d_model": store.d_model, "world_size": world}


# ---------------------------------------------------------------- evaluation

SELECT_ROWS = 8192
"""Train rows on which the PCA baseline's k is matched to the SAE's reconstruction error."""


def evaluate(settings: Settings, source: SourceConfig, log: Log = _nolog) -> dict[str, Any]:
    """Held-out loss vs the affine baseline; FD and C2ST of GLP samples, Gaussians and SAE / PCA reconstructions
    against held-out rows; saved as JSON.

    The PCA reconstruction keeps the top-k principal axes of the train covariance, k the smallest whose
    reconstruction error on train rows is at most the SAE's there (an equal-error linear baseline, chosen on
    rows that are never scored).
    """
    import numpy as np
    import torch

    from glp.uses.delta_lm import pca_mse_by_k
    from glp.prior.evaluate import evaluate_prior
    from glp.data.lm import resolve_device
    from glp.prior import load_prior
    from glp.uses.sae import load_sae, sae_dir
    from glp.data.stats import NormStats
    from glp.data.store import ActivationStore

    paths = source_paths(settings, source)
    device = resolve_device(settings.device)
    prior = load_prior(paths.prior, device)
    heldout = ActivationStore(paths.store("heldout"))
    if heldout.d_model != prior.d_model:
        raise ValueError(f"prior input dim {prior.d_model} != held-out store dim {heldout.d_model}: "
                         "re-materialize `glp_prior` for this source")
    if not (sae_dir(paths.root) / "config.json").is_file():
        raise FileNotFoundError(f"no SAE at {sae_dir(paths.root)}: prior_eval compares GLP samples with SAE "
                                "reconstructions; materialize `sae` for this source first")
    sae, _, sae_cfg = load_sae(sae_dir(paths.root), "cpu")
    if sae.d_model != prior.d_model:
        raise ValueError(f"SAE width {sae.d_model} != prior width {prior.d_model}: re-materialize `sae` for this source")
    stats = NormStats.load(paths.norm_stats)
    norm = prior.normalizer.to("cpu")
    with torch.no_grad():
        x = norm.normalize(torch.from_numpy(heldout.rows()))
        train = ActivationStore(paths.store("train"))
        z_train = norm.normalize(torch.from_numpy(train.rows(0, SELECT_ROWS)))
        sae_mse = float(((sae(z_train)[0] - z_train) ** 2).mean())
    lam, vecs = np.linalg.eigh(stats.cov_normalized.astype(np.float64))
    axes = torch.from_numpy(vecs[:, ::-1].copy()).float()  # columns by decreasing variance
    mse_k = pca_mse_by_k(z_train, torch.zeros(prior.d_model), axes)
    k = int(np.argmax(mse_k <= sae_mse)) if (mse_k <= sae_mse).any() else prior.d_model
    top = axes[:, :k]
    recon = {
        "sae": (f"SAE reconstructions (TopK k={sae_cfg['k']}, {sae_cfg['n_latents']} latents)",
                lambda z: sae(z.float())[0]),
        "pca": (f"PCA-{k} reconstructions (the SAE's train error)", lambda z: (z.float() @ top) @ top.T),
    }
    mean, std = norm.mean.double().numpy(), norm.std.double().numpy()
    report = evaluate_prior(prior.denoiser, x, stats.cov_normalized, settings.eval, device, recon,
                            denormalize=lambda z: z * std + mean, log=log)
    report["pca_k"], report["sae_train_mse"], report["pca_train_mse"] = k, sae_mse, float(mse_k[k])
    write_atomic(paths.prior_eval, json.dumps(report, indent=2))
    return report
