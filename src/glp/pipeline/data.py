"""Data steps: the corpus check, the source LM (builtin or packaged), the activation stores (one worker, or
`store.shards` shards merged) and the normalization statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from glp.artifacts import write_atomic
from glp.config import Settings, SourceConfig
from glp.data.store import Location
from glp.pipeline.layout import (
    activations_version,
    builtin_lm_dir,
    hash_cache,
    model_dir,
    model_fingerprint,
    short_sha256,
    source_paths,
    uses_packaged,
)
from glp.progress import Log, nolog


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


def build_source_lm(settings: Settings, log: Log = nolog) -> dict[str, Any]:
    """Train (or reuse) the builtin source LM; returns its training report plus its path."""
    from glp.data.source_lm import train_source_lm

    out = builtin_lm_dir(settings)
    report = train_source_lm(settings.corpus.path, settings.source_lm, out, log=log, corpus_cfg=settings.corpus)
    return {**report, "path": str(out)}


def build_source_model(settings: Settings, log: Log = nolog) -> list[dict[str, Any]]:
    """Convert (or reuse) every packaged source model into its `save_pretrained` folder; one report each."""
    from glp.data.source_model import convert_packaged

    return [convert_packaged(name, settings.store.root, log=log) for name in uses_packaged(settings)]


def build_activations(settings: Settings, source: SourceConfig, log: Log = nolog) -> dict[str, Any]:
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
            "model_fingerprint": model_fingerprint(mdir, hash_cache(settings)),
            "corpus_hash": corpus_hash(settings.corpus.path, settings.corpus), "version": version}


def plan_activation_shards(settings: Settings, source: SourceConfig, lm: Any, version: str, log: Log = nolog) -> Any:
    """The train split's shard plan (glp.data.shards.ShardPlan), computed once per activations version and cached."""
    from filelock import FileLock

    from glp.data.activations import window_docs_of
    from glp.data.corpus import iter_documents
    from glp.data.shards import ShardPlan, plan_shards

    n = settings.store.shards
    path = source_paths(settings, source).shard_plan_path(version, n)
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


def build_activation_shard(settings: Settings, source: SourceConfig, k: int, log: Log = nolog,
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
    plan = plan_activation_shards(settings, source, lm, version, log)
    extra = shard_attrs(k, plan)
    if (done := finished_store(path, version, "train", log, expect=extra)) is not None:
        return done
    texts = (d["text"] for d in iter_documents(settings.corpus.path, "train", settings.corpus))
    res = extract_activations(lm, source.layer, texts, path, settings.store, settings.store.max_tokens,
                              {**_attrs(settings, source, model_dir(settings, source), version), "split": "train", **extra},
                              log=log, doc_range=tuple(extra["doc_range"]))
    return {"path": str(res.path), "rows": res.n_rows, "docs": res.n_docs, "tokens_per_s": res.tokens_per_s,
            "seconds": res.seconds, "doc_range": extra["doc_range"]}


def merge_activation_shards(settings: Settings, source: SourceConfig, lm: Any, log: Log = nolog) -> dict[str, Any]:
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


def finished_store(path: Location, version: str, split: str, log: Log = nolog,
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
    from itertools import islice

    from glp.data.activations import tokenize_doc
    from glp.data.corpus import iter_documents
    from glp.data.lm import load_source_lm
    from glp.data.store import ActivationStore

    store = ActivationStore(source_paths(settings, source).store(split))
    lm = load_source_lm(model_dir(settings, source), "cpu", "float32", settings.trust_remote_code)
    docs = islice(iter_documents(settings.corpus.path, split, settings.corpus), int(store.attrs["n_docs"]))
    return sum(len(tokenize_doc(lm, d["text"], settings.store.max_seq_len)) - 1 for d in docs)


MIN_DOCS_PER_SPLIT = 8
"""Documents each split's store must come from: held-out statistics (the loss, the norm-stats outlier check) from
fewer describe those few texts, not the corpus, and a train/held-out mismatch then reads as corrupt data."""


class TooLittleData(ValueError):
    """The activation stores hold too few rows or documents for a prior; the message gives the counts and the minimum."""


def too_little_data(train: Any, heldout: Any, batch_size: int) -> str | None:
    """Why the train and held-out stores are too small for a prior (rows and documents per split against the minimum:
    one training batch of rows, MIN_DOCS_PER_SPLIT documents in each split), or None when they are not."""
    have = {split: (store.n_rows, int(store.attrs.get("n_docs", 0))) for split, store in
            (("train", train), ("held-out", heldout))}
    short = [f"{split} has {docs} document{'s' * (docs != 1)}" for split, (_, docs) in have.items()
             if docs < MIN_DOCS_PER_SPLIT]
    if train.n_rows < batch_size:
        short.append(f"train has {train.n_rows:,} rows")
    if not short:
        return None
    fix = ["add documents to the corpus (GLP_CORPUS__PATH)"]
    if have["held-out"][1] < MIN_DOCS_PER_SPLIT:
        fix.append("raise GLP_CORPUS__HELDOUT_FRACTION")
    if train.n_rows < batch_size:
        fix.append("lower GLP_TRAIN__BATCH_SIZE")
    counts = ", ".join(f"{split} {rows:,} rows from {docs} document{'s' * (docs != 1)}"
                       for split, (rows, docs) in have.items())
    return (f"too little data for a prior ({counts}): it needs at least {batch_size:,} train rows (train.batch_size, "
            f"one batch) and {MIN_DOCS_PER_SPLIT} documents in each split, and {' and '.join(short)}: "
            f"{', or '.join(fix)}, then re-materialize `activations`")


def build_norm_stats(settings: Settings, source: SourceConfig) -> dict[str, Any]:
    """The train store's normalization statistics, once the two stores are known to hold enough data for a prior."""
    from glp.data.stats import compute_stats
    from glp.data.store import ActivationStore

    paths = source_paths(settings, source)
    train = ActivationStore(paths.store("train"))
    short = too_little_data(train, ActivationStore(paths.store("heldout")), settings.train.batch_size)
    if short:
        raise TooLittleData(short)
    stats = compute_stats(train)
    stats.save(paths.norm_stats)
    return {"path": str(paths.norm_stats), "n": stats.n, "d_model": len(stats.mean), "version": short_sha256(paths.norm_stats)}
