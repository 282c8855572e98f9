"""What the prior is for, as pure science: tensors, models and a config piece in, results out (never `Settings`,
never a path of the artifact layout): steering, ΔLM, the SAE baseline, probing, out-of-manifold detection, scaling."""
