"""`glp export` writes a folder a model hub accepts (safetensors, config, norm stats, a model card, checksums) and
`glp.load_prior` reads it back to the same network; `glp info` describes and verifies artifacts."""

import pytest
import torch

import glp
from glp import pipeline
from glp.artifacts import verify_manifest
from glp.cli import main
from glp.prior import load_prior
from tests.glp_dagster.conftest import build_prior_chain, tiny_settings


def test_export_round_trips_to_identical_outputs_with_a_model_card(tmp_path, monkeypatch, capsys):
    s = tiny_settings(tmp_path)
    src = s.sources[0]
    build_prior_chain(s, src)
    out = tmp_path / "export"
    from glp.prior import export_prior
    from glp.summary import model_card

    paths = pipeline.source_paths(s, src)
    export_prior(paths.prior, out, model_card(s, src), paths.norm_stats)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["README.md", "SHA256SUMS", "config.json", "model.safetensors", "norm.safetensors",
                     "norm_stats.safetensors"]
    assert verify_manifest(out) == []
    a, b = load_prior(paths.prior), glp.load_prior(out)
    x, t = torch.randn(16, a.d_model), torch.rand(16)
    assert torch.equal(a.denoiser(x, t), b.denoiser(x, t))
    assert torch.equal(a.normalizer.mean, b.normalizer.mean) and torch.equal(a.normalizer.std, b.normalizer.std)
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: glp")
    for text in ("decoder block 1 of `builtin`", "parameters N", "compute C = 6·N·D", "two-sample test AUC",
                 "optimal affine (Gaussian) predictor", "## Licences"):
        assert text in card, text
    # glp info verifies what it describes: a tampered export is reported
    assert main(["info", str(out)]) == 0 and "every file intact" in capsys.readouterr().out
    (out / "README.md").write_text(card + "edited\n")
    main(["info", str(out)])
    assert "README.md: changed since it was written" in capsys.readouterr().out
    assert main(["info", str(paths.store("train"))]) == 0 and "every chunk verified" in capsys.readouterr().out
    assert main(["info", str(tmp_path)]) == 2


def _tiny_prior(path):
    from glp.config import DenoiserConfig
    from glp.data.stats import Normalizer
    from glp.prior import save_prior
    from glp.prior.denoiser import GLPDenoiser

    return save_prior(path, GLPDenoiser(8, DenoiserConfig(n_blocks=1, time_dim=8)),
                      Normalizer(torch.zeros(8), torch.ones(8)), {"source": "gpt2/L6"})


def _temps(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_a_failed_export_or_save_leaves_no_temp_folder_and_keeps_the_good_one(tmp_path):
    """`.prior.tmp-<pid>/` folders (up to 184 MB) used to stay after every failed export."""
    from glp.prior import save_prior
    from glp.prior.export import export_prior

    prior = _tiny_prior(tmp_path / "prior")
    good = (prior / "model.safetensors").read_bytes()
    with pytest.raises(FileNotFoundError):
        export_prior(prior, tmp_path / "shared", "card", norm_stats=tmp_path / "no_such_norm_stats.safetensors")
    assert not (tmp_path / "shared").exists() and _temps(tmp_path) == []
    loaded = load_prior(prior)
    with pytest.raises(ValueError, match="invalid literal"):  # a snapshot tag that is not step<N>, after files are written
        save_prior(prior, loaded.denoiser, loaded.normalizer, {"source": "gpt2/L6"},
                   snapshots={"stepX": loaded.denoiser.state_dict()})
    assert _temps(tmp_path) == [] and (prior / "model.safetensors").read_bytes() == good


def test_temp_folders_of_dead_processes_are_removed_by_the_next_write_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from glp.prior.export import export_prior

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        for pid in (dead.pid, live.pid):
            for name in ("prior", "shared"):
                (tmp_path / f".{name}.tmp-{pid}").mkdir()
                (tmp_path / f".{name}.tmp-{pid}" / "model.safetensors").write_bytes(b"half")
        (tmp_path / ".other.tmp-1x").mkdir()  # not a pid: not ours to judge
        prior = _tiny_prior(tmp_path / "prior")
        assert _temps(tmp_path) == sorted([".other.tmp-1x", f".prior.tmp-{live.pid}", f".shared.tmp-{dead.pid}",
                                           f".shared.tmp-{live.pid}"])
        export_prior(prior, tmp_path / "shared", "card")
        assert _temps(tmp_path) == sorted([".other.tmp-1x", f".prior.tmp-{live.pid}", f".shared.tmp-{live.pid}"])
    finally:
        live.kill()
        live.wait()
