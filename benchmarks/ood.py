"""Cost of the off-manifold scores against their true limit, in one run.

1. `diffusion_score / bare denoiser passes = X.XX`: `glp.uses.ood.diffusion_score` on N held-out rows (3 noise levels:
   noise drawn per level, loss per row, float64 accumulation) vs the same number of bare denoiser forwards on the
   same rows (len(ts) passes of the network at fixed t, nothing else), timed interleaved, median of repeats.
2. `glp score per token / plain LM forward to the layer = X.XX`: scoring one text's tokens (the forward to the
   layer plus the diffusion score) vs the forward alone, the same text.
3. `Mahalanobis / diffusion_score = X.XX`: what the strongest simple baseline costs next to the GLP score.

Runs on the default source's materialized artifacts (`make run` first). Offline; CPU or CUDA.
    .venv/bin/python benchmarks/ood.py [--partition smollm2-135m/L15] [--rows 4096] [--repeats 7]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def median_time(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    from glp import pipeline
    from glp.data.activations import forward_batch, tokenize_doc
    from glp.config import load_settings
    from glp.data.lm import load_source_lm
    from glp.prior.manifold import diffusion_score
    from glp.uses.ood import mahalanobis_score, mahalanobis_whitener
    from glp.prior import load_prior
    from glp.data.stats import NormStats
    from glp.data.store import ActivationStore

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--partition", default=None, help="source key (default: the first configured source)")
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    settings = load_settings()
    source = settings.source(args.partition) if args.partition else settings.sources[0]
    paths = pipeline.source_paths(settings, source)
    prior = load_prior(paths.prior, "cpu")
    ts = settings.ood.ts
    z = prior.normalizer.normalize(torch.from_numpy(ActivationStore(paths.store("heldout")).rows(0, args.rows)))
    net = prior.denoiser

    @torch.no_grad()
    def bare() -> None:
        for t in ts:
            net(z, torch.full((len(z),), float(t)))

    def score() -> None:
        diffusion_score(net, z, ts, settings.ood.seed)

    whitener = mahalanobis_whitener(NormStats.load(paths.norm_stats).cov_normalized)  # once, as the ood asset does
    r_bare, r_score = [], []
    for _ in range(args.repeats):  # interleaved: both see the same machine load
        r_bare.append(median_time(bare, 1))
        r_score.append(median_time(score, 1))
    t_maha = median_time(lambda: mahalanobis_score(z, whitener=whitener), args.repeats)
    print(f"rows {len(z)}, d {z.shape[1]}, noise levels {list(ts)}")
    print(f"diffusion_score / bare denoiser passes = {statistics.median(r_score) / statistics.median(r_bare):.2f}")
    print(f"Mahalanobis / diffusion_score = {t_maha / statistics.median(r_score):.2f}")

    lm = load_source_lm(pipeline.model_dir(settings, source), "cpu", "float32", settings.trust_remote_code)
    text = ("The committee said on Tuesday that the new rules would apply to every company that sells goods "
            "in the region, starting next year.")
    seq = tokenize_doc(lm, text, settings.ood.max_seq_len)

    def forward() -> torch.Tensor:
        return forward_batch(lm, source.layer, [seq])[0][0, 1:]

    def forward_and_score() -> None:
        diffusion_score(net, prior.normalizer.normalize(forward()), ts, settings.ood.seed)

    f, s = [], []
    for _ in range(args.repeats):
        f.append(median_time(forward, 1))
        s.append(median_time(forward_and_score, 1))
    print(f"glp score ({len(seq) - 1} tokens) / plain LM forward to layer {source.layer} = "
          f"{statistics.median(s) / statistics.median(f):.2f}")


if __name__ == "__main__":
    main()
