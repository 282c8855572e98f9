"""Sharded extraction: N shards, each its own unit of work, merge into exactly the one-worker store."""

import os

import numpy as np
import pytest

import glp.data.activations
from glp import pipeline
from glp.data.shards import ShardError
from glp.data.stats import NormStats
from glp.data.store import PROVENANCE, ActivationStore
from tests.glp_dagster.conftest import tiny_settings

# batch_size 1: windows of 16 documents; the tiny corpus (64 docs, ~30 rows each) under the 1,500-row cap is four
# windows, the cap falling inside the fourth, so shard ranges, ragged chunks and the cap are all exercised


def _settings(tmp_path, **store):
    base = tiny_settings(tmp_path).store.model_dump(mode="json")
    return tiny_settings(tmp_path, store={**base, "batch_size": 1, **store})


def _one_worker_store(tmp_path):
    """The one-worker train store, moved aside (the sharded run then extracts into the same root)."""
    s = _settings(tmp_path)
    src = s.sources[0]
    pipeline.build_source_lm(s)
    pipeline.build_activations(s, src)
    pipeline.build_norm_stats(s, src)
    paths = pipeline.source_paths(s, src)
    os.rename(paths.store("train"), tmp_path / "one.zarr")
    os.rename(paths.norm_stats, tmp_path / "one.safetensors")
    return ActivationStore(tmp_path / "one.zarr"), NormStats.load(tmp_path / "one.safetensors")


def test_a_three_shard_store_is_the_one_worker_store_row_for_row(tmp_path):
    one, one_stats = _one_worker_store(tmp_path)
    s = _settings(tmp_path, shards=3)
    src = s.sources[0]
    logs = []
    out = pipeline.build_activations(s, src, log=logs.append)
    merged = ActivationStore(pipeline.source_paths(s, src).store("train"))
    assert out["train"]["shards"] == 3 and any("merged from 3 shards" in m for m in logs), logs
    assert out["version"] == one.attrs["version"]  # shards enter no data version
    # the same rows in the same order (so the same multiset), the same provenance, attrs and chunk checksums
    np.testing.assert_array_equal(merged.rows(), one.rows())
    for name in PROVENANCE:
        np.testing.assert_array_equal(merged.provenance(name), one.provenance(name))
    skip = {"tokens_per_s"}
    assert {k: v for k, v in merged.attrs.items() if k not in skip} == {k: v for k, v in one.attrs.items() if k not in skip}
    assert merged.verify() == [] and merged.n_rows >= s.store.max_tokens
    # the shard stores are gone once merged; the norm stats over the merged store are the one-worker stats, exactly
    assert not list((pipeline.source_paths(s, src).activations_dir / "shards").glob("*.zarr"))
    pipeline.build_norm_stats(s, src)
    stats = NormStats.load(pipeline.source_paths(s, src).norm_stats)
    assert stats.n == one_stats.n
    np.testing.assert_array_equal(stats.mean, one_stats.mean)
    np.testing.assert_array_equal(stats.var, one_stats.var)


def test_a_crashed_shard_reruns_alone_and_resumes(tmp_path, monkeypatch):
    one, _ = _one_worker_store(tmp_path)
    s = _settings(tmp_path, shards=2)
    src = s.sources[0]
    paths = pipeline.source_paths(s, src)
    first = pipeline.build_activation_shard(s, src, 0)
    assert first["doc_range"][0] == 0 and first["rows"] > 0
    # shard 1 dies after its first window (16 forward passes of one document)
    real, calls = glp.data.activations.forward_batch, []

    def dying(*args, **kwargs):
        calls.append(1)
        if len(calls) > 16:
            raise RuntimeError("worker lost")
        return real(*args, **kwargs)

    monkeypatch.setattr(glp.data.activations, "forward_batch", dying)
    with pytest.raises(RuntimeError, match="worker lost"):
        pipeline.build_activation_shard(s, src, 1)
    monkeypatch.setattr(glp.data.activations, "forward_batch", real)
    logs = []
    pipeline.build_activations(s, src, log=logs.append)
    assert any("train-0-of-2.zarr: already extracted" in m for m in logs), logs  # shard 0 is not redone
    assert any("resuming train-1-of-2.zarr after" in m for m in logs), logs  # shard 1 resumes its own partial
    np.testing.assert_array_equal(ActivationStore(paths.store("train")).rows(), one.rows())


def test_more_shards_than_windows_fail_naming_the_limit(tmp_path):
    s = _settings(tmp_path, shards=5)
    pipeline.build_source_lm(s)
    with pytest.raises(ShardError, match="store.shards=5 but .* only 4 extraction windows"):
        pipeline.build_activation_shard(s, s.sources[0], 0)


def test_bfloat16_raw_shards_merge_into_a_bfloat16_raw_store(tmp_path):
    from glp.data.shards import merge_shards
    from glp.data.store import StoreWriter

    rng = np.random.default_rng(0)
    bits = (rng.standard_normal((100, 8), dtype=np.float32).view(np.uint32) >> 16).astype(np.uint16)
    paths = []
    for k, (lo, hi) in enumerate([(0, 40), (40, 100)]):
        w = StoreWriter(tmp_path / f"s{k}.zarr", 8, 16, {"model": "m", "shard": k, "shards": 2, "doc_range": [lo, hi]},
                        row_dtype="bfloat16", codec="raw")
        w.append(bits[lo:hi], np.arange(lo, hi), np.ones(hi - lo, np.int32), np.zeros(hi - lo, np.int32))
        w.commit(hi)
        paths.append(w.close())
    merged = ActivationStore(merge_shards(paths, tmp_path / "all.zarr"))
    assert (merged.row_dtype, merged.codec) == ("bfloat16", "raw") and merged.verify() == []
    np.testing.assert_array_equal(merged.read_chunk("acts", 0), bits[:16])
    np.testing.assert_array_equal(merged.provenance("doc_id"), np.arange(100))
