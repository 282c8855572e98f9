"""Cost of GLP post-processing during steered generation, and how far its denoiser passes can be cut.

1. `glp post-processing / plain LM forward = X.XX`: per generated token, the SDEdit call on the newest
   position (t_start 0.5, 20-step Euler = 10 denoiser passes) vs one KV-cached forward of the source LM, same
   batch, timed interleaved in one run (median of repeats).
2. Passes vs gain: the fluency gain of GLP at one strength r, as the paired NLL difference raw − GLP (nats,
   positive = GLP more fluent, 95% bootstrap CI resampling prompts), for Euler / Heun / midpoint at several
   schedules. Direction and prompts as in the `steering` asset (movie-snippet DiffMean, held-out BBC openings).

Runs on the default source's materialized artifacts (`make run` first). Offline; CPU or CUDA.
    .venv/bin/python benchmarks/steer.py [--partition smollm2-135m/L15] [--r 0.5] [--batch 32] [--tokens 20]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    from glp import pipeline
    from glp.config import load_settings
    from glp.ci import bootstrap_ci
    from glp.uses.judges import continuation_nll
    from glp.data.lm import load_source_lm
    from glp.prior import load_prior
    from glp.uses.direction import default_prompts, mean_activation_norm, movie_snippets, sentiment_direction
    from glp.uses.generate import encode, generate, steer_edit
    from glp.prior.manifold import sdedit, solver_passes
    from glp.data.store import ActivationStore

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--partition", default=None, help="source key (default: the first configured source)")
    ap.add_argument("--r", type=float, default=0.5, help="strength at which the fluency gain is measured")
    ap.add_argument("--batch", type=int, default=32, help="rows per forward (prompts x samples)")
    ap.add_argument("--tokens", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()

    settings = load_settings()
    source = settings.source(args.partition) if args.partition else settings.sources[0]
    cfg = settings.steer
    paths = pipeline.source_paths(settings, source)
    lm = load_source_lm(pipeline.model_dir(settings, source), settings.device)
    prior = load_prior(paths.prior, lm.device)
    mean_norm = mean_activation_norm(ActivationStore(paths.store("heldout")).rows())
    snippets = movie_snippets(cfg.labelled, cfg.n_direction_texts, cfg.n_probe_texts, cfg.seed)
    w = sentiment_direction(lm, source.layer, snippets, cfg.direction_max_tokens)
    prompt_texts = list(cfg.prompts) if cfg.prompts else default_prompts(settings.corpus.path, cfg.n_prompts,
                                                                           settings.corpus)
    dev = lm.device
    print(f"device {dev}, source {source.key}, torch threads {torch.get_num_threads()}")

    # ---- 1. cost per generated token
    prompts = [encode(lm, p) for p in (prompt_texts * args.batch)[: args.batch]]
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[lm.pad_id] * (width - len(p)) + p for p in prompts], device=dev)
    with torch.inference_mode():
        past = lm.model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True).past_key_values
    step = torch.full((args.batch, 1), lm.bos_id, device=dev)
    mask = torch.ones((args.batch, width + 1), dtype=torch.long, device=dev)
    rows = torch.randn(args.batch, lm.d_model, device=dev) * 3 + prior.normalizer.mean

    def lm_step() -> None:
        with torch.inference_mode():
            lm.model(input_ids=step, attention_mask=mask, past_key_values=past, use_cache=True)
        past.crop(-1)  # the forward extended the cache in place: drop that token again (a slice, negligible)

    def glp_step() -> None:
        sdedit(prior, rows, settings.steer.t_start, settings.steer.steps)

    for fn in (lm_step, glp_step):
        fn()  # warm-up
    t_lm, t_glp = [], []
    for _ in range(args.repeats):  # interleaved: load changes hit both alike
        for fn, out in ((lm_step, t_lm), (glp_step, t_glp)):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            out.append(time.perf_counter() - t0)
    m_lm, m_glp = statistics.median(t_lm), statistics.median(t_glp)
    passes = solver_passes(settings.steer.t_start, settings.steer.steps, "euler")
    print(f"\nper generated token, batch {args.batch}: plain LM forward {m_lm * 1e3:.2f} ms, "
          f"GLP post-processing ({passes} passes) {m_glp * 1e3:.2f} ms")
    print(f"glp post-processing / plain LM forward = {m_glp / m_lm:.2f}")
    print(f"one denoiser pass / plain LM forward = {m_glp / passes / m_lm:.2f}")

    # ---- 2. passes vs fluency gain at r
    reps = 1 if cfg.decoding == "greedy" else cfg.samples_per_prompt
    texts = [p for p in prompt_texts for _ in range(reps)]
    groups = [i for i in range(len(prompt_texts)) for _ in range(reps)]
    pids = [encode(lm, p) for p in texts]
    kw = dict(max_new_tokens=args.tokens, decoding=cfg.decoding, temperature=cfg.temperature, seed=cfg.seed,
              layer=source.layer)
    alpha = args.r * mean_norm
    raw_nll = continuation_nll(lm, pids, generate(lm, pids, edit=steer_edit(w, alpha), **kw))
    print(f"\nfluency gain of GLP at r={args.r} ({len(pids)} continuations of {args.tokens} tokens): "
          f"raw NLL {raw_nll.mean():.3f}")
    print(f"{'solver':<9}{'steps':>6}{'passes':>8}{'NLL':>8}{'gain raw-GLP':>14}   95% CI        s/setting")
    for solver, steps in (("euler", 20), ("euler", 10), ("euler", 4), ("euler", 2), ("heun", 10), ("heun", 4),
                          ("heun", 2), ("midpoint", 4), ("midpoint", 2)):
        g = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
        t0 = time.perf_counter()
        cont = generate(lm, pids, edit=steer_edit(w, alpha, prior, cfg.t_start, steps, solver, g), **kw)
        secs = time.perf_counter() - t0
        nll = continuation_nll(lm, pids, cont)
        gain = raw_nll - nll
        lo, hi = bootstrap_ci(gain, cfg.n_bootstrap, cfg.seed, groups=groups)
        print(f"{solver:<9}{steps:>6}{solver_passes(cfg.t_start, steps, solver):>8}{nll.mean():>8.3f}"
              f"{gain.mean():>14.3f}   [{lo:+.3f}, {hi:+.3f}]  {secs:6.1f}")


if __name__ == "__main__":
    main()
