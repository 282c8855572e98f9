"""Off-manifold scores, the calibrated gate and gated post-processing (glp.uses.ood, glp.uses.steer)."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest

from glp.config import DenoiserConfig, SteerConfig
from glp.prior.denoiser import GLPDenoiser
from glp.prior.flow import flow_matching_loss
from glp.prior.manifold import Gate, calibrate, diffusion_score, gated_edit, sdedit_error
from glp.prior import Prior
from glp.data.stats import Normalizer
from glp.pipeline.steering import calibrate_gate
from glp.uses.generate import generate, prefill, steer_edit
from glp.prior.manifold import sdedit
from tests.glp.test_steer import LAYER, prompt_ids, tiny_prior

D = 8


def mixture(n: int, seed: int) -> torch.Tensor:
    """Rows on a low-dimensional, non-Gaussian manifold: two clusters along a 2-D plane of R^8."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(D, D, generator=torch.Generator().manual_seed(99)))[0][:, :2]
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0]])
    coords = centres[torch.randint(0, 2, (n,), generator=g)] + 0.3 * torch.randn(n, 2, generator=g)
    return coords @ basis.T + 0.05 * torch.randn(n, D, generator=g)


@pytest.fixture(scope="module")
def trained() -> GLPDenoiser:
    """A small prior really trained (plain Adam, 600 steps) on the mixture."""
    torch.manual_seed(0)
    net = GLPDenoiser(D, DenoiserConfig(n_blocks=2, time_dim=16, width_mult=4.0))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    x = mixture(20_000, seed=0)
    for step in range(600):
        batch = x[torch.randint(0, len(x), (256,), generator=g)]
        loss = flow_matching_loss(net, batch, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def test_diffusion_score_is_reproducible_per_row_and_batch_independent(trained):
    z = mixture(300, seed=5)
    a = diffusion_score(trained, z, seed=3)
    assert a.shape == (300,) and torch.isfinite(a).all()
    assert torch.equal(a, diffusion_score(trained, z, seed=3))
    small = diffusion_score(trained, z, seed=3, batch_size=4096)
    torch.testing.assert_close(a, small)
    assert not torch.equal(a, diffusion_score(trained, z, seed=4))  # the seed matters
    # row i's score does not depend on the other rows of its batch
    torch.testing.assert_close(diffusion_score(trained, z[:10], seed=3), a[:10])


def test_scores_of_a_trained_prior_are_higher_off_the_manifold(trained):
    clean = mixture(2000, seed=7)
    noised = clean + torch.randn_like(clean) * clean.norm(dim=1, keepdim=True) / math.sqrt(D)  # matched-norm noise
    for score in (diffusion_score(trained, clean), diffusion_score(trained, noised)):
        assert torch.isfinite(score).all()
    s_clean, s_noised = diffusion_score(trained, clean), diffusion_score(trained, noised)
    assert s_noised.mean() > 1.5 * s_clean.mean()
    from glp.ci import auc_score

    labels = np.r_[np.zeros(2000), np.ones(2000)]
    assert auc_score(labels, np.r_[s_clean.numpy(), s_noised.numpy()]) > 0.9
    e_clean, e_noised = sdedit_error(trained, clean), sdedit_error(trained, noised)
    assert e_noised.mean() > e_clean.mean()


def test_calibration_hits_its_false_positive_rate_on_other_heldout_rows(trained):
    scores = diffusion_score(trained, mixture(16_000, seed=11))
    gate = calibrate(scores[:8000], fpr=0.05, full_fpr=0.005)
    flagged = (gate.weight(scores[8000:]) > 0).numpy()
    ci = binomtest(int(flagged.sum()), len(flagged)).proportion_ci(0.99)
    assert ci.low <= 0.05 <= ci.high, (flagged.mean(), ci)
    assert gate.threshold < gate.full and gate.n_calibration == 8000


def test_gate_weight_ramps_from_threshold_to_full():
    gate = Gate(threshold=1.0, full=3.0, fpr=0.05, full_fpr=0.005, n_calibration=100)
    w = gate.weight(torch.tensor([0.0, 1.0, 2.0, 3.0, 10.0]))
    torch.testing.assert_close(w, torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))


def test_calibrate_refuses_bad_rates_and_bad_scores():
    with pytest.raises(ValueError, match="full_fpr < fpr"):
        calibrate(torch.rand(100), fpr=0.01, full_fpr=0.05)
    with pytest.raises(ValueError, match="non-finite"):
        calibrate(torch.tensor([float("nan")] * 50), fpr=0.05, full_fpr=0.01)
    with pytest.raises(ValueError, match="full_fpr"):
        SteerConfig(gate_fpr=0.01, gate_full_fpr=0.02)


def test_gated_edit_is_identity_on_manifold_and_exact_projection_far_off():
    a = torch.randn(5, D)
    proj = a * 3 + 1
    never = Gate(threshold=math.inf, full=math.inf, fpr=0.05, full_fpr=0.005, n_calibration=10)
    always = Gate(threshold=-math.inf, full=-1e30, fpr=0.05, full_fpr=0.005, n_calibration=10)
    out, w = gated_edit(never, torch.zeros(5), a, lambda x: x * 3 + 1)
    assert torch.equal(out, a) and torch.equal(w, torch.zeros(5))
    out, w = gated_edit(always, torch.zeros(5), a, lambda x: x * 3 + 1)
    assert torch.equal(out, proj) and torch.equal(w, torch.ones(5))
    half = Gate(threshold=0.0, full=2.0, fpr=0.05, full_fpr=0.005, n_calibration=10)
    out, _ = gated_edit(half, torch.full((5,), 1.0), a, lambda x: x * 3 + 1)
    torch.testing.assert_close(out, 0.5 * a + 0.5 * proj)


NEVER = Gate(threshold=math.inf, full=math.inf, fpr=0.05, full_fpr=0.005, n_calibration=10)
ALWAYS = Gate(threshold=-math.inf, full=-1e30, fpr=0.05, full_fpr=0.005, n_calibration=10)


@pytest.mark.parametrize("decoding", ["greedy", "sample"])
def test_gated_steering_equals_raw_when_always_on_manifold_and_sdedit_when_always_off(tiny_lm, decoding):
    prior = tiny_prior(tiny_lm.d_model)
    ids = prompt_ids(tiny_lm)
    w = torch.nn.functional.normalize(torch.randn(tiny_lm.d_model), dim=0)
    pre = prefill(tiny_lm, ids)
    kw = dict(max_new_tokens=8, decoding=decoding, temperature=0.9, seed=4, layer=LAYER, prefix=pre)

    def run(prior_or_none, gate=None):
        g = torch.Generator().manual_seed(1)
        return generate(tiny_lm, ids, edit=steer_edit(w, 3.0, prior_or_none, 0.5, 20, "euler", g, gate=gate), **kw)

    raw, sd = run(None), run(prior)
    assert raw != sd  # the comparison can tell the two apart
    assert run(prior, NEVER) == raw
    assert run(prior, ALWAYS) == sd


def test_gated_edit_of_steered_activations_matches_sdedit_rows_exactly(tiny_lm):
    prior = tiny_prior(tiny_lm.d_model)
    a = torch.randn(6, tiny_lm.d_model)
    w = torch.nn.functional.normalize(torch.randn(tiny_lm.d_model), dim=0)
    g1, g2 = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    plain = sdedit(prior, a + 4.0 * w, 0.5, 20, "euler", g1)
    weights = []
    gated = steer_edit(w, 4.0, prior, 0.5, 20, "euler", g2, gate=ALWAYS, weights=weights)(a)
    assert torch.equal(gated, plain) and torch.equal(weights[0], torch.ones(6))


def test_calibrate_gate_on_heldout_activations_reports_a_measured_fpr():
    d = 6
    torch.manual_seed(0)
    prior = Prior(GLPDenoiser(d, DenoiserConfig(n_blocks=1, time_dim=16)).eval(),
                  Normalizer(torch.zeros(d), torch.ones(d)), {"denoiser": {"d_model": d}})
    heldout = np.random.default_rng(0).standard_normal((4000, d)).astype(np.float32)
    gate, cal = calibrate_gate(prior, heldout, SteerConfig(gate_calibration_rows=2000))
    assert cal["n_calibration"] == cal["n_check"] == 2000
    assert cal["fpr_check_ci"][0] <= cal["fpr_check"] <= cal["fpr_check_ci"][1]
    assert abs(cal["fpr_check"] - 0.05) < 0.03
    with pytest.raises(ValueError, match="too few"):
        calibrate_gate(prior, heldout[:30], SteerConfig())


# ---------------------------------------------------------------- the off-manifold sets, baselines and AUROC table


def test_auroc_of_a_score_on_identical_sets_is_chance_within_noise():
    from glp.uses.ood import auroc_table

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=2000), rng.normal(size=2000)  # two samples of one law
    t = auroc_table({"glp": a, "other": a[::-1].copy()}, {"glp": b, "other": b}, n_boot=300, seed=0)
    assert abs(t["auroc"]["glp"] - 0.5) < 0.04 and t["ci"]["glp"][0] < 0.5 < t["ci"]["glp"][1]
    same = auroc_table({"glp": a}, {"glp": a.copy()}, n_boot=50, seed=0)
    assert same["auroc"]["glp"] == 0.5  # the very same scores: every pair ties or cancels
    assert t["diff"]["other"]["ci"][0] < 0 < t["diff"]["other"]["ci"][1]


def test_auroc_table_pairs_its_bootstrap_so_a_better_score_wins_with_a_ci_above_zero():
    from glp.uses.ood import auroc_table

    rng = np.random.default_rng(1)
    real = {"glp": rng.normal(size=500), "weak": rng.normal(size=500)}
    off = {"glp": rng.normal(2.0, size=500), "weak": rng.normal(0.3, size=500)}
    t = auroc_table(real, off, n_boot=300, seed=0)
    assert t["auroc"]["glp"] > 0.9 and 0.5 < t["auroc"]["weak"] < 0.7
    d = t["diff"]["weak"]
    assert d["ci"][0] > 0.2 and math.isclose(d["d"], t["auroc"]["glp"] - t["auroc"]["weak"])
    assert t["n_real"] == t["n_off"] == 500


def test_mahalanobis_score_is_the_quadratic_form_of_the_inverse_covariance():
    from glp.uses.ood import mahalanobis_score, mahalanobis_whitener

    g = torch.Generator().manual_seed(0)
    m = torch.randn(D, D, generator=g, dtype=torch.float64)
    cov = (m @ m.T + 0.5 * torch.eye(D, dtype=torch.float64)).numpy()
    z = torch.randn(100, D, generator=g)
    want = torch.einsum("bi,ij,bj->b", z.double(), torch.linalg.inv(torch.from_numpy(cov)), z.double())
    torch.testing.assert_close(mahalanobis_score(z, cov).double(), want, rtol=1e-4, atol=1e-4)
    # one eigendecomposition for many sets: the whitener gives the same distances
    torch.testing.assert_close(mahalanobis_score(z, whitener=mahalanobis_whitener(cov)), mahalanobis_score(z, cov))
    # rows drawn from the covariance itself score d on average
    rows = torch.from_numpy(np.random.default_rng(0).multivariate_normal(np.zeros(D), cov, 20_000)).float()
    assert abs(float(mahalanobis_score(rows, cov).mean()) - D) < 0.2


def test_off_manifold_transforms_keep_what_they_promise():
    from glp.uses.ood import moved_rows, random_directions, shuffle_dims, standardize

    z = mixture(400, seed=2)
    u = random_directions(400, D, seed=0)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(400))
    torch.testing.assert_close((moved_rows(z, u, 3.0) - z).norm(dim=1), torch.full((400,), 3.0))
    w = torch.zeros(D)
    w[0] = 1.0
    assert torch.equal(moved_rows(z, w, 2.0)[:, 1:], z[:, 1:])
    s = shuffle_dims(z, seed=0)
    assert torch.equal(s.sort(dim=1).values, z.sort(dim=1).values) and not torch.equal(s, z)
    assert torch.equal(s, shuffle_dims(z, seed=0))
    st = standardize(z * 5 + 3)
    torch.testing.assert_close(st.mean(0), torch.zeros(D), atol=1e-5, rtol=0)
    torch.testing.assert_close(st.std(0), torch.ones(D), atol=1e-5, rtol=0)


def test_position_matching_draws_real_rows_at_the_wanted_positions():
    from glp.uses.ood import position_matched, shuffle_words

    pool = np.array([1, 1, 2, 2, 2, 3, 5, 5])
    want = np.array([1, 2, 2, 5, 4, 9])
    idx = position_matched(pool, want, seed=0)
    assert list(pool[idx[:4]]) == [1, 2, 2, 5] and len(set(idx[:3])) == 3
    assert pool[idx[4]] in (3, 5) and pool[idx[5]] == 5  # absent positions take the nearest present one
    text = "the cat sat on the mat today"
    out = shuffle_words(text, np.random.default_rng(0))
    assert sorted(out.split()) == sorted(text.split()) and out != text


def test_default_other_layers_are_valid_and_never_the_source_layer():
    from glp.uses.ood import default_other_layers

    assert default_other_layers(15, 30) == [14, 7]
    assert default_other_layers(0, 4) == [1, 3]
    assert default_other_layers(1, 2) == [0]
    assert default_other_layers(0, 1) == []
