import json

import dagster as dg
import numpy as np

from glp import pipeline
from glp.config import TrainConfig
from glp_dagster.definitions import build_definitions
from tests.glp_dagster.conftest import TINY, tiny_settings

KEY = "builtin/L1"


def test_steering_and_delta_lm_materialize_after_the_chain_with_passing_checks(tmp_path):
    settings = tiny_settings(tmp_path)  # tiny steer / delta_lm sizes and labelled data from conftest
    defs = build_definitions(settings)
    chain = dg.AssetSelection.assets("steering", "delta_lm").upstream()  # leaves other engineers' assets out
    res = dg.materialize(list(defs.assets) + list(defs.asset_checks), selection=chain,
                         instance=dg.DagsterInstance.ephemeral(), partition_key=KEY, resources=defs.resources)
    assert res.success
    evals = {e.asset_check_key.name: e for e in res.get_asset_check_evaluations()}
    blocking = {"steering_scores_finite", "steering_r0_is_unsteered", "steering_paired_prompts_and_seeds",
                "delta_lm_finite"}
    assert blocking <= set(evals) and all(evals[c].passed for c in blocking), evals
    warnings = {"steering_direction_reads_sentiment", "steering_concept_rises_with_r"}  # a random tiny LM may fail
    assert warnings <= set(evals) and all(evals[c].severity == dg.AssetCheckSeverity.WARN for c in warnings)
    assert "auc_ci_low" in evals["steering_direction_reads_sentiment"].metadata

    meta = res.asset_materializations_for_node("steering")[0].metadata
    assert meta["continuations_per_setting"].value == 4 and meta["passes_per_token"].value == 2
    assert "data:image/png;base64" in meta["pareto_full"].value and "| glp | 2 |" in meta["report"].value
    assert meta["pareto"].value.startswith("![chart](<data:image/svg+xml,") and len(meta["pareto"].value) < 1000
    assert 0 <= meta["direction_auc_heldout"].value <= 1 and meta["judge_accuracy_heldout"].value > 0.5
    root = pipeline.source_paths(settings, settings.sources[0]).root
    rep = json.loads((root / "steering.json").read_text())
    modes = ("raw", "glp", "glp@0.2", "gated")  # steer.post: none, sdedit (main + extra t_start), gated
    assert {(r["mode"], r["r"]) for r in rep["rows"]} == {(m, r) for m in modes for r in (-2.0, 0.0, 2.0)}
    cal = rep["gate_calibration"]
    assert cal["n_calibration"] == cal["n_check"] > 0 and rep["gate"]["threshold"] < rep["gate"]["full"]
    assert meta["gated"].value.startswith("Gated SDEdit edits") and meta["gated"].value in meta["report"].value
    # the fluency trend: the Gaussian prior, the mid-training snapshots (train.snapshots) and the final prior
    trend, n_snap = rep["fluency_trend"], TrainConfig().snapshots
    labels = [p["label"] for p in trend["points"]]
    assert labels[0] == "Gaussian" and labels[-1] == "final" and len(labels) == n_snap + 2
    assert all(np.isfinite(p["cost"]) for p in trend["points"]) and "slope" in trend["fit"]
    assert meta["fluency_trend"].value.startswith("Fluency cost of SDEdit")
    assert "data:image/png;base64" in meta["fluency_trend_full"].value
    assert "steering_gate_hits_its_false_positive_rate" in evals
    assert rep["frontier"]["statement"] == meta["frontier"].value and meta["frontier"].value in meta["report"].value
    assert rep["prompts"] == ["The cat", "The cat", "Rain fell on", "Rain fell on"]  # two samples each
    assert (root / "steering_pareto.png").read_bytes()[:4] == b"\x89PNG"

    # the README's headline table, its verdicts read from the reports' CIs
    from glp.summary import headline_markdown

    head = {line.split(" | ")[0].removeprefix("| "): line for line in
            headline_markdown(settings, settings.sources[0]).splitlines()[2:]}
    steer = head["steering (post-processing the steered activation)"]
    lowers = any(p["d_nll_ci"][1] < 0 for ps in [rep["paired"], rep["paired_gated"], *rep["paired_t_start"].values()]
                 for p in ps)
    assert ("| yes: lowers NLL somewhere |" in steer) == lowers and "SDEdit t = 0.2:" in steer
    dl = json.loads((root / "delta_lm.json").read_text())
    sae_ci = dl["paired"]["glp_minus_sae"]["ci"]
    assert head["ΔLM (CE increase when the layer is replaced, nats)"].split(" | ")[-1].startswith(
        "yes" if sae_ci[1] < 0 else "no")

    # the checks can fail: corrupt the report, run the steering checks alone
    raw0 = next(x for x in rep["settings"] if x["mode"] == "raw" and x["r"] == 0.0)
    raw0["tokens"][0][0] += 1
    rep["settings"][-1]["nll"][0] = float("nan")
    rep["direction"]["auc_ci"] = [0.45, 0.7]
    rep["concept_trend"].update(spearman_r_vs_concept_raw=-0.2, spearman_ci=[-0.5, 0.1])
    (root / "steering.json").write_text(json.dumps(rep))
    again = dg.materialize(list(defs.assets) + list(defs.asset_checks), selection=dg.AssetSelection.checks_for_assets(
        "steering"), instance=dg.DagsterInstance.ephemeral(), tags={"dagster/partition": KEY}, resources=defs.resources,
        raise_on_error=False)
    failed = {e.asset_check_key.name for e in again.get_asset_check_evaluations() if not e.passed}
    assert failed == {"steering_scores_finite", "steering_r0_is_unsteered"} | warnings

    dmeta = res.asset_materializations_for_node("delta_lm")[0].metadata
    assert dmeta["delta_ce_mean_ablation (nats/token)"].value > 0 and dmeta["prior_heldout_loss (MSE/dim)"].value > 0
    assert json.loads((root / "delta_lm.json").read_text())["n_tokens"] == 64


def test_steering_alone_on_a_fresh_instance_names_the_plus_selection(tmp_path):
    defs = build_definitions(tiny_settings(tmp_path))
    res = dg.materialize(list(defs.assets), selection="steering", instance=dg.DagsterInstance.ephemeral(),
                         partition_key=KEY, resources=defs.resources, raise_on_error=False)
    assert not res.success
    failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
    assert "--select '+key:steering'" in failure.step_failure_data.error.message


def test_steering_config_enters_the_code_version_of_steering_only(tmp_path):
    def versions(settings):
        graph = build_definitions(settings).resolve_asset_graph()
        return {k.to_user_string(): graph.get(k).code_version for k in graph.get_all_asset_keys()}

    a = versions(tiny_settings(tmp_path))
    b = versions(tiny_settings(tmp_path, steer={**TINY["steer"], "max_new_tokens": 7}))
    assert {k for k in a if a[k] != b[k]} == {"steering"}


def test_glp_steer_prints_raw_and_glp_continuations_side_by_side(tmp_path, monkeypatch, capsys):
    from glp.cli import main

    settings = tiny_settings(tmp_path)
    defs = build_definitions(settings)
    assert dg.materialize(list(defs.assets), selection="+key:glp_prior", instance=dg.DagsterInstance.ephemeral(),
                          partition_key=KEY, resources=defs.resources).success
    for key, value in settings.model_dump(mode="json").items():  # the CLI reads its settings from GLP_* env
        monkeypatch.setenv(f"GLP_{key.upper()}", value if isinstance(value, str) else json.dumps(value))
    assert main(["steer", "--partition", KEY, "--r", "-1.5", "--prompt", "The cat", "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "raw steering" in out and "with GLP" in out and "r=-1.5" in out
