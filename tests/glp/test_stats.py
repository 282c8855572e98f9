import numpy as np
import pytest
import torch

from glp.data.stats import NormStats, Normalizer, compute_stats
from glp.data.store import ActivationStore, StoreWriter


def _store(path, rows, chunk_rows=64):
    w = StoreWriter(path, rows.shape[1], chunk_rows, {})
    w.append(rows, np.arange(len(rows)), np.ones(len(rows), np.int32), np.zeros(len(rows), np.int32))
    w.commit(len(rows))
    return ActivationStore(w.close())


def test_streaming_stats_equal_numpy_on_the_full_array(tmp_path):
    rng = np.random.default_rng(0)
    # large offset, anisotropic scales: the naive sum-of-squares formula would lose digits here
    rows = (1e4 + rng.normal(size=(1000, 6)) * np.array([1e-2, 1, 5, 10, 0.1, 3])).astype(np.float32)
    stats = compute_stats(_store(tmp_path / "a.zarr", rows, chunk_rows=97))
    x = rows.astype(np.float64)
    assert stats.n == 1000
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12)
    np.testing.assert_allclose(stats.var, x.var(0), rtol=1e-9)
    z = (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-6)
    np.testing.assert_allclose(stats.cov_normalized, np.cov(z.T, bias=True), atol=1e-6)


def test_normalizer_round_trips_and_saved_stats_reload(tmp_path):
    rows = np.random.default_rng(1).normal(3, 2, size=(300, 5)).astype(np.float32)
    stats = compute_stats(_store(tmp_path / "a.zarr", rows))
    stats.save(tmp_path / "s.safetensors")
    again = NormStats.load(tmp_path / "s.safetensors")
    np.testing.assert_array_equal(again.mean, stats.mean)
    norm = again.normalizer()
    x = torch.from_numpy(rows)
    z = norm.normalize(x)
    assert abs(float(z.mean())) < 1e-4 and abs(float(z.std()) - 1) < 1e-2
    torch.testing.assert_close(norm.denormalize(z), x, atol=1e-5, rtol=1e-5)
    assert isinstance(norm, Normalizer)


def test_one_corrupted_value_is_caught_as_a_one_dimension_std_outlier(tmp_path):
    from glp.data.stats import std_outliers

    rng = np.random.default_rng(0)
    rows, held = rng.normal(size=(5000, 16)).astype(np.float32), rng.normal(size=(1000, 16)).astype(np.float32)
    ref = compute_stats(_store(tmp_path / "h.zarr", held), with_cov=False)
    assert std_outliers(compute_stats(_store(tmp_path / "a.zarr", rows), with_cov=False).var, ref.var) == []
    rows[1234, 7] = -165_582.0  # one flipped exponent bit's worth
    out = std_outliers(compute_stats(_store(tmp_path / "b.zarr", rows), with_cov=False).var, ref.var)
    assert [o["dim"] for o in out] == [7] and out[0]["std_ratio"] > 100


def test_norm_stats_record_a_checksum_and_a_flipped_bit_is_refused(tmp_path):
    import pytest

    from glp.data.stats import ArtifactCorrupt

    stats = compute_stats(_store(tmp_path / "a.zarr", np.random.default_rng(0).normal(size=(300, 4)).astype(np.float32)))
    path = tmp_path / "norm_stats.safetensors"
    stats.save(path)
    np.testing.assert_array_equal(NormStats.load(path).var, stats.var)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # inside the last tensor's values
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupt, match="does not match its recorded checksum: delete it and re-materialize"):
        NormStats.load(path)
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(ArtifactCorrupt, match="truncated or corrupt"):
        NormStats.load(path)


def _store_of(path, n_docs, rows_per_doc, d=8):
    """A real store of n_docs documents, rows_per_doc rows each."""
    from glp.data.store import StoreWriter

    n = n_docs * rows_per_doc
    w = StoreWriter(path, d, 64, {})
    w.append(np.random.default_rng(n_docs).normal(size=(n, d)).astype(np.float32),
             np.repeat(np.arange(n_docs), rows_per_doc), np.tile(np.arange(1, rows_per_doc + 1), n_docs),
             np.ones(n, np.int32))
    w.commit(n_docs)
    return w.close()


def test_too_little_data_says_so_with_rows_per_split_and_the_minimum_before_any_stats(tmp_path):
    """A three-document corpus was diagnosed as "a corrupt value in the train store?" by the outlier check."""
    from glp import pipeline
    from glp.config import load_settings
    from glp.pipeline.data import TooLittleData

    s = load_settings(store={"root": str(tmp_path)}, sources=[{"model": "builtin", "layer": 1}], device="cpu")
    paths = pipeline.source_paths(s, s.sources[0])
    _store_of(paths.store("train"), 2, 128)
    _store_of(paths.store("heldout"), 1, 100)
    with pytest.raises(TooLittleData) as e:
        pipeline.build_norm_stats(s, s.sources[0])
    assert str(e.value) == (
        "too little data for a prior (train 256 rows from 2 documents, held-out 100 rows from 1 document): it needs at "
        "least 512 train rows (train.batch_size, one batch) and 8 documents in each split, and train has 2 documents "
        "and held-out has 1 document and train has 256 rows: add documents to the corpus (GLP_CORPUS__PATH), or raise "
        "GLP_CORPUS__HELDOUT_FRACTION, or lower GLP_TRAIN__BATCH_SIZE, then re-materialize `activations`")
    assert not paths.norm_stats.exists()
    _store_of(paths.store("train"), 8, 64)  # 512 rows from 8 documents: enough
    _store_of(paths.store("heldout"), 8, 10)
    assert pipeline.build_norm_stats(s, s.sources[0])["n"] == 512
