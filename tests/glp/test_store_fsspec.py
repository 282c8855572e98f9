"""Stores anywhere: an activation store at an fsspec URL (here `memory://` and `file://`, non-default local
filesystems) round-trips like a local one, and is published by its completion marker instead of a rename."""

import numpy as np
import pytest

from glp import pipeline
from glp.data.stats import compute_stats
from glp.data.store import ActivationStore, StoreError, StoreWriter, as_location, is_url
from tests.glp_dagster.conftest import tiny_settings


def _fill(w: StoreWriter, rows: np.ndarray, start: int, stop: int, per_commit: int = 10) -> None:
    for i in range(start, stop, per_commit):
        part = rows[i : min(i + per_commit, stop)]
        w.append(part, np.arange(i, i + len(part)), np.ones(len(part), np.int32), np.zeros(len(part), np.int32))
        w.commit(i + len(part))


def test_a_store_at_a_memory_url_round_trips_rows_checksums_and_stats(tmp_path):
    rows = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    url = "memory://glp-test/roundtrip/train.zarr"
    w = StoreWriter(url, 8, 16, {"model": "m"})
    _fill(w, rows, 0, 100)
    assert w.close() == as_location(url) and is_url(w.path)
    remote = ActivationStore(url)
    local_path = tmp_path / "a.zarr"
    w = StoreWriter(local_path, 8, 16, {"model": "m"})
    _fill(w, rows, 0, 100)
    local = ActivationStore(w.close())
    np.testing.assert_array_equal(remote.rows(), rows)
    np.testing.assert_array_equal(remote.provenance("doc_id"), np.arange(100))
    assert remote.verify() == [] and remote.attrs["checksums"] == local.attrs["checksums"]
    assert remote.nbytes_stored() > 0
    a, b = compute_stats(remote), compute_stats(local)
    assert a.n == b.n == 100
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.cov_normalized, b.cov_normalized)


def test_an_object_store_store_is_unreadable_until_its_completion_marker_and_resumes_in_place():
    rows = np.random.default_rng(1).normal(size=(60, 4)).astype(np.float32)
    url = "memory://glp-test/marker/train.zarr"
    w = StoreWriter(url, 4, 16, {"model": "m"})
    _fill(w, rows, 0, 30)
    del w  # the writer dies before close(): no rename exists, the store sits in place without its marker
    with pytest.raises(StoreError, match="incomplete .*no completion marker"):
        ActivationStore(url)
    w = StoreWriter(url, 4, 16, {"model": "m"})  # resumes after the 30 committed rows
    assert w.n_rows == 30
    _fill(w, rows, 30, 60)
    w.close()
    np.testing.assert_array_equal(ActivationStore(url).rows(), rows)
    # replacing it with a store of another config starts over: never a half-written store marked complete
    w = StoreWriter(url, 4, 16, {"model": "other"})
    assert w.n_rows == 0
    with pytest.raises(StoreError, match="incomplete"):
        ActivationStore(url)


def test_an_unknown_protocol_fails_naming_the_missing_backend():
    with pytest.raises(StoreError, match="install the fsspec backend for nosuchfs://"):
        ActivationStore("nosuchfs://bucket/train.zarr")


def test_the_pipeline_writes_and_reads_stores_at_a_file_url(tmp_path):
    remote = tmp_path / "bucket"
    s = tiny_settings(tmp_path, store={**tiny_settings(tmp_path).store.model_dump(mode="json"),
                                       "activations_url": f"file://{remote}/glp"})
    src = s.sources[0]
    pipeline.build_source_lm(s)
    out = pipeline.build_activations(s, src)
    train = pipeline.source_paths(s, src).store("train")
    assert out["train"]["path"] == f"file://{remote}/glp/builtin/L1/train.zarr" == str(train)
    assert (remote / "glp/builtin/L1/train.zarr/zarr.json").is_file()
    assert not (s.store.root / "builtin/L1/activations/train.zarr").exists()
    stats = pipeline.build_norm_stats(s, src)
    store = ActivationStore(train)
    assert store.verify() == [] and stats["n"] == store.n_rows == out["train"]["rows"] > 0
    # the location is not part of what the rows are: the data version is the local store's
    local = tiny_settings(tmp_path)
    assert pipeline.activations_version(local, src) == out["version"]
    # a second run keeps the published remote store (every chunk verified)
    logs = []
    pipeline.build_activations(s, src, log=logs.append)
    assert any("train.zarr: already extracted" in m for m in logs), logs
