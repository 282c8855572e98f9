"""Scaling step: the sweep of priors over depth x width x activations, their held-out losses, the fit
L(C) = E + A*C^-alpha, and downstream metrics vs loss (`scaling`)."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glp.artifacts import write_atomic
from glp.config import ScalingConfig, config_hash
from glp.pipeline.layout import scaling_dir
from glp.progress import Log, nolog
from glp.uses.scaling import (
    METRICS,
    PAPER_FIT,
    ScalingError,
    checkpoints_of,
    downstream_correlations,
    downstream_png,
    fit_power_law,
    point_configs,
    point_key,
    point_losses,
    scaling_key,
    scaling_png,
    spearman_loss_vs_c,
    train_point,
)


def steering_prompts(settings: Any) -> list[str]:
    """The downstream steering prompts: the first `scaling.n_prompts` of `steer.prompts`, else of the corpus's
    (glp.uses.steer.default_prompts)."""
    from glp.uses.direction import default_prompts

    n, sc = settings.scaling.n_prompts, settings.steer
    return list(sc.prompts)[:n] if sc.prompts else default_prompts(settings.corpus.path, n, settings.corpus)


def downstream_version(settings: Any, source: Any) -> str:
    """Hash of everything a prior's downstream scores depend on besides the prior (cache key of its scores)."""
    from glp import pipeline
    from glp.data.corpus import labelled_hash
    from glp.data.probe_tasks import tasks_hash

    keep = {"probe_tasks", "n_probe_tasks", "steer_r", "n_prompts", "max_new_tokens", "delta_lm_tokens"}
    return scaling_key("downstream/1", settings.scaling.model_dump(mode="json", include=keep), config_hash(settings.probe),
                 config_hash(settings.steer), config_hash(settings.delta_lm), tasks_hash(settings.probe_tasks.path),
                 labelled_hash(settings.steer.labelled), steering_prompts(settings),
                 pipeline.model_fingerprint(pipeline.model_dir(settings, source), pipeline.hash_cache(settings)), source.layer,
                 settings.store.max_seq_len, str(pipeline.source_paths(settings, source).store("heldout")))


class Downstream:
    """What every prior's downstream scores share, computed once: the source LM, the probing subset's last-token
    activations, the steering direction, prompts, raw steered continuations (their NLL and concept) and the ΔLM
    documents with their clean CE. `scores(prior)` measures one prior against them, per unit (task, continuation,
    token), so correlations can be bootstrapped over units as well as over priors."""

    def __init__(self, settings: Any, source: Any, log: Log = nolog) -> None:
        import torch

        from glp import pipeline
        from glp.data.corpus import load_documents
        from glp.data.lm import load_source_lm
        from glp.data.probe_tasks import load_tasks
        from glp.data.store import ActivationStore
        from glp.uses.delta_lm import batch_docs, heldout_docs, token_ce, token_doc_ids
        from glp.uses.direction import mean_activation_norm, movie_snippets, sentiment_direction
        from glp.uses.generate import encode, generate, prefill, steer_edit
        from glp.uses.judges import continuation_nll_sets, fit_sentiment_judge
        from glp.uses.probe import last_token_features

        t0 = time.perf_counter()
        cfg: ScalingConfig = settings.scaling
        self.cfg, self.probe_cfg, self.steer_cfg, self.dl_cfg = cfg, settings.probe, settings.steer, settings.delta_lm
        self.layer = source.layer
        paths = pipeline.source_paths(settings, source)
        lm = self.lm = load_source_lm(pipeline.model_dir(settings, source), settings.device, "float32",
                                      settings.trust_remote_code)
        # probing: a fixed subset of tasks, their texts' last-token activations
        tasks = load_tasks(settings.probe_tasks.path)
        names = [t.name for t in tasks]
        if cfg.probe_tasks is not None:
            unknown = [n for n in cfg.probe_tasks if n not in names]
            if unknown:
                raise ScalingError(f"scaling.probe_tasks names unknown tasks {unknown}; the tasks are {names}")
            tasks = [t for t in tasks if t.name in cfg.probe_tasks]
        else:
            tasks = tasks[: cfg.n_probe_tasks]
        self.tasks = tasks
        texts = list(dict.fromkeys(t for task in tasks for t in (*task.train_text, *task.test_text)))
        self.text_index = {t: i for i, t in enumerate(texts)}
        self.resid, _ = last_token_features(lm, self.layer, texts, self.probe_cfg.max_seq_len,
                                            self.probe_cfg.batch_size)
        # steering at one r: the raw steered continuations every prior's SDEdit ones are paired with
        sc = self.steer_cfg
        prompts = steering_prompts(settings)
        reps = 1 if sc.decoding == "greedy" else sc.samples_per_prompt
        self.prompts = [p for p in prompts for _ in range(reps)]
        self.groups = np.repeat(np.arange(len(prompts)), reps)
        self.prompt_ids = [encode(lm, p) for p in self.prompts]
        self.gen_kw = dict(max_new_tokens=cfg.max_new_tokens, decoding=sc.decoding, temperature=sc.temperature,
                           seed=sc.seed)
        snippets = movie_snippets(sc.labelled, sc.n_direction_texts, sc.n_probe_texts, sc.seed)
        self.w = sentiment_direction(lm, self.layer, snippets, sc.direction_max_tokens)
        self.alpha = cfg.steer_r * mean_activation_norm(ActivationStore(paths.store("heldout")).rows())
        self.judge = fit_sentiment_judge(sc.labelled, sc.seed, sc.judge_test_fraction, sc.n_bootstrap)
        self.prefix = prefill(lm, self.prompt_ids)
        raw = generate(lm, self.prompt_ids, layer=self.layer, edit=steer_edit(self.w, self.alpha), prefix=self.prefix,
                       **self.gen_kw)
        self.raw_nll = continuation_nll_sets(lm, self.prompt_ids, [raw])[0]
        self.raw_concept = self.judge.p_positive([lm.tokenizer.decode(c, skip_special_tokens=True) for c in raw])
        # ΔLM: the first held-out documents up to delta_lm_tokens tokens
        docs = [d["text"] for d in load_documents(settings.corpus.path, "heldout", settings.corpus)]
        scored, _ = heldout_docs(lm, docs, settings.store.max_seq_len, cfg.delta_lm_tokens)
        self.batches = batch_docs(lm, scored)
        self.doc_ids = token_doc_ids(self.batches)
        self.clean_ce = token_ce(lm, self.layer, self.batches, None)
        self._torch = torch
        self.version = downstream_version(settings, source)
        self.seconds = time.perf_counter() - t0
        log(f"downstream context: {len(tasks)} tasks ({len(texts)} texts), {len(self.prompts)} continuations at "
            f"r={cfg.steer_r:g}, {len(self.clean_ce)} ΔLM tokens ({self.seconds:.0f} s)")

    def scores(self, prior: Any) -> dict[str, Any]:
        """Per-unit scores of one prior: probe test AUC per task; SDEdit concept and NLL − raw NLL per continuation
        (same prompts, seeds and r as the raw rows); CE increase per ΔLM token."""
        from glp.prior.manifold import sdedit
        from glp.uses.delta_lm import token_ce
        from glp.uses.generate import generate, steer_edit
        from glp.uses.judges import continuation_nll_sets
        from glp.uses.probe import glp_meta_neurons, probe_1d

        torch, lm, sc, pc = self._torch, self.lm, self.steer_cfg, self.probe_cfg
        t0 = time.perf_counter()
        feats = glp_meta_neurons(prior, self.resid, pc.t, pc.seed)
        aucs = []
        for task in self.tasks:
            tr = np.array([self.text_index[t] for t in task.train_text])
            te = np.array([self.text_index[t] for t in task.test_text])
            aucs.append(probe_1d(feats[tr], task.train_y, feats[te], task.test_y, pc).test_auc)
        g = torch.Generator(device=lm.device).manual_seed(sc.seed + 1)
        edit = steer_edit(self.w, self.alpha, prior, sc.t_start, sc.steps, sc.solver, g)
        cont = generate(lm, self.prompt_ids, layer=self.layer, edit=edit, prefix=self.prefix, **self.gen_kw)
        nll = continuation_nll_sets(lm, self.prompt_ids, [cont])[0]
        concept = self.judge.p_positive([lm.tokenizer.decode(c, skip_special_tokens=True) for c in cont])
        gd = torch.Generator(device=lm.device)
        gd.manual_seed(self.dl_cfg.seed)
        delta = token_ce(lm, self.layer, self.batches,
                         lambda a: sdedit(prior, a, self.dl_cfg.t_start, self.dl_cfg.steps, "euler", gd).to(a.device)
                         ) - self.clean_ce
        return {"probe_auc": [float(a) for a in aucs], "steer_concept": concept.tolist(),
                "steer_nll_cost": (nll - self.raw_nll).tolist(), "delta_lm": delta.tolist(),
                "seconds": time.perf_counter() - t0}

    def units(self) -> dict[str, np.ndarray]:
        """The resampling unit of each metric's values: task, prompt (a prompt's continuations together), document."""
        return {"probe_auc": np.arange(len(self.tasks)), "steer_concept": self.groups, "steer_nll_cost": self.groups,
                "delta_lm": self.doc_ids}


def build_scaling(settings: Any, source: Any, log: Log = nolog) -> dict[str, Any]:
    """Train (or reuse) every sweep prior, score every point's held-out loss, fit L(C), measure the downstream
    points, and write the report to `<source root>/scaling/` (JSON and two PNGs, each atomically)."""
    import torch

    from glp import pipeline
    from glp.data.lm import resolve_device
    from glp.data.stats import NormStats
    from glp.data.store import ActivationStore
    from glp.prior.evaluate import AffineVelocity, gaussian_baseline_loss, heldout_loss, heldout_ts

    t0 = time.perf_counter()
    cfg: ScalingConfig = settings.scaling
    paths = pipeline.source_paths(settings, source)
    root = scaling_dir(paths.root)
    store, held = ActivationStore(paths.store("train")), ActivationStore(paths.store("heldout"))
    stats = NormStats.load(paths.norm_stats)
    if len(stats.mean) != store.d_model:
        raise ScalingError(f"norm_stats width {len(stats.mean)} != activation store width {store.d_model}: "
                           "re-materialize `norm_stats`")
    normalizer = stats.normalizer()
    device = resolve_device(settings.device)
    data_version = scaling_key(store.attrs.get("version"), pipeline.short_sha256(paths.norm_stats))
    n_rows = min(cfg.heldout_rows, held.n_rows)
    with torch.no_grad():
        z = normalizer.normalize(torch.from_numpy(held.rows(0, n_rows)))
    eval_version = scaling_key("eval/1", held.attrs.get("version"), n_rows, cfg.n_t, cfg.seed, pipeline.short_sha256(paths.norm_stats))
    gauss = heldout_loss(AffineVelocity(stats.cov_normalized), z, cfg.n_t, cfg.seed)
    gaussian = {"loss": gauss["mean"], "loss_by_t": gauss["loss"],
                "exact_train_cov": float(gaussian_baseline_loss(stats.cov_normalized, heldout_ts(cfg.n_t)).mean())}

    priors, trained = [], []
    for i, point in enumerate(cfg.points):
        dcfg, tcfg = point_configs(point, cfg, settings.denoiser, settings.train)
        key = point_key(data_version, dcfg, tcfg)
        out = root / "points" / key
        info = train_point(store, normalizer, dcfg, tcfg, out, device, log)
        width = round(point.width_mult * store.d_model)
        label = f"{point.n_blocks}x{width}"
        log(f"point {i + 1}/{len(cfg.points)} {label} ({info['n_params']:,} params, {point.steps} steps): "
            + (f"trained in {info['seconds']:.0f} s" if info["trained"] else "cached"))
        if info["trained"]:
            trained.append(key)
        pts = point_losses(out, z, cfg.n_t, cfg.seed, root / "evals" / f"{key}-{eval_version}.json")
        priors.append({"key": key, "label": label, "n_blocks": point.n_blocks, "width_mult": point.width_mult,
                       "width": width, "hidden": round(cfg.hidden_ratio * point.width_mult * store.d_model),
                       "steps": point.steps, "n_params": info["n_params"], "train_seconds": info["seconds"],
                       "points": [{**p, "label": f"{label}@{p['step']}", "key": key} for p in pts]})
    points = sorted((p for pr in priors for p in pr["points"]), key=lambda p: p["C"])
    t_sweep = time.perf_counter()
    fit = fit_power_law([p["C"] for p in points], [p["loss"] for p in points], cfg.n_bootstrap, cfg.seed)
    report: dict[str, Any] = {
        "format": "glp-scaling/1", "source": source.key, "config": cfg.model_dump(mode="json"),
        "heldout_rows": n_rows, "gaussian": gaussian, "priors": priors, "points": points, "fit": fit,
        "spearman_loss_vs_c": spearman_loss_vs_c(points), "trained_now": trained, "paper": PAPER_FIT,
    }
    report["downstream"] = measure_downstream(settings, source, priors, root, cfg, log)
    report["seconds"] = {"sweep": t_sweep - t0, "downstream": report["downstream"]["seconds"],
                         "total": time.perf_counter() - t0}
    write_atomic(root / "scaling.json", json.dumps(report, indent=1))
    write_atomic(root / "scaling.png", scaling_png(report))
    write_atomic(root / "downstream.png", downstream_png(report))
    return {**report, "path": str(root / "scaling.json"), "png": str(root / "scaling.png"),
            "downstream_png": str(root / "downstream.png")}


def measure_downstream(settings: Any, source: Any, priors: Sequence[dict[str, Any]], root: Path, cfg: ScalingConfig,
                       log: Log = nolog) -> dict[str, Any]:
    """Downstream scores of the final (or every) point of each prior, cached per point, and their correlations with
    held-out loss. The source LM and the shared context are loaded only when a point is not cached."""
    t0 = time.perf_counter()
    chosen = [p for pr in priors for p in pr["points"] if cfg.downstream == "all" or p["final"]]
    if len(chosen) < 4:
        raise ScalingError(f"downstream correlations need at least 4 priors; scaling.points gives {len(chosen)} "
                           "(add points, or set scaling.downstream = 'all' to score the snapshots too)")
    version = downstream_version(settings, source)
    ctx, scores = None, []
    for p in chosen:
        out = root / "downstream" / f"{p['key']}-step{p['step']}-{version}.json"
        if out.is_file():
            scores.append(json.loads(out.read_text()))
            continue
        if ctx is None:
            ctx = Downstream(settings, source, log)
            ctx_units = ctx.units()
        prior = dict(checkpoints_of(root / "points" / p["key"], ctx.lm.device))[p["step"]]
        s = {**ctx.scores(prior), "units": {k: v.tolist() for k, v in ctx_units.items()}}
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, json.dumps(s))
        log(f"downstream {p['label']}: probe AUC {np.mean(s['probe_auc']):.3f}, concept {np.mean(s['steer_concept']):.3f}, "
            f"NLL cost {np.mean(s['steer_nll_cost']):+.3f}, ΔLM {np.mean(s['delta_lm']):.4f} ({s['seconds']:.0f} s)")
        scores.append(s)
    units = {k: np.asarray(v) for k, v in scores[0]["units"].items()}
    losses = np.array([p["loss"] for p in chosen])
    per_unit = {m: np.array([s[m] for s in scores]) for m in METRICS}
    corr = downstream_correlations(losses, per_unit, units, cfg.n_bootstrap, cfg.seed)
    return {"points": [{"label": p["label"], "key": p["key"], "step": p["step"], "loss": p["loss"], "C": p["C"]}
                       for p in chosen],
            "correlations": corr, "seconds": time.perf_counter() - t0,
            "context_seconds": ctx.seconds if ctx is not None else 0.0}
