"""glp: Generative Latent Priors over LLM activations.

`glp.load_prior(dir)` loads a trained prior (the store's `prior/` folder or a `glp export` folder) with plain
torch + safetensors; `glp.sample`, `glp.project_on_manifold`, `glp.sdedit` and `glp.diffusion_score` use it.
The names resolve lazily, so `import glp` stays cheap (no torch until one is used).
"""

_FACE = {
    "load_prior": "glp.prior",
    "Prior": "glp.prior",
    "sample": "glp.prior.flow",
    "project_on_manifold": "glp.prior.flow",
    "sdedit": "glp.prior.manifold",
    "diffusion_score": "glp.prior.manifold",
}
__all__ = sorted(_FACE)


def __getattr__(name: str):  # noqa: ANN202 (module-level lazy attribute)
    if name in _FACE:
        import importlib

        return getattr(importlib.import_module(_FACE[name]), name)
    raise AttributeError(f"module 'glp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_FACE))
