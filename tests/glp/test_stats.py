import numpy as np
import torch

from glp.stats import NormStats, Normalizer, compute_stats
from glp.store import ActivationStore, StoreWriter


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
