import json

import numpy as np
import pytest
import torch

from glp.config import DenoiserConfig, SteerConfig
from glp.prior.denoiser import GLPDenoiser
from glp.ci import bootstrap_ci
from glp.prior.flow import project_on_manifold, sample
from glp.uses.judges import fit_sentiment_judge
from glp.prior.manifold import Gate
from glp.data.lm import capture_residual
from glp.prior import Prior
from glp.data.stats import Normalizer
from glp.uses.steer_report import (concept_rises, pareto_figure, pareto_inline, pareto_png, r0_matches_unsteered,
                                  steering_markdown)
from glp.uses.direction import default_prompts, diffmean_direction, direction_auc, first_sentence, movie_snippets, sentiment_direction
from glp.uses.steer import degeneration_point, frontier, steering_report
from glp.uses.generate import encode, generate, newest_position_hook, prefill, steer_edit
from glp.prior.manifold import sdedit, sdedit_levels, solver_passes
from tests.glp_dagster.conftest import write_tiny_labelled

LAYER = 1


def tiny_prior(d: int, seed: int = 0) -> Prior:
    torch.manual_seed(seed)
    den = GLPDenoiser(d, DenoiserConfig(n_blocks=1, time_dim=16, skip="none")).eval()  # a random, non-zero velocity
    return Prior(den, Normalizer(torch.randn(d) * 0.1, torch.rand(d) + 0.5), {"denoiser": {"d_model": d}})


def prompt_ids(lm, n=3):
    return [encode(lm, t) for t in ["The cat sat", "A happy child plays in the", "Rain"][:n]]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return write_tiny_labelled(tmp_path_factory.mktemp("labelled"))


def test_hook_adds_exactly_alpha_w_at_the_newest_position_only(tiny_lm):
    ids = torch.tensor([encode(tiny_lm, "The cat sat on the mat")])
    w = torch.nn.functional.normalize(torch.randn(tiny_lm.d_model), dim=0)
    alpha = 3.5
    with torch.inference_mode(), capture_residual(tiny_lm, LAYER) as box:
        tiny_lm.model(input_ids=ids)
        clean = box["acts"].clone()
        with newest_position_hook(tiny_lm.block(LAYER), steer_edit(w, alpha)):
            # the capture hook was registered first, so it sees the block output before the edit: read the edit
            # from a hook registered after it instead
            with capture_residual(tiny_lm, LAYER) as after:
                tiny_lm.model(input_ids=ids)
    diff = after["acts"] - clean  # (1, T, d)
    torch.testing.assert_close(diff[0, -1], alpha * w, rtol=0, atol=1e-5)
    assert torch.equal(diff[0, :-1], torch.zeros_like(diff[0, :-1]))


def test_hook_is_removed_after_the_context(tiny_lm):
    block = tiny_lm.block(LAYER)
    before = len(block._forward_hooks)  # transformers may keep hooks of its own
    with newest_position_hook(block, lambda a: a + 1):
        assert len(block._forward_hooks) == before + 1
    assert len(block._forward_hooks) == before


@pytest.mark.parametrize("decoding", ["greedy", "sample"])
def test_r0_reproduces_plain_generation_token_for_token(tiny_lm, decoding):
    ids = prompt_ids(tiny_lm)  # different lengths: left padding is exercised
    w = torch.nn.functional.normalize(torch.randn(tiny_lm.d_model), dim=0)
    plain = generate(tiny_lm, ids, 8, decoding, 0.9, seed=4)
    pre = prefill(tiny_lm, ids)  # one prefix shared by several settings, as in the report
    steered = generate(tiny_lm, ids, 8, decoding, 0.9, seed=4, layer=LAYER, edit=steer_edit(w, 50.0), prefix=pre)
    steered0 = generate(tiny_lm, ids, 8, decoding, 0.9, seed=4, layer=LAYER, edit=steer_edit(w, 0.0), prefix=pre)
    assert steered0 == plain and steered != plain
    assert generate(tiny_lm, ids, 8, decoding, 0.9, seed=4, prefix=pre) == plain  # the prefix was rewound
    assert all(len(row) == 8 for row in plain)


def test_batched_left_padded_generation_matches_one_prompt_at_a_time(tiny_lm):
    ids = prompt_ids(tiny_lm)
    batched = generate(tiny_lm, ids, 6, "greedy")
    assert batched == [generate(tiny_lm, [p], 6, "greedy")[0] for p in ids]


def test_a_one_token_prompt_is_steered_at_its_token_never_at_bos(tiny_lm):
    prompt = encode(tiny_lm, "Rain")[:2]  # [BOS, one token]
    seen = []

    def spy(a):
        seen.append(a.clone())
        return a

    generate(tiny_lm, [prompt], 3, layer=LAYER, edit=spy)
    with torch.inference_mode(), capture_residual(tiny_lm, LAYER) as box:
        tiny_lm.model(input_ids=torch.tensor([prompt]))
    bos, tok = box["acts"][0, 0], box["acts"][0, 1]
    assert len(seen) == 3 and all(a.shape == (1, tiny_lm.d_model) for a in seen)  # one position per forward
    torch.testing.assert_close(seen[0][0], tok, rtol=1e-4, atol=1e-4)  # the first edit is the prompt's token
    assert all(not torch.allclose(a[0], bos, atol=1e-3) for a in seen)
    with pytest.raises(ValueError, match="after BOS"):
        generate(tiny_lm, [[tiny_lm.bos_id]], 3, layer=LAYER, edit=spy)


def test_sdedit_from_t0_is_the_identity(tiny_lm):
    prior = tiny_prior(8)
    a = torch.randn(5, 8) * 3
    torch.testing.assert_close(sdedit(prior, a, t_start=0.0), a, atol=1e-5, rtol=1e-5)
    out, passes = project_on_manifold(prior.denoiser, a, t_start=1e-9, return_passes=True)
    assert passes == 0 and torch.allclose(out, a, atol=1e-6)


def test_sdedit_from_t1_is_a_sample_whatever_the_input():
    prior = tiny_prior(8)
    ref = prior.normalizer.denormalize(sample(prior.denoiser, 5, 8, 20, generator=torch.Generator().manual_seed(2)))
    for a in (torch.zeros(5, 8), torch.randn(5, 8) * 100):
        out = sdedit(prior, a, t_start=1.0, steps=20, generator=torch.Generator().manual_seed(2))
        torch.testing.assert_close(out, ref)


def test_solvers_share_the_path_and_count_passes():
    prior = tiny_prior(8)
    assert len(sdedit_levels(0.5, 20)) - 1 == 10 == solver_passes(0.5, 20, "euler")
    assert solver_passes(0.5, 20, "heun") == solver_passes(0.5, 20, "midpoint") == 20
    a = torch.randn(4, 8)
    outs = {s: sdedit(prior, a, 0.5, 20, s, torch.Generator().manual_seed(0)) for s in ("euler", "heun", "midpoint")}
    # same noise draw, fine grid: the three solvers land close to one another
    assert (outs["heun"] - outs["euler"]).abs().max() < 0.1 and not torch.equal(outs["heun"], outs["euler"])


def test_diffmean_is_the_unit_mean_difference():
    a, b = torch.randn(10, 4) + torch.tensor([3.0, 0, 0, 0]), torch.randn(12, 4)
    w = diffmean_direction(a, b)
    torch.testing.assert_close(w.norm(), torch.tensor(1.0))
    torch.testing.assert_close(w, (a.mean(0) - b.mean(0)) / (a.mean(0) - b.mean(0)).norm())


def test_movie_snippets_split_by_use_and_sign_capped_and_seeded(labelled):
    rows = [json.loads(line) for line in open(labelled / "movie_snippets.jsonl")]
    s = movie_snippets(labelled, n_direction=5, n_probe=100, seed=0)
    direction = {r["text"]: r["rating"] for r in rows if r["use"] == "direction"}
    assert len(s.pos) == len(s.neg) == 5
    assert all(direction[t] >= 1 for t in s.pos) and all(direction[t] <= -1 for t in s.neg)
    probe = {r["text"]: r["rating"] > 0 for r in rows if r["use"] == "probe"}
    assert set(s.probe_texts) == set(probe) and all(probe[t] == bool(y) for t, y in zip(s.probe_texts, s.probe_labels))
    assert not set(s.probe_texts) & set(s.pos + s.neg)
    assert movie_snippets(labelled, 5, 100, 0).pos == s.pos and movie_snippets(labelled, 5, 100, 1).pos != s.pos
    with pytest.raises(ValueError, match="at least 2 positive"):
        movie_snippets(labelled, n_direction=1, n_probe=100, seed=0)


def test_direction_from_snippets_is_unit_and_its_heldout_auc_has_a_ci(tiny_lm, labelled):
    s = movie_snippets(labelled, 8, 8, 0)
    w = sentiment_direction(tiny_lm, LAYER, s, max_tokens=6)
    assert w.shape == (tiny_lm.d_model,) and abs(float(w.norm()) - 1) < 1e-5
    d = direction_auc(tiny_lm, LAYER, w, s, 6, n_boot=50, seed=0)
    assert 0 <= d["auc_ci"][0] <= d["auc"] <= d["auc_ci"][1] <= 1 and d["n_probe"] == [8, 8]


def write_corpus(root, docs):
    root.mkdir()
    with open(root / "heldout.jsonl", "w") as f:
        for i, (source, text) in enumerate(docs):
            f.write(json.dumps({"id": f"d{i}", "text": text, "source": source}) + "\n")
    (root / "manifest.json").write_text("{}")  # a prepared corpus: held-out split as written
    return root


def test_default_prompts_are_bbc_first_sentences_cut_to_12_words_then_other_documents(tmp_path):
    docs = [("fortunes", "Fortune favours the bold ones here. Yes."),
            ("bbc", "Ad sales boost Time Warner profit\n\nQuarterly profits at US media giant TimeWarner jumped."),
            ("bbc", "Short one. The rest of it is long enough to count."),
            ("bbc", "One two three four five six seven eight nine ten eleven twelve thirteen fourteen. Next."),
            ("wordnet", "a domestic animal kept for company"), ("wordnet", "too short")]
    corpus = write_corpus(tmp_path / "c", docs)
    assert first_sentence("A b c. D e f.") == "A b c." and first_sentence("x " * 20).count("x") == 12
    assert first_sentence("A headline\n\nThe body starts. Then goes on.") == "The body starts."
    assert default_prompts(corpus, 2) == ["Quarterly profits at US media giant TimeWarner jumped.",
                                          "One two three four five six seven eight nine ten eleven twelve"]
    assert default_prompts(corpus, 4) == ["Quarterly profits at US media giant TimeWarner jumped.",
                                          "One two three four five six seven eight nine ten eleven twelve",
                                          "Fortune favours the bold ones here.", "a domestic animal kept for company"]
    with pytest.raises(ValueError, match="usable prompt"):
        default_prompts(write_corpus(tmp_path / "d", [("bbc", "Too short."), ("x", "one two three four")]), 5)


def test_bootstrap_ci_brackets_the_mean_and_clusters_by_group():
    x = np.random.default_rng(0).normal(1.0, 1.0, 200)
    lo, hi = bootstrap_ci(x, 500, 0)
    assert lo < x.mean() < hi and hi - lo < 0.5
    # one row per group: the same draws as the row bootstrap
    np.testing.assert_allclose(bootstrap_ci(x, 500, 0, groups=np.arange(200)), (lo, hi))
    # 10 identical copies of 20 values: rows look like 200 independent draws, prompts know there are 20
    x20 = np.repeat(x[:20], 10)
    narrow, wide = bootstrap_ci(x20, 500, 0), bootstrap_ci(x20, 500, 0, groups=np.repeat(np.arange(20), 10))
    assert wide[1] - wide[0] > 2 * (narrow[1] - narrow[0]) and wide[0] < x20.mean() < wide[1]


def rows_of(raw: dict, glp: dict | None = None) -> list[dict]:
    """Report rows {mode, r, nll, distinct2} from {r: (nll, distinct2)}."""
    out = [{"mode": "raw", "r": r, "nll": n, "distinct2": d} for r, (n, d) in raw.items()]
    return out + [{"mode": "glp", "r": r, "nll": n, "distinct2": d} for r, (n, d) in (glp or {}).items()]


def test_degeneration_point_is_the_smallest_r_per_sign_where_raw_repeats_or_loses_fluency():
    rows = rows_of({-1.0: (2.6, 0.5), -0.5: (2.7, 0.95), 0.0: (2.5, 1.0), 0.25: (2.9, 0.9), 0.5: (3.6, 0.9),
                    1.0: (3.0, 0.6)})
    assert degeneration_point(rows, 0.8, 1.0) == {"positive": 0.5, "negative": 1.0}
    assert degeneration_point(rows, 0.4, 5.0) == {"positive": None, "negative": None}


def test_frontier_says_yes_only_where_glp_lowers_nll_with_the_ci_below_zero():
    paired = [{"r": -1.0, "d_nll": 0.2, "d_nll_ci": (0.1, 0.3)}, {"r": 0.0, "d_nll": 1.0, "d_nll_ci": (0.5, 1.5)},
              {"r": 0.5, "d_nll": -0.4, "d_nll_ci": (-0.6, -0.2)}, {"r": 1.0, "d_nll": -0.1, "d_nll_ci": (-0.3, 0.1)}]
    f = frontier(paired, {"positive": 0.5, "negative": 1.0})
    assert [x["glp_lower"] for x in f["positive"]["rows"]] == [True, False]
    assert f["positive"]["glp_lowers_nll"] == "partly" and f["negative"]["glp_lowers_nll"] == "no"
    assert "lowers NLL at r ≥ 0.5" in f["statement"] and "**partly**" in f["statement"] and "r ≤ -1" in f["statement"]
    assert frontier(paired, {"positive": 1.0, "negative": None})["positive"]["glp_lowers_nll"] == "no"
    assert "did not degenerate" in frontier(paired, {"positive": None, "negative": None})["statement"]


def test_concept_rises_needs_a_positive_rho_with_its_ci_above_zero():
    def rep(rho, lo):
        return {"concept_trend": {"spearman_r_vs_concept_raw": rho, "spearman_ci": (lo, rho + 0.1)}}

    assert concept_rises(rep(0.4, 0.1)) and not concept_rises(rep(0.4, -0.05)) and not concept_rises(rep(-0.3, -0.5))


def test_steering_report_pairs_raw_and_glp_rows_and_judges_them(tiny_lm, labelled):
    prior = tiny_prior(tiny_lm.d_model)
    cfg = SteerConfig(r_values=[-1.0, 0.0, 1.0], max_new_tokens=4, decoding="sample", samples_per_prompt=2,
                      n_bootstrap=50, labelled=labelled)
    judge = fit_sentiment_judge(labelled, n_boot=50)
    w = torch.nn.functional.normalize(torch.randn(tiny_lm.d_model), dim=0)
    gate = Gate(threshold=0.0, full=1e9, fpr=0.05, full_fpr=0.005, n_calibration=10)  # every row partly edited
    with pytest.raises(ValueError, match="no calibrated gate"):
        steering_report(tiny_lm, LAYER, prior, w, 10.0, cfg, ["The cat", "Rain fell"], judge)
    rep = steering_report(tiny_lm, LAYER, prior, w, 10.0, cfg, ["The cat", "Rain fell"], judge, gate=gate)
    modes = ("raw", "glp", "glp@0.2", "gated")  # glp@0.2: the default extra SDEdit level, paired with raw like glp
    assert [(r["mode"], r["r"]) for r in rep["rows"]] == [(m, r) for m in modes for r in (-1.0, 0.0, 1.0)]
    assert {r["t_start"] for r in rep["rows"]} == {None, 0.5, 0.2}
    gated = [r for r in rep["rows"] if r["mode"] == "gated"]
    assert all(r["edited_share"] == 1.0 and 0 < r["mean_weight"] < 1e-6 for r in gated)
    assert [p["r"] for p in rep["paired_gated"]] == [-1.0, 0.0, 1.0] and rep["gate"]["threshold"] == 0.0
    assert set(rep["gated_goal"]) >= {"nll_not_above_raw_every_r", "concept_not_below_raw_every_r"}
    assert rep["fluency_trend"] is None  # no trend priors given
    assert [p["r"] for p in rep["paired_t_start"]["glp@0.2"]] == [-1.0, 0.0, 1.0]
    assert rep["n_continuations"] == 4 and rep["groups"] == [0, 0, 1, 1] and r0_matches_unsteered(rep)
    assert rep["passes_per_token"] == 10 and rep["judge"] is judge.report
    for s in rep["settings"]:
        assert len(s["tokens"]) == len(s["concept"]) == len(s["vader"]) == len(s["nll"]) == len(s["distinct2"]) == 4
        assert all(0 <= c <= 1 for c in s["concept"]) and np.isfinite(s["nll"]).all()
    assert all(len(r["examples"]) == 2 for r in rep["rows"])
    assert all(r["concept_ci"][0] <= r["concept"] <= r["concept_ci"][1] for r in rep["rows"])
    t = rep["concept_trend"]
    assert -1 <= t["spearman_r_vs_concept_raw"] <= 1 and t["concept_at_min_r"]["r"] == -1.0
    raw = {s["r"]: np.array(s["concept"]) for s in rep["settings"] if s["mode"] == "raw"}
    assert [x["r"] for x in t["raw_minus_r0"]] == [-1.0, 1.0]
    assert t["raw_minus_r0"][0]["d_concept"] == pytest.approx((raw[-1.0] - raw[0.0]).mean())
    assert set(rep["degeneration_point"]) == {"positive", "negative"} and "statement" in rep["frontier"]
    md = steering_markdown(rep)
    assert "Paired differences" in md and rep["frontier"]["statement"] in md and "Spearman" in md
    assert "With t_start 0.2: " + rep["frontier_t_start"]["glp@0.2"]["statement"] in md
    assert "\n\n**raw r=1**\n\n- *" in md  # an example heading is its own paragraph, not part of the last bullet
    assert pareto_png(rep)[:4] == b"\x89PNG" and len(pareto_inline(rep)) < 1000


def test_steer_config_requires_an_unsteered_row():
    with pytest.raises(ValueError, match="must contain 0.0"):
        SteerConfig(r_values=[0.5, 1.0])
    assert 0.0 in SteerConfig().r_values and min(SteerConfig().r_values) < 0


def test_the_pareto_plot_names_each_curve_truly_and_breaks_each_at_r0():
    """The gated curve used to share SDEdit's legend name ("with GLP, t_start 0.5"), and each curve ran from r < 0
    through r = 0 to r > 0 as one line (two opposite steering directions drawn as one frontier)."""
    rs = (-1.0, -0.5, 0.0, 0.5, 1.0)
    t_of = {"raw": None, "glp": 0.5, "glp@0.2": 0.2, "gated": 0.5}
    rows = [{"mode": m, "r": r, "t_start": t, "nll": 3 + i + r * r, "nll_ci": [2 + i, 4 + i + r * r],
             "concept": 0.5 + 0.3 * r, "concept_ci": [0.4 + 0.3 * r, 0.6 + 0.3 * r]}
            for i, (m, t) in enumerate(t_of.items()) for r in rs]
    fig = pareto_figure({"rows": rows})
    ax = fig.axes[0]
    names = [t.get_text() for t in ax.get_legend().get_texts()]
    assert names == ["raw steering", "SDEdit with GLP, t_start 0.5", "SDEdit with GLP, t_start 0.2",
                     "gated SDEdit (off-manifold only), t_start 0.5", "dashed: r < 0 (steered towards negative)"]
    r_at = {(row["nll"], row["concept"]): row["r"] for row in rows}
    lines = [line for line in ax.get_lines() if line.get_linestyle() != "None"]  # the curves, not error-bar caps
    branches = [sorted(r_at[(x, y)] for x, y in zip(line.get_xdata(), line.get_ydata())) for line in lines]
    assert sorted(branches) == sorted([[0.0, 0.5, 1.0], [-1.0, -0.5]] * 4)  # never one line across r = 0
    assert {line.get_linestyle() for line in lines} == {"-", "--"}
    import matplotlib.pyplot as plt

    plt.close(fig)
