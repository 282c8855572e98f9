"""The Generative Latent Prior: the denoiser, flow matching, training, export (save/load), evaluation and the
manifold operations (SDEdit, the diffusion score, the gate).

`from glp.prior import load_prior, Prior, save_prior` is the public way to load a trained prior."""

from glp.prior.export import Prior, PriorCorrupt, export_prior, load_prior, load_snapshots, save_prior

__all__ = ["Prior", "PriorCorrupt", "export_prior", "load_prior", "load_snapshots", "save_prior"]
