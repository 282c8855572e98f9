"""The `ood` asset on the tiny chain: every off-manifold set scored, checks that pass and can fail, and `glp score`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg

from glp import pipeline
from glp_dagster.definitions import build_definitions
from tests.glp_dagster.conftest import tiny_settings

KEY = "builtin/L1"
ROOT = Path(__file__).resolve().parents[2]


def _settings_env(settings, tmp_path: Path) -> dict[str, str]:  # noqa: ANN001 (Settings)
    """These exact settings as GLP_* variables (one JSON value per section), for the CLI in a subprocess."""
    dist = {"MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("GLP_") and k not in dist}
    for k, v in settings.model_dump(mode="json", exclude_none=True).items():
        env[f"GLP_{k.upper()}"] = json.dumps(v) if isinstance(v, (dict, list)) else str(v)
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    return env


def test_ood_materializes_with_every_set_scored_and_its_checks_pass_then_fail_on_a_broken_report(tmp_path):
    settings = tiny_settings(tmp_path)
    defs = build_definitions(settings)
    chain = dg.AssetSelection.assets("ood").upstream()
    res = dg.materialize(list(defs.assets) + list(defs.asset_checks), selection=chain,
                         instance=dg.DagsterInstance.ephemeral(), partition_key=KEY, resources=defs.resources)
    assert res.success
    evals = {e.asset_check_key.name: e for e in res.get_asset_check_evaluations()}
    assert evals["ood_scores_finite"].passed and evals["ood_sets_complete"].passed, evals
    assert {"ood_null_set_is_chance", "ood_glp_detects_noise"} <= set(evals)  # warnings: a tiny prior may fail them

    root = pipeline.source_paths(settings, settings.sources[0]).root
    rep = json.loads((root / "ood.json").read_text())
    names = [x["name"] for x in rep["sets"]]
    assert names == ["real (other held-out rows)", *(f"steered r={r:g}" for r in (0.25, 0.5, 1, 2)),
                     *(f"noised r={r:g}" for r in (0.25, 0.5, 1, 2)), "dims shuffled", "layer 0", "tweets",
                     "shuffled words"]
    from glp.data.store import ActivationStore

    n_heldout = ActivationStore(root / "activations" / "heldout.zarr").n_rows
    assert rep["n_rows"] == n_heldout // 3 and rep["other_layers"] == [0]  # real, synthetic base, null: disjoint
    for x in rep["sets"]:
        assert set(x["auroc"]) == {"glp", "sdedit", "mahalanobis", "sae", "norm"} and set(x["diff"]) == {
            "sdedit", "mahalanobis", "sae", "norm"}
        assert all(0 <= v <= 1 for v in x["auroc"].values()) and x["n_off"] >= 20
    # steering by twice the mean norm moves every row far: the norm alone tells them apart
    assert next(x for x in rep["sets"] if x["name"] == "steered r=2")["auroc"]["norm"] > 0.9
    meta = res.asset_materializations_for_node("ood")[0].metadata
    assert meta["auroc_glp"].value.startswith("![chart](<data:image/svg+xml,") and len(meta["auroc_glp"].value) < 1000
    assert "| steered r=2 |" in meta["report"].value and "data:image/png;base64" in meta["roc_full"].value
    assert meta["headline"].value == rep["headline"] and rep["headline"].startswith("GLP diffusion score beats")
    assert (root / "ood_roc.png").read_bytes()[:4] == (root / "ood_hist.png").read_bytes()[:4] == b"\x89PNG"

    # `glp score` on the same store: one line per token, flagged against the held-out reference
    env = _settings_env(settings, tmp_path)
    out = subprocess.run([sys.executable, "-m", "glp.cli", "score", "The cat sat on the mat", "--json"], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    scored = json.loads(out.stdout)
    assert len(scored["tokens"]) == len(scored["scores"]) == len(scored["percentile"]) > 0
    assert "".join(scored["tokens"]).strip().startswith("The") and scored["n_reference"] == rep["n_rows"]
    assert abs(scored["threshold"] - rep["glp_heldout_quantiles"]["0.95"]) < 1e-6  # one reference, two readers
    table = subprocess.run([sys.executable, "-m", "glp.cli", "score", "The cat sat on the mat"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=300)
    assert table.returncode == 0 and "tokens flagged off-manifold" in table.stdout, table.stderr

    # the checks can fail: a NaN AUROC and a missing set
    rep["sets"][1]["auroc"]["glp"] = float("nan")
    del rep["sets"][-1]
    (root / "ood.json").write_text(json.dumps(rep))
    again = dg.materialize(list(defs.assets) + list(defs.asset_checks), selection=dg.AssetSelection.checks_for_assets(
        "ood"), instance=dg.DagsterInstance.ephemeral(), tags={"dagster/partition": KEY}, resources=defs.resources,
        raise_on_error=False)
    evals = {e.asset_check_key.name: e for e in again.get_asset_check_evaluations()}
    assert not evals["ood_scores_finite"].passed and not evals["ood_sets_complete"].passed
