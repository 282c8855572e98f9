"""The exported prior: safetensors weights + JSON config + normalization stats, loadable with plain torch.

    <dir>/model.safetensors   denoiser weights (float32)
    <dir>/norm.safetensors    mean, std of the activations it was trained on
    <dir>/config.json         denoiser config (d_model + DenoiserConfig), source, training summary
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glp.denoiser import GLPDenoiser
from glp.stats import Normalizer
from glp.artifacts import fresh_temp_dir, publish_dir


@dataclass
class Prior:
    """A trained GLP: the denoiser, the normalizer of its input space and its metadata."""

    denoiser: GLPDenoiser
    normalizer: Normalizer
    config: dict[str, Any]

    @property
    def d_model(self) -> int:
        return int(self.config["denoiser"]["d_model"])

    def to(self, device: torch.device | str) -> Prior:
        self.denoiser.to(device)
        self.normalizer.to(device)
        return self


def save_prior(path: Path, denoiser: GLPDenoiser, normalizer: Normalizer, meta: dict[str, Any]) -> Path:
    """Write the prior folder atomically (temp sibling, fsync, rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    tmp = fresh_temp_dir(path)
    state = {k: v.detach().float().cpu().contiguous() for k, v in denoiser.state_dict().items()}
    save_file(state, str(tmp / "model.safetensors"))
    save_file({"mean": normalizer.mean.float().cpu().contiguous(), "std": normalizer.std.float().cpu().contiguous()},
              str(tmp / "norm.safetensors"))
    config = {"format": "glp-prior/1", "denoiser": denoiser.config_dict(), **meta}
    (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    publish_dir(tmp, path)
    return path


def load_prior(path: str | os.PathLike, device: str | torch.device = "cpu") -> Prior:
    """Load an exported prior with plain torch + safetensors (no DeepSpeed, no pickle)."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no exported prior at {path}: materialize `glp_prior` first")
    config = json.loads((path / "config.json").read_text())
    denoiser = GLPDenoiser.from_config_dict(config["denoiser"])
    denoiser.load_state_dict(load_file(str(path / "model.safetensors")))
    norm = load_file(str(path / "norm.safetensors"))
    prior = Prior(denoiser.eval(), Normalizer(norm["mean"], norm["std"]), config)
    return prior.to(device)
