"""The README's command, run for real through the dagster CLI (guards STACK.md gotcha 2: antlr4 vs dvc)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.glp_dagster.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path) -> dict[str, str]:
    from tests.conftest import write_tiny_corpus

    write_tiny_corpus(tmp_path / "corpus")
    # drop our settings and the single-process torch.distributed env earlier tests set in this process
    dist = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLP_") and k not in dist}
    env |= {f"GLP_{k.upper()}": json.dumps(v) if isinstance(v, dict) else v for k, v in TINY.items()}
    env["GLP_STORE"] = json.dumps({**TINY["store"], "root": str(tmp_path / "store")})
    env["GLP_CORPUS__PATH"] = str(tmp_path / "corpus")
    env["GLP_SOURCES"] = json.dumps([{"model": "builtin", "layer": 1}])
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    (tmp_path / "dagster_home").mkdir()
    return env


def _dagster(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("dagster")
    return subprocess.run([str(exe), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _materialization_counts(home: Path) -> dict[str, int]:
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        names = ["corpus", "source_lm", "activations", "norm_stats", "glp_prior", "prior_eval"]
        return {n: instance.fetch_materializations(dg.AssetKey(n), limit=100).records.__len__() for n in names}


@pytest.mark.slow  # ~22 s: two CLI runs; CI keeps the CLI run of test_console and the in-process chain of test_assets
def test_cli_materializes_the_whole_chain_then_reruns_one_layer_up(tmp_path):
    env = _env(tmp_path)
    # fresh instance: '+key:prior_eval' (new syntax) = prior_eval and all its ancestors
    r = _dagster("asset", "materialize", "-m", "glp_dagster.definitions", "--select", "+key:prior_eval",
                 "--partition", "builtin/L1", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "ord() expected" not in r.stderr
    report = json.loads((tmp_path / "store/builtin/L1/prior_eval.json").read_text())
    assert report["heldout_loss_mean"] > 0
    # upstream stored: legacy '+prior_eval' recomputes prior_eval and its parent glp_prior only
    r = _dagster("asset", "materialize", "-m", "glp_dagster.definitions", "--select", "+prior_eval",
                 "--partition", "builtin/L1", env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    counts = _materialization_counts(tmp_path / "dagster_home")
    assert counts == {"corpus": 1, "source_lm": 1, "activations": 1, "norm_stats": 1, "glp_prior": 2, "prior_eval": 2}


def test_invalid_config_stops_the_code_location_naming_the_field(tmp_path):
    env = _env(tmp_path) | {"GLP_TRAIN__LR": "-1"}
    r = _dagster("definitions", "validate", "-m", "glp_dagster.definitions", env=env)
    assert r.returncode != 0
    assert "train.lr" in r.stdout + r.stderr


def test_the_default_code_location_validates(tmp_path):
    env = _env(tmp_path)
    env = {k: v for k, v in env.items() if not k.startswith("GLP_")}  # the shipped defaults
    r = _dagster("definitions", "validate", "-m", "glp_dagster.definitions", env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
