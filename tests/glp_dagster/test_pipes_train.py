"""Multi-process DeepSpeed: `glp_prior` with train.world_size = 2 trains on two torchrun ranks (gloo, CPU) launched
through Dagster Pipes, and takes the one-rank steps: the same global batches, t and noise, the gradients averaged."""

import json
import os
import signal
import subprocess
import sys
import time

import dagster as dg
import numpy as np
import psutil
import pytest

from glp import pipeline
from glp_dagster.definitions import build_definitions
from tests.glp_dagster.conftest import tiny_settings

KEY = "builtin/L1"


def one_rank_reference(tmp_path, steps: int, snapshots: int):  # noqa: ANN001, ANN201
    """The tiny chain trained on one rank in this process; its prior moved aside. -> (settings of the same run on 2
    ranks, the one-rank build_prior summary)."""
    train = {**tiny_settings(tmp_path).train.model_dump(mode="json"), "steps": steps, "snapshots": snapshots,
             "checkpoint_every": 10}
    one = tiny_settings(tmp_path, train=train)
    src = one.sources[0]
    pipeline.build_source_lm(one)
    pipeline.build_activations(one, src)
    pipeline.build_norm_stats(one, src)
    ref = pipeline.build_prior(one, src)
    os.rename(pipeline.source_paths(one, src).prior, tmp_path / "prior-one-rank")
    return tiny_settings(tmp_path, train={**train, "world_size": 2}), ref


# in CI (issue 12: "2-rank DeepSpeed matches 1-rank"): two ranks import torch + DeepSpeed, ~1 min on 2 cores
def test_two_torchrun_ranks_through_pipes_match_one_rank_loss_for_loss(tmp_path):
    two, ref = one_rank_reference(tmp_path, steps=30, snapshots=1)
    src = two.sources[0]
    defs = build_definitions(two)
    res = dg.materialize(list(defs.assets), selection=["glp_prior"], instance=dg.DagsterInstance.ephemeral(),
                         partition_key=KEY, resources=defs.resources)
    assert res.success
    meta = res.asset_materializations_for_node("glp_prior")[0].metadata
    assert meta["ranks"].value == 2 and meta["steps"].value == "30"
    exported = json.loads((pipeline.source_paths(two, src).prior / "config.json").read_text())
    losses = np.array(exported["losses"])
    # float32 on both sides; only the gradient reduction differs (gloo's sum of two half-batch means: 2e-7 seen)
    np.testing.assert_allclose(losses, ref["losses"], rtol=1e-5, atol=1e-7)


@pytest.mark.slow  # ~1.5 min: a one-rank reference, a killed two-rank run, its resume
def test_two_ranks_killed_with_sigkill_resume_from_their_checkpoint_to_the_same_losses(tmp_path):
    two, ref = one_rank_reference(tmp_path, steps=200, snapshots=0)
    src = two.sources[0]
    paths = pipeline.source_paths(two, src)
    (tmp_path / "settings.json").write_text(two.model_dump_json())
    # the torchrun command glp_prior runs, started by hand and killed after its first checkpoint
    ranks = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", "2",
         "-m", "glp_dagster.pipes_train", "--settings", str(tmp_path / "settings.json"), "--source", KEY],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(paths.checkpoints.glob("*/step*/manifest.json")):
        assert ranks.poll() is None and time.monotonic() < deadline, "the two ranks ended before any checkpoint"
        time.sleep(0.2)
    # torchrun starts each rank in its own session: kill -9 the launcher and every rank, as a lost machine would
    tree = [psutil.Process(ranks.pid), *psutil.Process(ranks.pid).children(recursive=True)]
    assert len(tree) >= 3, tree
    for proc in tree:
        proc.send_signal(signal.SIGKILL)
    ranks.wait()
    psutil.wait_procs(tree[1:], timeout=30)
    assert not (paths.prior / "model.safetensors").exists()
    defs = build_definitions(two)
    res = dg.materialize(list(defs.assets), selection=["glp_prior"], instance=dg.DagsterInstance.ephemeral(),
                         partition_key=KEY, resources=defs.resources)
    assert res.success
    meta = res.asset_materializations_for_node("glp_prior")[0].metadata
    assert meta["ranks"].value == 2 and int(meta["resumed_from_step"].value) >= 10
    losses = np.array(json.loads((paths.prior / "config.json").read_text())["losses"])
    np.testing.assert_allclose(losses, ref["losses"], rtol=1e-5, atol=1e-7)
