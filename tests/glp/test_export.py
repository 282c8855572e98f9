"""`glp export` writes a folder a model hub accepts (safetensors, config, norm stats, a model card, checksums) and
`glp.load_prior` reads it back to the same network; `glp info` describes and verifies artifacts."""

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
