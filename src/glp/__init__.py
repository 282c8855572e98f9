"""glp: Generative Latent Priors over LLM activations.

`glp.load_prior(dir)` loads a trained prior (the store's `prior/` folder or a `glp export` folder) with plain
torch + safetensors. Submodules import their heavy dependencies lazily, so `import glp` stays cheap.
"""


def __getattr__(name: str):  # noqa: ANN202 (module-level lazy attribute)
    if name == "load_prior":
        from glp.prior import load_prior

        return load_prior
    raise AttributeError(f"module 'glp' has no attribute {name!r}")
