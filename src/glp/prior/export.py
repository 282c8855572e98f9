"""The exported prior: safetensors weights + JSON config + normalization stats, loadable with plain torch.

    <dir>/model.safetensors   denoiser weights (float32)
    <dir>/norm.safetensors    mean, std of the activations it was trained on
    <dir>/config.json         denoiser config (d_model + DenoiserConfig), source, training summary and the sha256
                              of both weight files (`weights_sha256`, `norm_sha256`), checked by load_prior
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from glp.artifacts import publish_dir, sha256_file, staging_dir, write_manifest
from glp.data.stats import Normalizer
from glp.prior.denoiser import GLPDenoiser

CHECKSUMS = {"model.safetensors": "weights_sha256", "norm.safetensors": "norm_sha256"}  # file -> config.json key


class PriorCorrupt(ValueError):
    """A file of an exported prior is truncated, corrupt or differs from the checksum recorded at export."""


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


def save_prior(path: Path, denoiser: GLPDenoiser, normalizer: Normalizer, meta: dict[str, Any],
               snapshots: dict[str, dict[str, torch.Tensor]] | None = None) -> Path:
    """Write the prior folder atomically (temp sibling, fsync, rename); `snapshots` ("step<N>" -> weights of the
    same network mid-training) go to snapshots/<tag>.safetensors, with their sha256 in config.json."""
    from safetensors.torch import save_file

    path = Path(path)
    with staging_dir(path) as tmp:  # removed if anything below fails
        state = {k: v.detach().float().cpu().contiguous() for k, v in denoiser.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"))
        if snapshots:
            (tmp / "snapshots").mkdir()
            meta = {**meta, "snapshots": {}}
            for tag, weights in snapshots.items():
                file = tmp / "snapshots" / f"{tag}.safetensors"
                save_file({k: v.detach().float().cpu().contiguous() for k, v in weights.items()}, str(file))
                meta["snapshots"][tag] = {"step": int(tag.removeprefix("step")), "sha256": sha256_file(file)}
        save_file({"mean": normalizer.mean.float().cpu().contiguous(),
                   "std": normalizer.std.float().cpu().contiguous()}, str(tmp / "norm.safetensors"))
        config = {"format": "glp-prior/1", "denoiser": denoiser.config_dict(), **meta,
                  **{key: sha256_file(tmp / name) for name, key in CHECKSUMS.items()}}
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        publish_dir(tmp, path)
    return path


def load_prior(path: str | os.PathLike, device: str | torch.device = "cpu") -> Prior:
    """Load an exported prior with plain torch + safetensors (no DeepSpeed, no pickle).

    A truncated or corrupt file, or one whose sha256 differs from config.json's (exports without the checksums
    still load), raises PriorCorrupt: one line naming the file and the command that rebuilds it.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no exported prior at {path}: materialize `glp_prior` first")
    try:
        config = json.loads((path / "config.json").read_text())
        denoiser = GLPDenoiser.from_config_dict(config["denoiser"])
    except (ValueError, KeyError, TypeError) as e:
        raise _corrupt(path / "config.json", e, None) from e
    for name, key in CHECKSUMS.items():
        if key in config and (path / name).is_file() and (seen := sha256_file(path / name)) != config[key]:
            raise _corrupt(path / name, f"sha256 {seen[:12]}… differs from {key} {str(config[key])[:12]}… in "
                           "config.json", config)
    weights, norm = (_read_safetensors(path / name, config) for name in CHECKSUMS)
    denoiser.load_state_dict(weights)
    prior = Prior(denoiser.eval(), Normalizer(norm["mean"], norm["std"]), config)
    return prior.to(device)


def load_snapshots(prior: Prior, path: str | os.PathLike) -> list[tuple[int, GLPDenoiser]]:
    """(step, denoiser) of every mid-training snapshot saved with the prior at `path` (checksums checked), by step."""
    out = []
    for tag, info in sorted(prior.config.get("snapshots", {}).items(), key=lambda kv: kv[1]["step"]):
        file = Path(path) / "snapshots" / f"{tag}.safetensors"
        if not file.is_file() or sha256_file(file) != info["sha256"]:
            raise _corrupt(file, "missing, or its sha256 differs from config.json's", prior.config)
        net = GLPDenoiser.from_config_dict(prior.config["denoiser"])
        net.load_state_dict(_read_safetensors(file, prior.config))
        out.append((int(info["step"]), net.eval().to(next(prior.denoiser.parameters()).device)))
    return out


def _read_safetensors(file: Path, config: dict[str, Any]) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as e:  # safetensors raises its own SafetensorError (header, offsets) or an OSError
        raise _corrupt(file, e, config) from e


def _corrupt(file: Path, error: BaseException | str, config: dict[str, Any] | None) -> PriorCorrupt:
    """What is broken and the command that rebuilds it (the partition is the prior's recorded source, if known)."""
    detail = f"{type(error).__name__}: {error}" if isinstance(error, BaseException) else error
    detail = " ".join(detail.split())  # one line, whatever the library's message looks like
    source = config.get("source") if isinstance(config, dict) else None
    part = f" --partition '{source}'" if isinstance(source, str) else ""
    return PriorCorrupt(f"{file} is truncated or corrupt ({detail}): delete {file.parent} and re-materialize: "
                        f"dagster asset materialize -m glp_dagster.definitions --select glp_prior{part}")


# ---------------------------------------------------------------- export for sharing


def export_prior(prior_dir: Path, out: Path, card: str, norm_stats: Path | None = None) -> Path:
    """Copy an exported prior into `out` for sharing: its safetensors weights, config.json and norm.safetensors,
    the full normalization stats (with the covariance) if given, and `card` as README.md (the model card);
    a SHA256SUMS of every file. Written to a temp sibling and renamed: `out` is complete or absent.

    Loading `out` with `load_prior` gives the same network (the checksums in config.json are checked)."""
    import shutil


    load_prior(prior_dir)  # refuse to export a corrupt prior
    out = Path(out)
    with staging_dir(out) as tmp:  # removed if anything below fails
        for name in ("model.safetensors", "norm.safetensors", "config.json"):
            shutil.copy2(Path(prior_dir) / name, tmp / name)
        if norm_stats is not None:
            shutil.copy2(norm_stats, tmp / "norm_stats.safetensors")
        (tmp / "README.md").write_text(card)
        write_manifest(tmp)
        publish_dir(tmp, out)
    return out
