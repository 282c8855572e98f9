"""Seed replicates: extra priors on the main run's activations, every prior-dependent step rerun, a spread report."""

from __future__ import annotations

import json

from glp import pipeline
from glp.artifacts import sha256_file
from glp.seeds import run_seeds, summarize
from tests.glp_dagster.conftest import build_prior_chain, tiny_settings


def _main_chain(s, src) -> None:
    from glp.pipeline.steering import build_delta_lm
    from glp.pipeline.probing import build_probes
    from glp.pipeline.steering import build_steering

    build_prior_chain(s, src)
    build_steering(s, src)
    build_delta_lm(s, src)
    build_probes(s, src)


def test_a_replicate_reuses_the_activations_and_never_touches_the_main_artifacts(tmp_path):
    s = tiny_settings(tmp_path)
    src = s.sources[0]
    _main_chain(s, src)
    main = pipeline.source_paths(s, src)
    before = sha256_file(main.prior / "model.safetensors")
    summary = run_seeds(s, src, [1], log=lambda _: None)
    assert summary["seeds"] == [0, 1]
    rep_root = s.store.root / "seeds" / "s1" / main.root.relative_to(s.store.root)
    assert (rep_root / "activations").is_symlink() and (rep_root / "prior" / "model.safetensors").is_file()
    assert sha256_file(main.prior / "model.safetensors") == before
    assert sha256_file(rep_root / "prior" / "model.safetensors") != before  # another seed, another prior
    claims = summary["claims"]
    for key in ("heldout_loss", "loss_minus_gaussian", "delta_lm_glp", "probe_auc_glp"):
        assert len(claims[key]["values"]) == 2 and claims[key]["min"] <= claims[key]["mean"] <= claims[key]["max"]
    saved = json.loads((main.root / "seeds" / "seeds.json").read_text())
    assert saved["seeds"] == [0, 1] and (main.root / "seeds" / "seeds.md").read_text().startswith("| claim")
    # resumable: a second call trains nothing new and reports the same numbers
    again = run_seeds(s, src, [1], log=lambda _: None)
    assert again["claims"]["heldout_loss"] == claims["heldout_loss"]


def test_seed_support_counts_can_fail():
    per_seed = {0: {"loss_minus_gaussian": -0.1, "probe_auc_glp": 0.6, "probe_auc_layer": 0.7},
                1: {"loss_minus_gaussian": 0.05, "probe_auc_glp": 0.8, "probe_auc_layer": 0.7}}
    s = summarize(per_seed)
    assert s["seeds_supporting"] == {"glp_beats_gaussian_loss": 1, "glp_probe_auc_above_layer": 1}
