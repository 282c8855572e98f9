"""glp.pipeline.layout.SourceArtifacts: each artifact loaded once, each width checked once against the activation
store, and a mismatch names the more downstream artifact as the one to redo."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from glp.config import load_settings
from glp.data.stats import compute_stats
from glp.data.store import ActivationStore, StoreWriter
from glp.pipeline.layout import SourceArtifacts, source_paths


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
