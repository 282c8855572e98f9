"""The distributed executor for real: `dagster asset materialize` with run config only, a Dask LocalCluster of two
worker processes started by the run itself, running the sharded extraction graph (corpus → source_lm → two shard
assets → activations)."""

import json

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from glp.data.store import ActivationStore
from tests.glp_dagster.conftest import TINY
from tests.glp_dagster.test_cli import _dagster, _env

RUN_CONFIG = """\
execution:
  config:
    dask:
      cluster:
        local: {n_workers: 2, threads_per_worker: 1, processes: true, dashboard_address: null}
"""


@pytest.mark.slow  # 16 s of a 3-minute default suite: two dask worker processes start and import the chain;
# the shard assets themselves run in the default suite (test_shard_assets.py)
def test_a_dask_cluster_of_two_worker_processes_runs_the_shards_from_run_config_alone(tmp_path):
    env = _env(tmp_path)
    env["GLP_STORE"] = json.dumps({**TINY["store"], "root": str(tmp_path / "store"), "batch_size": 1, "shards": 2})
    (tmp_path / "run.yaml").write_text(RUN_CONFIG)
    r = _dagster("asset", "materialize", "-m", "glp_dagster.definitions", "--select", "+key:activations",
                 "--partition", "builtin/L1", "-c", str(tmp_path / "run.yaml"), env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(env["DAGSTER_HOME"])) as instance:
        (run,) = instance.get_runs()
        assert run.is_success
        starts = {e.dagster_event.step_key: e.dagster_event.pid
                  for e in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.STEP_START)}
        (run_start,) = instance.all_logs(run.run_id, of_type=dg.DagsterEventType.RUN_START)
    assert {"activations_shard_0", "activations_shard_1", "activations"} <= set(starts), starts
    # steps ran as Dask tasks in the cluster's worker processes: two of them, neither the run's own process
    assert len(set(starts.values())) == 2 and run_start.dagster_event.pid not in starts.values(), starts
    store = ActivationStore(tmp_path / "store/builtin/L1/activations/train.zarr")
    assert store.verify() == [] and store.n_rows >= TINY["store"]["max_tokens"]


def test_the_default_run_stays_in_one_process(settings):
    from glp_dagster.definitions import build_definitions

    job = build_definitions(settings).resolve_implicit_global_asset_job_def()
    assert job.executor_def.name == "glp_executor"
    assert job.executor_def.config_field.default_value == {"in_process": {}}
