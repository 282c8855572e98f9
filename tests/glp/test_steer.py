import numpy as np
import pytest
import torch

from glp.config import DenoiserConfig, SteerConfig
from glp.denoiser import GLPDenoiser
from glp.flow import project_on_manifold, sample
from glp.evaluate import bootstrap_ci
from glp.judges import continuation_nll, distinct_n, sentiment_scores
from glp.lm import capture_residual
from glp.prior import Prior
from glp.stats import Normalizer
from glp.steer import (
    diffmean_direction, encode, generate, newest_position_hook, r0_matches_unsteered, sdedit, sdedit_levels,
    sentiment_direction, sentiment_texts, solver_passes, steer_edit, steering_markdown, steering_report,
)

LAYER = 1


def tiny_prior(d: int, seed: int = 0) -> Prior:
    torch.manual_seed(seed)
    den = GLPDenoiser(d, DenoiserConfig(n_blocks=1, time_dim=16)).eval()
    return Prior(den, Normalizer(torch.randn(d) * 0.1, torch.rand(d) + 0.5), {"denoiser": {"d_model": d}})


def prompt_ids(lm, n=3):
    return [encode(lm, t) for t in ["The cat sat", "A happy child plays in the", "Rain"][:n]]


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
    steered0 = generate(tiny_lm, ids, 8, decoding, 0.9, seed=4, layer=LAYER, edit=steer_edit(w, 0.0))
    steered = generate(tiny_lm, ids, 8, decoding, 0.9, seed=4, layer=LAYER, edit=steer_edit(w, 50.0))
    assert steered0 == plain and steered != plain
    assert all(len(row) == 8 for row in plain)


def test_batched_left_padded_generation_matches_one_prompt_at_a_time(tiny_lm):
    ids = prompt_ids(tiny_lm)
    batched = generate(tiny_lm, ids, 6, "greedy")
    assert batched == [generate(tiny_lm, [p], 6, "greedy")[0] for p in ids]


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


def test_judges_order_obvious_positive_and_negative_texts():
    pos, neg = sentiment_scores(["What a wonderful, happy, lovely day!", "This is terrible, awful and sad."])
    neutral = sentiment_scores(["The table has four legs."])[0]
    assert pos > 0.5 and neg < -0.5 and neutral == 0.0
    assert distinct_n([1, 2, 3, 4]) == 1.0 and distinct_n([7, 7, 7, 7, 7]) == 0.25


def test_continuation_nll_prefers_the_models_own_greedy_continuation(tiny_lm):
    ids = prompt_ids(tiny_lm)
    own = generate(tiny_lm, ids, 6, "greedy")
    other = [[5, 9, 200, 17, 3, 44]] * len(ids)
    nll_own, nll_other = continuation_nll(tiny_lm, ids, own), continuation_nll(tiny_lm, ids, other)
    assert nll_own.shape == (3,) and (nll_own < nll_other).all()


def test_diffmean_is_the_unit_mean_difference():
    a, b = torch.randn(10, 4) + torch.tensor([3.0, 0, 0, 0]), torch.randn(12, 4)
    w = diffmean_direction(a, b)
    torch.testing.assert_close(w.norm(), torch.tensor(1.0))
    torch.testing.assert_close(w, (a.mean(0) - b.mean(0)) / (a.mean(0) - b.mean(0)).norm())


def test_sentiment_texts_are_seeded_and_labelled_by_the_judge(tiny_lm):
    pos, neg = sentiment_texts(16, seed=1)
    assert (pos, neg) == sentiment_texts(16, seed=1) and len(pos) == len(neg) == 16
    assert sentiment_scores(pos).mean() > 0.3 and sentiment_scores(neg).mean() < -0.3
    w = sentiment_direction(tiny_lm, LAYER, n=8)
    assert w.shape == (tiny_lm.d_model,) and abs(float(w.norm()) - 1) < 1e-5


def test_bootstrap_ci_brackets_the_mean():
    x = np.random.default_rng(0).normal(1.0, 1.0, 200)
    lo, hi = bootstrap_ci(x, 500, 0)
    assert lo < x.mean() < hi and hi - lo < 0.5


def test_steering_report_pairs_raw_and_glp_rows(tiny_lm):
    prior = tiny_prior(tiny_lm.d_model)
    cfg = SteerConfig(r_values=[0.0, 1.0], prompts=["The cat", "Rain fell"], max_new_tokens=4, samples_per_prompt=2,
                      n_bootstrap=50)
    w = torch.nn.functional.normalize(torch.randn(tiny_lm.d_model), dim=0)
    rep = steering_report(tiny_lm, LAYER, prior, w, 10.0, cfg)
    assert [(r["mode"], r["r"]) for r in rep["rows"]] == [("raw", 0.0), ("raw", 1.0), ("glp", 0.0), ("glp", 1.0)]
    assert rep["n_continuations"] == 4 and r0_matches_unsteered(rep) and rep["passes_per_token"] == 10
    assert all(np.isfinite(r["nll"]) and len(r["examples"]) == 2 for r in rep["rows"])
    assert "Paired differences" in steering_markdown(rep)


def test_steer_config_requires_an_unsteered_row():
    with pytest.raises(ValueError, match="must contain 0.0"):
        SteerConfig(r_values=[0.5, 1.0])
