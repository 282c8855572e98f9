"""The default chain on the real corpus and builtin LM, as `make run` does it (slow: run with `make test-slow`)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_default_source_prior_beats_both_baselines(tmp_path):
    if not (ROOT / "assets/datasets/corpus/manifest.json").is_file():
        pytest.skip("prepare the corpus first: make data")
    dist = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLP_") and k not in dist}
    env |= {"DAGSTER_HOME": str(tmp_path), "GLP_STORE__ROOT": str(ROOT / "assets/store")}
    exe = str(Path(sys.executable).with_name("dagster"))
    r = subprocess.run([exe, "asset", "materialize", "-m", "glp_dagster.definitions", "--select", "*",
                        "--partition", "builtin/L1"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-4000:]
    rep = json.loads((ROOT / "assets/store/builtin/L1/prior_eval.json").read_text())
    assert rep["heldout_loss_mean"] < rep["gaussian_baseline_loss_mean"]
    assert rep["fd_glp"] < rep["fd_diag_gaussian"]
