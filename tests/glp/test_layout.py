"""glp.pipeline.layout.SourceArtifacts: each artifact loaded once, each width checked once against the activation
store, and a mismatch names the more downstream artifact as the one to redo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glp.config import load_settings
from glp.data.stats import compute_stats
from glp.data.store import ActivationStore, StoreWriter
from glp.pipeline.layout import LineageMismatch, SourceArtifacts, sae_dir, source_paths


def _store(path: Path, d: int, n: int = 64) -> ActivationStore:
    rows = np.random.default_rng(d).normal(size=(n, d)).astype(np.float32)
    w = StoreWriter(path, d, 32, {})
    w.append(rows, np.arange(n), np.ones(n, np.int32), np.zeros(n, np.int32))
    w.commit(n)
    return ActivationStore(w.close())


@pytest.fixture()
def art(tmp_path: Path) -> SourceArtifacts:
    s = load_settings(store={"root": str(tmp_path / "store")}, sources=[{"model": "builtin", "layer": 1}],
                      source_lm={"n_layer": 2})
    paths = source_paths(s, s.sources[0])
    paths.activations_dir.mkdir(parents=True)
    _store(paths.store("train"), 8)
    return SourceArtifacts(s, s.sources[0], "a test step")


def test_each_artifact_is_loaded_once(art):
    assert art.store("train") is art.store("train")
    compute_stats(art.store("train")).save(art.paths.norm_stats)
    assert art.norm_stats() is art.norm_stats() and len(art.norm_stats().mean) == 8


def test_a_width_mismatch_names_the_downstream_artifact_to_redo(art, tmp_path):
    compute_stats(_store(tmp_path / "other.zarr", 6)).save(art.paths.norm_stats)  # stats of another width
    with pytest.raises(ValueError, match=r"norm_stats width 6 != activations width 8 \(a test step\): "
                                         r"re-materialize `norm_stats`"):
        art.norm_stats()


def test_the_reference_width_is_the_store_even_when_loaded_last(art, tmp_path):
    _store(art.paths.store("heldout"), 6)  # a held-out store of another width than train's
    with pytest.raises(ValueError, match=r"activations width 6 != activations width 8"):
        art.store("heldout")


def test_a_missing_sae_says_which_asset_to_materialize(art):
    with pytest.raises(FileNotFoundError, match=r"a test step compares with the SAE baseline; materialize `sae`"):
        art.sae()


# ---------------------------------------------------------------- lineage by content (issue 22)


def _retrain_in_place(model: Path, seed: int) -> None:
    """Re-initialise the saved model's weights with another seed: same files, same sizes, other values."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    net = AutoModelForCausalLM.from_pretrained(model)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    net.save_pretrained(model)


def test_the_model_fingerprint_follows_the_weights_content_not_their_size_and_is_hashed_once(tmp_path, tiny_lm_dir):
    import shutil

    from glp.pipeline.layout import model_fingerprint

    model, cache = tmp_path / "lm", tmp_path / "cache.json"
    shutil.copytree(tiny_lm_dir, model)
    before = model_fingerprint(model, cache)
    size = (model / "model.safetensors").stat().st_size
    _retrain_in_place(model, seed=1)
    assert (model / "model.safetensors").stat().st_size == size  # the old size-based fingerprint was blind here
    assert model_fingerprint(model, cache) != before
    # remembered by (path, size, mtime): the cache holds the weights' sha256, so the next call reads no weight bytes
    import json

    recorded = json.loads(cache.read_text())[str((model / "model.safetensors").absolute())]
    assert recorded["stat"][0] == size and len(recorded["sha256"]) == 64
    with pytest.raises(FileNotFoundError, match="no model folder at .*materialize the source model first"):
        model_fingerprint(tmp_path / "missing", cache)


def _user_settings(tmp_path: Path, model: Path, corpus: Path, layer: int = 1):
    return load_settings(store={"root": str(tmp_path / "store"), "batch_size": 8, "max_seq_len": 32,
                                "max_tokens": 400, "heldout_max_tokens": 200},
                         corpus={"path": str(corpus)}, sources=[{"model": str(model), "layer": layer}])


def test_activations_of_a_retrained_model_are_extracted_again_not_kept(tmp_path, tiny_lm_dir, tiny_corpus):
    """Issue 22: after the model was retrained (same sizes), `activations` said 'already extracted ...; kept'."""
    import shutil

    from glp.pipeline.data import build_activations

    model = tmp_path / "lm"
    shutil.copytree(tiny_lm_dir, model)
    s = _user_settings(tmp_path, model, tiny_corpus)
    first = build_activations(s, s.sources[0])
    said: list[str] = []
    build_activations(s, s.sources[0], log=said.append)
    assert any("kept" in line for line in said)  # the same model: kept, as before
    _retrain_in_place(model, seed=1)
    said.clear()
    second = build_activations(s, s.sources[0], log=said.append)
    assert not any("kept" in line for line in said), said
    assert second["version"] != first["version"]
    store = ActivationStore(source_paths(s, s.sources[0]).store("train"))
    assert store.attrs["version"] == second["version"]


def _prior(path: Path, d: int, meta: dict) -> Path:
    import torch

    from glp.config import DenoiserConfig
    from glp.data.stats import Normalizer
    from glp.prior import save_prior
    from glp.prior.denoiser import GLPDenoiser

    torch.manual_seed(0)
    cfg = DenoiserConfig(n_blocks=1, time_dim=16, hidden_mult=1.0)
    return save_prior(path, GLPDenoiser(d, cfg), Normalizer(torch.zeros(d), torch.ones(d)), meta)


def _versioned(path: Path, d: int, version: str) -> ActivationStore:
    rows = np.random.default_rng(d).normal(size=(64, d)).astype(np.float32)
    w = StoreWriter(path, d, 32, {"version": version})
    w.append(rows, np.arange(64), np.ones(64, np.int32), np.zeros(64, np.int32))
    w.commit(64)
    return ActivationStore(w.close())


@pytest.fixture()
def lineage(tmp_path, tiny_lm_dir, tiny_corpus) -> SourceArtifacts:
    """A source (a local model, layer 1) whose train and held-out stores are of the version the settings give."""
    s = _user_settings(tmp_path, tiny_lm_dir, tiny_corpus)
    art = SourceArtifacts(s, s.sources[0], "a test step")
    art.paths.activations_dir.mkdir(parents=True)
    for split in ("train", "heldout"):
        _versioned(art.paths.store(split), 8, art.expected_version())
    return art


def test_a_prior_of_another_source_is_refused_naming_both_sources_and_the_fix(lineage):
    """Issue 22: a prior of the same width from another layer was evaluated as this source's (loss 4.25 vs 1.20)."""
    here = lineage.source.key
    other = here.replace("/L1", "/L2")
    _prior(lineage.paths.prior, 8, {"source": other, "activations_version": lineage.expected_version()})
    with pytest.raises(LineageMismatch) as e:
        lineage.prior()
    msg = str(e.value)
    assert f"records {other!r}, source {here!r} has {here!r}" in msg
    assert f"--select 'key:glp_prior+' --partition '{here}'" in msg


def test_a_prior_trained_on_other_activations_is_refused(lineage):
    _prior(lineage.paths.prior, 8, {"source": lineage.source.key, "activations_version": "0123456789abcdef"})
    with pytest.raises(LineageMismatch, match=r"glp_prior at .* was made from another activations version than "
                                              r"train.zarr \(a test step\): it records '0123456789abcdef'"):
        lineage.prior()


def test_train_and_heldout_stores_of_two_versions_are_refused_as_a_pair(lineage):
    """Issue 22: SIGTERM during held-out extraction left stores of two configs; the chain ran on the pair."""
    from glp.data.store import remove_store

    remove_store(lineage.paths.store("heldout"))
    _versioned(lineage.paths.store("heldout"), 8, "old-version-0000")
    with pytest.raises(LineageMismatch, match=r"the activation stores are of two versions \(a test step\): "
                                              r"heldout.zarr is 'old-version-0000', train.zarr is "):
        lineage.store("train")  # even a step that reads only train refuses the mixed pair


def test_a_store_of_another_version_than_the_settings_give_is_refused(tmp_path, tiny_lm_dir, tiny_corpus):
    s = _user_settings(tmp_path, tiny_lm_dir, tiny_corpus)
    art = SourceArtifacts(s, s.sources[0], "a test step")
    art.paths.activations_dir.mkdir(parents=True)
    _versioned(art.paths.store("train"), 8, "extracted-before")
    with pytest.raises(LineageMismatch, match=r"was extracted as activations version 'extracted-before', but the "
                                              r"model, layer, corpus and store settings now give"):
        art.store("train")


def test_norm_stats_of_another_store_are_refused(lineage, tmp_path):
    compute_stats(_versioned(tmp_path / "other.zarr", 8, "another-store-00")).save(lineage.paths.norm_stats)
    with pytest.raises(LineageMismatch, match=r"norm_stats at .* was made from another activations version than "
                                              r"train.zarr .*records 'another-store-00'"):
        lineage.norm_stats()
    compute_stats(lineage.store("train")).save(lineage.paths.norm_stats)  # the store's own: accepted
    assert SourceArtifacts(lineage.settings, lineage.source).norm_stats().made_from == {
        "activations_version": lineage.expected_version()}


def test_a_prior_of_the_wrong_width_is_blamed_even_when_the_sae_was_loaded_first(lineage):
    """Issue 22: `delta_lm` blamed the SAE when the prior was wrong."""
    import torch

    from glp.data.stats import Normalizer
    from glp.uses.sae import TopKSAE, save_sae

    meta = {"source": lineage.source.key, "activations_version": lineage.expected_version()}
    save_sae(sae_dir(lineage.paths.root), TopKSAE(8, 16, 2), Normalizer(torch.zeros(8), torch.ones(8)), meta)
    _prior(lineage.paths.prior, 6, meta)
    lineage.sae()
    with pytest.raises(ValueError, match=r"glp_prior width 6 != activations width 8 \(a test step\): "
                                         r"re-materialize `glp_prior`"):
        lineage.prior()
