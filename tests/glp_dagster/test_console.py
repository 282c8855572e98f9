"""What `make run` prints: the real `dagster asset materialize` CLI, run as the Makefile runs it (its PYTHONWARNINGS,
`-c glp_dagster/console.yaml`, the instance template dagster.yaml), on the tiny chain up to `probes`."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.instance.ref import InstanceRef

from glp.progress import is_progress
from tests.glp_dagster.conftest import TINY, tiny_settings

ROOT = Path(__file__).resolve().parents[2]
PARTITION = "builtin/L1"
# the chain up to probes (a subset of the default chain that still trains a prior and an SAE), in run order
ASSETS = ["corpus", "labelled", "source_model", "source_lm", "probe_tasks", "activations", "norm_stats", "glp_prior",
          "sae", "probes"]
LINE = re.compile(
    r"\d\d:\d\d:\d\d ("
    r"run \w{8} started for builtin/L1 \(.*\)"
    r"|run \w{8} succeeded in .*: \d+ assets materialized, \d+ checks passed(, \d+ failed)?"
    r"|start \w+( \.\.\. done in [\d.]+ s)?"
    r"|done  \w+ in .+"
    r"|check \w+ on \w+ FAILED .*"  # the tiny chain's numbers may fail a non-blocking check: shown, one line
    r"|  \S.*"  # a step's own INFO message, indented
    r")")


def _makefile_warnings() -> str:
    """The PYTHONWARNINGS that `make run` exports (one place says it: the Makefile)."""
    m = re.search(r"^run: export PYTHONWARNINGS = (.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "the Makefile's run target no longer exports PYTHONWARNINGS"
    return m.group(1)


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """Tiny settings as GLP_* variables, the source LM trained beforehand (its step then only checks it), and a
    DAGSTER_HOME holding the instance template, as `make run` copies it."""
    tmp = tmp_path_factory.mktemp("console")
    s = tiny_settings(tmp)
    from glp import pipeline

    pipeline.build_source_lm(s)
    dist = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLP_") and k not in dist}
    env |= {f"GLP_{k.upper()}": json.dumps(v) if isinstance(v, dict) else v for k, v in TINY.items()}
    env |= {
        "GLP_STORE": json.dumps({**TINY["store"], "root": str(tmp / "store")}),
        "GLP_CORPUS__PATH": str(tmp / "corpus"),
        "GLP_SOURCES": json.dumps([{"model": "builtin", "layer": 1}]),
        "GLP_PROBE_TASKS": json.dumps(s.probe_tasks.model_dump(mode="json")),
        "GLP_STEER": json.dumps(s.steer.model_dump(mode="json")),
        "DAGSTER_HOME": str(tmp / "dagster_home"),
        "PYTHONWARNINGS": _makefile_warnings(),
        "TOKENIZERS_PARALLELISM": "false",
        "COLUMNS": "200",
        # one thread per op: the tiny chain's small ops run ~50x slower when two threads share cores with other jobs
        "OMP_NUM_THREADS": "1",
    }
    (tmp / "dagster_home").mkdir()
    shutil.copy(ROOT / "dagster.yaml", tmp / "dagster_home" / "dagster.yaml")
    return tmp, env


def _materialize(select: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dagster")
    r = subprocess.run([str(exe), "asset", "materialize", "-m", "glp_dagster.definitions", "--select", select,
                        "--partition", PARTITION, "-c", "glp_dagster/console.yaml"],
                       cwd=ROOT, env=env, capture_output=True, timeout=300)
    # decoded by hand: text=True would turn the progress lines' `\r` into newlines
    return subprocess.CompletedProcess(r.args, r.returncode, r.stdout.decode(), r.stderr.decode())


def _screen(out: str) -> list[str]:
    """The lines a terminal shows at the end: each `\\r` redraws its line (progress), so the text after the last
    one stays (blank when the progress line was erased)."""
    return [line.rsplit("\r", 1)[-1].rstrip() for line in out.split("\n") if line.rsplit("\r", 1)[-1].strip()]


def test_a_run_prints_a_line_per_step_start_and_end_progress_in_place_and_keeps_every_event(home):
    tmp, env = home
    r = _materialize("+key:probes", env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    for noise in ("DEBUG", "Warning", "warn(", "Telemetry", "indexing errors", "it/s]", "Traceback"):
        assert noise not in out, (noise, out[-3000:])
    screen = _screen(out)
    odd = [line for line in screen if not LINE.fullmatch(line)]
    assert not odd, odd
    for asset in ASSETS:  # each asset step: a start line and an end (on the same line when nothing came between)
        assert sum(line.endswith(f"start {asset}") or f"start {asset} ... done in" in line for line in screen) == 1
        assert sum(f"start {asset} ... done in" in line or f"done  {asset} in" in line for line in screen) == 1
    assert len(screen) <= 2 * len(ASSETS) + 8, screen
    assert "10 assets materialized" in screen[-1]
    # progress is drawn in place: the per-task probe lines are there, after `\r`, and never end a line of their own
    drawn = [part for line in out.split("\n") for part in line.split("\r")[1:] if part.strip()]
    assert any(is_progress(p) and "probe tasks: 2/2 task (100%)" in p for p in drawn), drawn
    assert not any(is_progress(line) for line in screen)
    # the full log stays in Dagster: DEBUG events and every progress message are in the event log
    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp / "dagster_home"))) as instance:
        run = instance.get_runs(limit=1)[0]
        logs = instance.all_logs(run.run_id)
    kinds = {e.dagster_event.event_type_value for e in logs if e.dagster_event}
    assert {"STEP_START", "STEP_SUCCESS", "ASSET_MATERIALIZATION", "ASSET_CHECK_EVALUATION"} <= kinds
    messages = [e.user_message for e in logs if not e.dagster_event]
    assert sum("probe tasks: " in m for m in messages) == 2, messages


def test_a_failed_step_prints_its_message_once_and_names_what_did_not_run(home):
    tmp, env = home
    fresh = {**env, "GLP_STORE": json.dumps({**TINY["store"], "root": str(tmp / "empty_store")})}
    r = _materialize("key:activations+", fresh)  # activations without its upstream: a user error, said clearly
    out = r.stdout + r.stderr
    assert r.returncode != 0
    failed = [line for line in _screen(out) if " FAILED activations: " in line]
    assert len(failed) == 1 and "needs `source_lm`, which is not materialized" in failed[0], out[-3000:]
    assert "Stack Trace" not in out and "DEBUG" not in out
    assert re.search(r"not run, as an upstream step failed: \d+ steps \(assets: norm_stats", out), out[-3000:]
