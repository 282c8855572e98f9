"""Reliability of the Dagster layer (issue 9): a check never errors, two runs never write one artifact at once, and
the instance config `make` installs enables run monitoring."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import dagster as dg
import pytest

from glp import pipeline
from glp.artifacts import holder_path, sha256_file
from glp.config import Settings
from glp_dagster.definitions import build_definitions
from tests.glp.test_artifacts_lock import holding, sigkill
from tests.glp_dagster.conftest import tiny_settings

KEY = "builtin/L1"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def materialized(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the tiny inputs and a store holding everything up to `norm_stats` for builtin/L1."""
    tmp = tmp_path_factory.mktemp("chain")
    defs = build_definitions(tiny_settings(tmp))
    res = dg.materialize(list(defs.assets), selection="*norm_stats", instance=dg.DagsterInstance.ephemeral(),
                         partition_key=KEY, resources=defs.resources)
    assert res.success
    return tmp


@pytest.fixture()
def chain(materialized: Path, tmp_path: Path):
    """This test's own copy of the materialized folder (it may break it) and its settings."""
    shutil.copytree(materialized, tmp_path / "w")
    s = tiny_settings(tmp_path / "w")
    return s, pipeline.source_paths(s, s.sources[0])


def run_checks_only(s: Settings, *assets: str) -> dg.ExecuteInProcessResult:
    """Execute the checks of `assets` for KEY without materializing anything. A selection of checks alone has no
    partitions definition for `partition_key=` to validate against, so the partition is given as its run tag."""
    defs = build_definitions(s)
    return dg.materialize(list(defs.assets) + list(defs.asset_checks),
                          selection=dg.AssetSelection.checks_for_assets(*assets), tags={"dagster/partition": KEY},
                          instance=dg.DagsterInstance.ephemeral(), resources=defs.resources, raise_on_error=False)


def failures(res: dg.ExecuteInProcessResult) -> list:
    return [e.step_failure_data.error for e in res.all_events if e.event_type_value == "STEP_FAILURE"]


def test_a_corrupt_artifact_fails_its_checks_with_the_error_as_evidence_and_no_check_crashes(chain):
    s, paths = chain
    chunk = next(f for f in sorted((paths.store("train") / "acts").rglob("*")) if f.is_file() and f.name != "zarr.json")
    # a Blosc frame cut inside its 16-byte header: never decodable (a frame cut in half was sometimes decoded into
    # garbage, caught by the checksum instead, after other tests had run in the same process)
    chunk.write_bytes(chunk.read_bytes()[:8])
    paths.norm_stats.write_bytes(b"\x00garbage, not a safetensors file")

    res = run_checks_only(s, "activations", "norm_stats")

    evals = {e.asset_check_key.name: e for e in res.get_asset_check_evaluations()}
    assert set(evals) == {"activations_finite", "activations_checksums", "activations_row_count",
                          "norm_stats_expectations", "norm_stats_no_outlier_dims"}
    checksums = evals["activations_checksums"]  # a plain failure with evidence: the chunk, its rows, the decoder error
    assert not checksums.passed and "cannot be decoded" in checksums.metadata["first_problems"].value[0]["problem"]
    for name, cause in (("activations_finite", "blosc"), ("norm_stats_expectations", "header"),
                        ("norm_stats_no_outlier_dims", "header")):
        ev = evals[name]
        assert not ev.passed
        error = ev.metadata["error"].value  # "<type>: <message>", the decoder's complaint in it
        assert re.match(r"\w+: .+", error) and cause in error.lower(), error
        assert "traceback" in ev.metadata and "re-materialize it" in ev.description
    assert evals["activations_row_count"].passed  # the provenance arrays are intact: only the broken property fails
    assert not res.get_asset_materialization_events()
    # Steps failed only because blocking checks reported failures (as designed), never because a check raised.
    assert failures(res) and {f.cls_name for f in failures(res)} == {"DagsterAssetCheckFailedError"}


def test_every_asset_check_body_reports_errors_as_failures(settings):
    defs = build_definitions(settings)
    names = {}
    for c in defs.asset_checks:
        fn = c.node_def.compute_fn.decorated_fn
        names[c.node_def.name] = getattr(fn, "reports_errors", False)
    assert len(names) >= 18 and all(names.values()), names


def test_a_second_run_writing_an_artifact_fails_naming_the_first_and_runs_once_it_is_killed(chain):
    s, paths = chain
    defs = build_definitions(s)
    train = paths.store("train")
    before = sha256_file(train / "zarr.json")
    with holding(paths.activations_dir, run_id="run-holder", root=s.store.root) as holder:
        res = dg.materialize(list(defs.assets), selection="activations", instance=dg.DagsterInstance.ephemeral(),
                             partition_key=KEY, resources=defs.resources, raise_on_error=False)
        assert not res.success
        (err,) = failures(res)
        assert (f"`activations` for `builtin/L1` is being written by run run-holder (pid {holder.pid} on "
                in err.message), err.message
        assert "wait for it or stop it" in err.message and "GLP_LOCK_WAIT_S=600" in err.message
        assert not train.with_name("train.zarr.partial").exists()  # nothing adopted, nothing started
        assert sha256_file(train / "zarr.json") == before
        sigkill(holder)

    res = dg.materialize(list(defs.assets), selection="activations", instance=dg.DagsterInstance.ephemeral(),
                         partition_key=KEY, resources=defs.resources)
    assert res.success  # the OS freed the killed holder's lock; its stale record did not stop us
    assert not holder_path(paths.activations_dir, s.store.root).exists()


def test_a_store_being_read_is_not_swapped_under_its_reader_and_a_reader_waits_for_no_writer(chain):
    """Issue 22: re-extracting `activations` while a run trains on them swapped the store under the trainer
    (`TypeError: memoryview: cannot cast view with zeros in shape or strides`). Readers now hold a shared lock."""
    s, paths = chain
    defs = build_definitions(s)
    train = paths.store("train")
    before = sha256_file(train / "zarr.json")
    with holding(paths.activations_dir, asset="glp_prior", run_id="run-reader", root=s.store.root, shared=True) as r:
        res = dg.materialize(list(defs.assets), selection="activations", instance=dg.DagsterInstance.ephemeral(),
                             partition_key=KEY, resources=defs.resources, raise_on_error=False)
        (err,) = failures(res)
        assert f"`activations` for `builtin/L1` is being read by `glp_prior` in run run-reader (pid {r.pid}" \
            in err.message, err.message
        assert sha256_file(train / "zarr.json") == before  # the store the reader uses is untouched
        # another reader is not held up by the first
        assert dg.materialize(list(defs.assets), selection="norm_stats", instance=dg.DagsterInstance.ephemeral(),
                              partition_key=KEY, resources=defs.resources).success
    with holding(paths.activations_dir, asset="activations", run_id="run-writer", root=s.store.root):
        (err,) = failures(dg.materialize(list(defs.assets), selection="norm_stats",
                                         instance=dg.DagsterInstance.ephemeral(), partition_key=KEY,
                                         resources=defs.resources, raise_on_error=False))
        assert "`norm_stats` for `builtin/L1` cannot read activations now: it is being written by `activations` " \
               "in run run-writer" in err.message, err.message


def test_a_run_tagged_to_wait_queues_behind_the_writer_and_a_bad_wait_is_a_readable_failure(chain):
    s, paths = chain
    defs = build_definitions(s)

    def run(wait: str) -> dg.ExecuteInProcessResult:
        return dg.materialize(list(defs.assets), selection="norm_stats", instance=dg.DagsterInstance.ephemeral(),
                              partition_key=KEY, resources=defs.resources, raise_on_error=False,
                              tags={"glp/lock_wait_s": wait})

    with holding(paths.norm_stats, root=s.store.root, asset="norm_stats", run_id="run-holder"):
        (err,) = failures(run("1"))
        assert "`norm_stats` for `builtin/L1` is being written by run run-holder" in err.message
        assert "(waited 1 s)" in err.message
    with holding(paths.norm_stats, root=s.store.root, asset="norm_stats", hold_s=3.0):
        assert run("120").success  # the lock came free within the wait
    (err,) = failures(run("soon"))
    assert "run tag glp/lock_wait_s='soon' is not a number of seconds" in err.message
    # without the tag, the `lock_wait_s` setting (GLP_LOCK_WAIT_S) says how long to wait
    patient = build_definitions(s.model_copy(update={"lock_wait_s": 120.0}))
    with holding(paths.norm_stats, root=s.store.root, asset="norm_stats", hold_s=3.0):
        assert dg.materialize(list(patient.assets), selection="norm_stats", instance=dg.DagsterInstance.ephemeral(),
                              partition_key=KEY, resources=patient.resources).success


# ---------------------------------------------------------------- the instance config `make run` / `make dev` install


def test_the_instance_config_loads_with_run_monitoring_enabled(tmp_path, monkeypatch):
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_max_runtime_seconds > 0  # the default launcher's only cure for a kill -9
        assert instance.run_monitoring_max_resume_run_attempts == 0


def test_the_instance_config_turns_off_the_first_visit_newsletter_modal_and_telemetry(tmp_path, monkeypatch):
    """The UI's query `shouldShowNux` is `instance.nux_enabled and not <.nux/nux.yaml seen>` (dagster_graphql)."""
    shutil.copy(ROOT / "dagster.yaml", tmp_path / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with dg.DagsterInstance.get() as instance:
        assert instance.nux_enabled is False and instance.telemetry_enabled is False
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "bare"))
    with dg.DagsterInstance.get() as default:
        assert default.nux_enabled  # without the switch the modal shows on a fresh DAGSTER_HOME


def test_make_installs_the_instance_config_once_and_keeps_local_edits(tmp_path):
    home = tmp_path / "dagster_home"
    target = f"{home}/dagster.yaml"
    subprocess.run(["make", "-s", f"DAGSTER_HOME={home}", target], cwd=ROOT, check=True)
    assert (home / "dagster.yaml").read_text() == (ROOT / "dagster.yaml").read_text()
    (home / "dagster.yaml").write_text("run_monitoring:\n  enabled: false\n")
    subprocess.run(["make", "-s", f"DAGSTER_HOME={home}", target], cwd=ROOT, check=True)
    assert (home / "dagster.yaml").read_text() == "run_monitoring:\n  enabled: false\n"
