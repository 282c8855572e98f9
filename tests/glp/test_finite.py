"""Finite before published (issue 22): a NaN that arrived in a store with a valid checksum is named where it is read
(store, chunk, row, dimension), a store holding one is never kept by a re-materialization, and a training run
whose loss goes non-finite publishes nothing and keeps no checkpoint of the bad steps."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from glp.config import DenoiserConfig, TrainConfig
from glp.data.stats import Normalizer, compute_stats
from glp.data.store import ActivationStore, StoreCorrupt, StoreWriter, _chunk_checksums, _open_group
from glp.pipeline.data import finished_store
from glp.prior.checkpoints import checkpoint_tags
from glp.prior.train import NonFiniteLoss, train_prior


def _store(path, n: int = 256, d: int = 8) -> ActivationStore:
    rows = np.random.default_rng(0).normal(size=(n, d)).astype(np.float32)
    w = StoreWriter(path, d, 64, {"version": "v1", "split": "train"})
    w.append(rows, np.arange(n), np.ones(n, np.int32), np.zeros(n, np.int32))
    w.commit(n)
    return ActivationStore(w.close())


def _nan_with_a_valid_checksum(store: ActivationStore, row: int, dim: int) -> None:
    """Write NaN into one value and record the checksums again: the corruption a checksum alone cannot see."""
    group = _open_group(store.path, "r+")
    group["acts"][row, dim] = np.nan
    sums = dict(group.attrs["checksums"])
    sums.update(_chunk_checksums(group, store.chunk_rows))
    group.attrs["checksums"] = sums


def test_a_nan_with_a_valid_checksum_is_named_by_store_chunk_row_and_dimension(tmp_path):
    store = _store(tmp_path / "train.zarr")
    _nan_with_a_valid_checksum(store, row=70, dim=3)
    store = ActivationStore(store.path)
    assert store.chunk(0).shape == (64, 8)  # the other chunks read as before
    with pytest.raises(StoreCorrupt, match=r"train.zarr/acts chunk 1: row 70 dimension 3 is nan \(1 non-finite "
                                           r"row\(s\) in the chunk\).*re-materialize `activations`"):
        store.rows(0, 256)
    (problem,) = store.verify()
    assert problem["array"] == "acts" and problem["chunk"] == 1 and "row 70 dimension 3" in problem["problem"]
    with pytest.raises(StoreCorrupt, match="row 70 dimension 3"):
        compute_stats(store)  # norm_stats fails naming it, instead of NaN statistics


def test_a_store_holding_a_nan_is_extracted_again_not_kept(tmp_path):
    store = _store(tmp_path / "train.zarr")
    said: list[str] = []
    assert finished_store(store.path, "v1", "train", said.append) is not None  # sound: kept
    _nan_with_a_valid_checksum(store, row=5, dim=0)
    said.clear()
    assert finished_store(store.path, "v1", "train", said.append) is None
    assert "row 5 dimension 0" in said[0] and "extracting it again" in said[0]


def test_a_training_loss_that_goes_non_finite_stops_naming_the_step_and_keeps_no_checkpoint_of_it(tmp_path):
    store = _store(tmp_path / "train.zarr")
    huge = Normalizer(torch.zeros(8), torch.full((8,), 1e-30))  # normalized rows ~1e30: the loss overflows
    cfg = TrainConfig(batch_size=64, epochs=2, checkpoint_every=1)
    with pytest.raises(NonFiniteLoss, match=r"the training loss went (inf|nan) at step 1 \(epoch 0; last finite "
                                            r"loss none\); no prior is published and no checkpoint of it is kept: "
                                            r"the input batch was finite \(max \|x\| .*lower train.lr"):
        train_prior(store, huge, DenoiserConfig(n_blocks=1, time_dim=16), cfg, tmp_path / "ckpt",
                    torch.device("cpu"))
    assert checkpoint_tags(tmp_path / "ckpt") == []


def test_a_nan_arriving_after_the_norm_stats_stops_training_at_the_read_naming_it(tmp_path):
    """Issue 22: after `norm_stats`, the NaN got a NaN prior published over the good one."""
    store = _store(tmp_path / "train.zarr")
    norm = compute_stats(store, with_cov=False).normalizer()  # the stats of the sound store
    _nan_with_a_valid_checksum(store, row=200, dim=7)
    with pytest.raises(StoreCorrupt, match=r"acts chunk 3: row 200 dimension 7 is nan"):
        train_prior(ActivationStore(store.path), norm, DenoiserConfig(n_blocks=1, time_dim=16),
                    TrainConfig(batch_size=64, epochs=1), tmp_path / "ckpt", torch.device("cpu"))
