"""A run interrupted during held-out extraction keeps the finished train store; a corrupt or stale one is redone."""

import os

from glp import pipeline
from glp.data.store import ActivationStore
from tests.glp_dagster.conftest import tiny_settings


def _chunk0(store_path):
    return store_path / "acts" / "c" / "0" / "0"


def test_held_out_interruption_keeps_the_train_store_and_corruption_redoes_it(tmp_path):
    s = tiny_settings(tmp_path)
    src = s.sources[0]
    pipeline.build_source_lm(s)
    pipeline.build_activations(s, src)
    paths = pipeline.source_paths(s, src)
    train, heldout = paths.store("train"), paths.store("heldout")
    before = os.stat(_chunk0(train))
    rows = ActivationStore(train).rows()
    # the state a kill during held-out extraction leaves: train published, held-out not
    os.rename(heldout, heldout.with_name(heldout.name + ".partial"))
    logs = []
    out = pipeline.build_activations(s, src, log=logs.append)
    assert any("train.zarr: already extracted for this version" in m for m in logs), logs
    assert out["train"]["seconds"] == 0.0 and out["train"]["rows"] == len(rows)
    after = os.stat(_chunk0(train))
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    assert ActivationStore(heldout).verify() == []
    # a corrupt train store is not kept: it is extracted again, to the same rows
    data = bytearray(_chunk0(train).read_bytes())
    data[len(data) // 2] ^= 0xFF
    _chunk0(train).write_bytes(bytes(data))
    logs.clear()
    pipeline.build_activations(s, src, log=logs.append)
    assert any("chunk problem" in m and "extracting it again" in m for m in logs), logs
    store = ActivationStore(train)
    assert store.verify() == [] and (store.rows() == rows).all()
