"""Prior steps: train the GLP through DeepSpeed and export it (`glp_prior`), then evaluate it against the
full-covariance Gaussian, SAE and PCA baselines (`prior_eval`)."""

from __future__ import annotations

import json
import shutil
from typing import Any

from glp.artifacts import content_hash, write_atomic
from glp.config import Settings, SourceConfig
from glp.pipeline.layout import SourceArtifacts, prior_meta, short_sha256, source_paths
from glp.progress import Log, nolog


def build_prior(settings: Settings, source: SourceConfig, log: Log = nolog) -> dict[str, Any]:
    """Train the prior through DeepSpeed (resuming from its checkpoints) and export it.

    With `train.world_size` W > 1 this runs in each of W processes started by `torchrun` (glp_dagster.pipes_train):
    all of them train, rank 0 exports and returns the summary; the other ranks return only their steps and losses."""
    import os

    import torch

    from glp.data.lm import resolve_device
    from glp.prior import save_prior
    from glp.prior.train import NonFiniteLoss, train_prior

    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if world != settings.train.world_size:
        raise ValueError(f"train.world_size is {settings.train.world_size} but this process is one of {world}: "
                         f"materialize `glp_prior` (it launches torchrun --nproc_per_node {settings.train.world_size}), "
                         "or launch `python -m torch.distributed.run --nproc_per_node W -m glp_dagster.pipes_train` "
                         "yourself")
    paths = source_paths(settings, source)
    art = SourceArtifacts(settings, source, "glp_prior")
    store, stats = art.store("train"), art.norm_stats()
    # Checkpoints of another config or data must not be resumed: key the folder by what the run depends on.
    run_key = content_hash(prior_meta(settings, source), store.attrs.get("version"), stats.n)
    ckpt = paths.checkpoints / run_key
    if rank == 0 and paths.checkpoints.exists():
        for other in paths.checkpoints.iterdir():
            if other.name != run_key:
                shutil.rmtree(other, ignore_errors=True)
    model, res = train_prior(store, stats.normalizer(), settings.denoiser, settings.train, ckpt,
                             resolve_device(settings.device), log=log)
    if rank != 0:  # rank 0 exports
        return {"steps": res.steps, "losses": res.losses, "rank": rank}
    meta = {**prior_meta(settings, source), "activations_version": store.attrs.get("version"),
            "norm_stats_version": art.norm_stats_version(), "steps": res.steps,
            "recipe": res.recipe,  # the run's optimizer, parameterization, weighting (its checkpoints' record)
            "final_loss": float(sum(res.losses[-50:]) / len(res.losses[-50:])), "precision": res.precision,
            "losses": res.losses}
    bad = [name for name, t in model.state_dict().items() if not bool(torch.isfinite(t).all())]
    if bad:  # never publish a broken prior over a good one
        raise NonFiniteLoss(f"the trained prior's {bad[0]} holds NaN/Inf ({len(bad)} tensor(s)) although every loss "
                            f"was finite: nothing is published; re-materialize `glp_prior` with a lower train.lr")
    save_prior(paths.prior, model, stats.normalizer(), meta, snapshots=res.snapshots)
    shutil.rmtree(ckpt, ignore_errors=True)  # exported: the resume point is no longer needed
    return {"path": str(paths.prior), "version": short_sha256(paths.prior / "model.safetensors"), "steps": res.steps,
            "losses": res.losses, "n_params": res.n_params, "seconds": res.seconds, "rows_per_s": res.rows_per_s,
            "achieved_flops": res.flops / max(res.seconds, 1e-9), "precision": res.precision,
            "resumed_from": res.resumed_from, "d_model": store.d_model, "world_size": world}


SELECT_ROWS = 8192
"""Train rows on which the PCA baseline's k is matched to the SAE's reconstruction error."""


def build_prior_eval(settings: Settings, source: SourceConfig, log: Log = nolog) -> dict[str, Any]:
    """Held-out loss vs the affine baseline; FD and C2ST of GLP samples, Gaussians and SAE / PCA reconstructions
    against held-out rows; saved as JSON.

    The PCA reconstruction keeps the top-k principal axes of the train covariance, k the smallest whose
    reconstruction error on train rows is at most the SAE's there (an equal-error linear baseline, chosen on
    rows that are never scored).
    """
    import numpy as np
    import torch

    from glp.data.lm import resolve_device
    from glp.data.stats import pca_mse_by_k
    from glp.prior.evaluate import evaluate_prior

    paths = source_paths(settings, source)
    device = resolve_device(settings.device)
    art = SourceArtifacts(settings, source, "prior_eval")
    heldout, train = art.store("heldout"), art.store("train")
    prior = art.prior(device)
    sae, _, sae_cfg = art.sae("cpu")
    stats = art.norm_stats()
    norm = prior.normalizer.to("cpu")
    with torch.no_grad():
        x = norm.normalize(torch.from_numpy(heldout.rows()))
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
