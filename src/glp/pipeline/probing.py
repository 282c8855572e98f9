"""Probing steps: the TopK SAE baseline (`sae`) and the 1-D meta-neuron probing report (`probes`)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from glp.config import ProbeConfig, SAEConfig
from glp.pipeline.layout import SourceArtifacts, probes_dir, sae_dir
from glp.progress import Log
from glp.uses.probe import (
    PAPER_MEAN_AUC,
    extract_features,
    meta_neuron_dashboards,
    per_task_png,
    run_probing,
    summarize,
    table4_markdown,
)
from glp.uses.sae import WEIGHTS, save_sae, train_sae


def build_sae(settings: Any, source: Any, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train the SAE of one source on its train store (the prior's budget of rows) and export it."""
    from glp.config import config_hash
    from glp.data.lm import resolve_device
    from glp.pipeline import short_sha256, source_paths

    paths = source_paths(settings, source)
    art = SourceArtifacts(settings, source, "sae")
    store, stats = art.store("train"), art.norm_stats()
    heldout = art.store("heldout") if paths.store("heldout").exists() else None
    cfg: SAEConfig = settings.sae
    epochs = cfg.epochs or settings.train.epochs
    sae, res = train_sae(store, stats.normalizer(), cfg, epochs, resolve_device(settings.device), heldout, log)
    meta = {"source": source.key, "sae_config": config_hash(cfg), "epochs": epochs,
            "activations_version": store.attrs.get("version"), "norm_stats_version": art.norm_stats_version(),
            "steps": res.steps, "rows_seen": res.rows_seen,
            "fvu_last": res.fvu_last, "heldout_fvu": res.heldout_fvu, "dead_fraction": res.dead_fraction,
            "seconds": res.seconds, "losses": res.losses}
    out = save_sae(sae_dir(paths.root), sae, stats.normalizer(), meta)
    return {**meta, "path": str(out), "version": short_sha256(out / WEIGHTS), "n_latents": sae.n_latents,
            "k": sae.k, "d_model": sae.d_model, "rows_per_s": res.rows_seen / max(res.seconds, 1e-9),
            "fvu_first": float(np.mean(res.losses[: max(1, len(res.losses) // 10)]))}


def build_probes(settings: Any, source: Any, log: Log | None = None) -> dict[str, Any]:
    """Probe every task with every family for one source; write `probes/` (results.json, plot, dashboards)."""
    from glp.artifacts import publish_dir, staging_dir, write_manifest
    from glp.data.lm import resolve_device
    from glp.data.probe_tasks import load_tasks, tasks_hash
    from glp.data.store import ActivationStore
    from glp.pipeline import source_paths

    cfg: ProbeConfig = settings.probe
    paths = source_paths(settings, source)
    t0 = time.perf_counter()
    tasks = load_tasks(settings.probe_tasks.path)
    device = resolve_device(settings.device)
    art = SourceArtifacts(settings, source, "probes")
    lm = art.lm(settings.store.dtype)
    prior = art.prior(device) if "glp" in cfg.families else None
    sae, sae_norm, _ = art.sae(device) if "sae" in cfg.families else (None, None, None)
    texts = list(dict.fromkeys(t for task in tasks for t in (*task.train_text, *task.test_text)))
    index = {t: i for i, t in enumerate(texts)}
    t1 = time.perf_counter()
    feats = extract_features(lm, source.layer, texts, cfg.families, cfg, prior, sae, sae_norm, log)
    t2 = time.perf_counter()
    if log:
        log(f"features of {len(texts)} texts in {t2 - t1:.1f}s: " + ", ".join(f"{f} {x.shape[1]}" for f, x in feats.items()))
    rows = run_probing(tasks, feats, index, cfg, log)
    t3 = time.perf_counter()
    summary = summarize(rows, cfg.families, cfg)
    dashboards = ""
    if prior is not None:
        units = {r["task"]: (r["glp"]["unit"], r["glp"]["sign"]) for r in rows}
        dashboards = meta_neuron_dashboards(prior, ActivationStore(paths.store("heldout")), lm.tokenizer, units, cfg)
    t4 = time.perf_counter()
    report = {"format": "glp-probes/1", "source": source.key, "tasks_hash": tasks_hash(settings.probe_tasks.path),
              "families": list(cfg.families), "n_units": {f: int(x.shape[1]) for f, x in feats.items()},
              "n_texts": len(texts), "tasks": rows, "summary": summary, "paper_mean_auc": PAPER_MEAN_AUC,
              "seconds": {"load": t1 - t0, "features": t2 - t1, "probes": t3 - t2, "dashboards": t4 - t3}}
    out = probes_dir(paths.root)
    with staging_dir(out) as tmp:  # removed if anything below fails
        (tmp / "results.json").write_text(json.dumps(report, indent=1, sort_keys=True))
        (tmp / "table.md").write_text(table4_markdown(summary, cfg.families, len(rows)) + "\n")
        (tmp / "dashboards.md").write_text(dashboards + "\n")
        (tmp / "per_task.png").write_bytes(per_task_png(rows, cfg.families))
        write_manifest(tmp)
        publish_dir(tmp, out)
    return {**report, "path": str(out)}
