import json

import numpy as np
import pytest
import torch

from glp.config import DenoiserConfig, EvalConfig
from glp.prior.denoiser import GLPDenoiser
from glp.prior.evaluate import AffineVelocity, beats_gaussian, c2st, diag_gaussian_samples, gaussian_samples, evaluate_prior, frechet_distance, gaussian_baseline_from_data, gaussian_baseline_loss, heldout_loss, heldout_ts
from glp.ci import auc_score
from glp.prior.flow import flow_matching_loss


def random_cov(d: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).standard_normal((d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def optimal_linear_predictor(cov: np.ndarray, t: float) -> np.ndarray:
    """B with v_hat = B x_t, from the spec's formulas (direct matrix algebra, no eigenbasis)."""
    eye = np.eye(len(cov))
    cov_x = (1 - t) ** 2 * cov + t**2 * eye
    cov_vx = t * eye - (1 - t) * cov
    return cov_vx @ np.linalg.inv(cov_x)


def linear_loss_mc(cov: np.ndarray, B: np.ndarray, t: float, n: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    d = len(cov)
    x0 = rng.multivariate_normal(np.zeros(d), cov, size=n)
    eps = rng.standard_normal((n, d))
    x_t, v = (1 - t) * x0 + t * eps, eps - x0
    return float(((x_t @ B.T - v) ** 2).mean())


def linear_loss_exact(cov: np.ndarray, B: np.ndarray, t: float) -> float:
    """E||B x_t - v||^2 / d from second moments, for any B."""
    eye = np.eye(len(cov))
    cov_x = (1 - t) ** 2 * cov + t**2 * eye
    cov_vx = t * eye - (1 - t) * cov
    cov_v = cov + eye
    return float(np.trace(cov_v - 2 * B @ cov_vx.T + B @ cov_x @ B.T) / len(cov))


def test_heldout_ts_are_bin_midpoints():
    np.testing.assert_allclose(heldout_ts(4), [0.125, 0.375, 0.625, 0.875])


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_gaussian_baseline_matches_monte_carlo_of_the_linear_predictor(t):
    cov = random_cov(6, seed=0)
    mc = linear_loss_mc(cov, optimal_linear_predictor(cov, t), t, n=200_000, seed=1)
    assert gaussian_baseline_loss(cov, [t])[0] == pytest.approx(mc, rel=0.02)


def test_gaussian_baseline_for_identity_covariance_has_the_closed_form():
    ts = np.linspace(0.0, 1.0, 11)
    expected = 2 - (2 * ts - 1) ** 2 / ((1 - ts) ** 2 + ts**2)
    np.testing.assert_allclose(gaussian_baseline_loss(np.eye(5), ts), expected, rtol=1e-12)


def test_no_other_linear_predictor_beats_the_baseline():
    cov, t = random_cov(5, seed=2), 0.3
    B = optimal_linear_predictor(cov, t)
    best = linear_loss_exact(cov, B, t)
    assert best == pytest.approx(gaussian_baseline_loss(cov, [t])[0], rel=1e-10)
    rng = np.random.default_rng(3)
    for _ in range(20):
        assert linear_loss_exact(cov, B + 0.01 * rng.standard_normal(B.shape), t) > best


def test_gaussian_baseline_from_data_uses_the_empirical_covariance():
    cov = random_cov(4, seed=4)
    x = np.random.default_rng(5).multivariate_normal(np.zeros(4), cov, size=2000)
    ts = [0.2, 0.7]
    np.testing.assert_allclose(
        gaussian_baseline_from_data(torch.tensor(x, dtype=torch.float32), ts),
        gaussian_baseline_loss(np.cov(x, rowvar=False), ts),
        rtol=1e-5,
    )


def test_frechet_distance_of_a_set_to_itself_is_zero():
    a = np.random.default_rng(0).standard_normal((500, 6))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_a_shifted_set_is_the_squared_shift():
    a = np.random.default_rng(0).standard_normal((500, 6))
    shift = np.array([1.0, -2.0, 0.0, 0.5, 0.0, 3.0])
    assert frechet_distance(a, a + shift) == pytest.approx(shift @ shift, rel=1e-8)


def test_diag_gaussian_samples_match_mean_and_variance_but_not_correlation():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((20_000, 1))
    x_ref = np.hstack([z + 3.0, 2.0 * z])  # perfectly correlated
    s = diag_gaussian_samples(x_ref, 20_000, seed=1)
    np.testing.assert_allclose(s.mean(0), [3.0, 0.0], atol=0.05)
    np.testing.assert_allclose(s.std(0), [1.0, 2.0], rtol=0.03)
    assert abs(np.corrcoef(s, rowvar=False)[0, 1]) < 0.05
    np.testing.assert_array_equal(s, diag_gaussian_samples(x_ref, 20_000, seed=1))


def tiny_denoiser(d: int) -> GLPDenoiser:
    torch.manual_seed(0)
    return GLPDenoiser(d, DenoiserConfig(width_mult=8, hidden_mult=16, n_blocks=2, time_dim=16))


def test_heldout_loss_is_deterministic_and_averages_the_per_t_losses():
    model, x = tiny_denoiser(3), torch.randn(100, 3)
    a = heldout_loss(model, x, n_t=4, seed=0, batch_size=32)
    b = heldout_loss(model, x.numpy(), n_t=4, seed=0, batch_size=32)
    assert a == b
    assert a["t"] == heldout_ts(4).tolist() and len(a["loss"]) == 4
    assert a["mean"] == pytest.approx(np.mean(a["loss"]))
    assert heldout_loss(model, x, n_t=4, seed=1, batch_size=32)["loss"] != a["loss"]


def mixture_of_4(n: int, seed: int) -> torch.Tensor:
    """Four well-separated 2-D Gaussian blobs (far from Gaussian as a whole)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[3.0, 3.0], [-3.0, 3.0], [3.0, -3.0], [-3.0, -3.0]])
    return centers[torch.randint(0, 4, (n,), generator=g)] + 0.3 * torch.randn(n, 2, generator=g)


def test_a_briefly_trained_denoiser_beats_the_gaussian_baseline_on_a_mixture():
    train, heldout = mixture_of_4(20_000, seed=0), mixture_of_4(2000, seed=1)
    mean, std = train.mean(0), train.std(0)
    train, heldout = (train - mean) / std, (heldout - mean) / std

    model = GLPDenoiser(2, DenoiserConfig(width_mult=32, hidden_mult=64, n_blocks=2, time_dim=32))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    for _ in range(400):
        batch = train[torch.randint(0, len(train), (256,), generator=g)]
        loss = flow_matching_loss(model, batch, generator=g)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    ours = heldout_loss(model, heldout, n_t=8, seed=0)
    base = gaussian_baseline_from_data(train, ours["t"])
    assert ours["mean"] < 0.9 * base.mean()


def test_evaluate_prior_reports_json_able_numbers():
    d = 3
    model = tiny_denoiser(d)
    heldout = np.random.default_rng(0).standard_normal((300, d)).astype(np.float32)
    cfg = EvalConfig(n_t=4, n_samples=100, sample_steps=5, sweep_steps=[2], c2st_steps=20, n_bootstrap=50, seed=0)
    report = evaluate_prior(model, heldout, np.eye(d), cfg, device="cpu")
    assert json.loads(json.dumps(report)) == report
    assert [r["steps"] for r in report["sampler_sweep"]] == [2, 5]
    assert set(report["candidates"]) == {"glp", "gaussian_full", "gaussian_diag", "heldout_floor"}
    assert list(report["candidates"]["glp"]["fd_by_n"]) == ["25", "50", "100"]
    assert len(report["heldout_loss"]) == len(report["gaussian_baseline_loss"]) == 4
    assert report["n_fd"] == 100
    for key in ("heldout_loss_mean", "gaussian_baseline_loss_mean", "fd_glp", "fd_diag_gaussian", "fd_heldout_floor"):
        assert np.isfinite(report[key])
    # standard-normal held-out rows: the diagonal Gaussian is the true law, so it sits near the floor
    assert report["fd_diag_gaussian"] < 0.5 and report["fd_heldout_floor"] < 0.5
    assert evaluate_prior(model, heldout, np.eye(d), cfg, device="cpu") == report


def test_evaluate_prior_uses_half_the_heldout_rows_when_short():
    d = 2
    heldout = np.random.default_rng(0).standard_normal((150, d))
    cfg = EvalConfig(n_t=2, sample_steps=2, sweep_steps=[], c2st_steps=20, n_bootstrap=50)  # only n_fd is read
    report = evaluate_prior(tiny_denoiser(d), heldout, np.eye(d), cfg, device="cpu")
    assert report["n_fd"] == 75


def test_frechet_distance_equals_the_scipy_sqrtm_route():
    from scipy import linalg

    rng = np.random.default_rng(0)
    a = rng.standard_normal((400, 5)) @ rng.standard_normal((5, 5))
    b = rng.standard_normal((300, 5)) @ rng.standard_normal((5, 5)) + 0.3
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    diff = a.mean(0) - b.mean(0)
    expected = diff @ diff + np.trace(ca + cb - 2 * np.real(linalg.sqrtm(ca @ cb)))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)


def test_full_covariance_gaussian_sits_at_the_floor_and_the_diagonal_one_does_not():
    """FD sees only means and covariances: samples of N(0, S) are as close to data from N(0, S) as more data is."""
    cov = random_cov(6, seed=7) * 4
    ratios, diag = [], []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        ref, floor = (rng.multivariate_normal(np.zeros(6), cov, size=1000) for _ in range(2))
        fd_floor = frechet_distance(floor, ref)
        ratios.append(frechet_distance(gaussian_samples(cov, 1000, seed + 100), ref) / fd_floor)
        diag.append(frechet_distance(diag_gaussian_samples(floor, 1000, seed), ref) / fd_floor)
    assert 0.5 < np.mean(ratios) < 2.0
    assert np.mean(diag) > 10


def test_gaussian_samples_have_the_covariance_even_when_it_is_singular():
    cov = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 2.0]])  # rank 2
    x = gaussian_samples(cov, 50_000, seed=0)
    np.testing.assert_allclose(np.cov(x, rowvar=False), cov, atol=0.05)
    np.testing.assert_array_equal(x, gaussian_samples(cov, 50_000, seed=0))


def test_affine_velocity_attains_the_gaussian_baseline_and_samples_the_gaussian():
    cov = random_cov(4, seed=3)
    model = AffineVelocity(cov)
    x = torch.as_tensor(np.random.default_rng(0).multivariate_normal(np.zeros(4), cov, size=20_000), dtype=torch.float32)
    loss = heldout_loss(model, x, n_t=4, seed=0)
    np.testing.assert_allclose(loss["loss"], gaussian_baseline_loss(cov, loss["t"]), rtol=0.03)
    from glp.prior.flow import sample

    samples = sample(model, 20_000, 4, steps=200, generator=torch.Generator().manual_seed(0)).double().numpy()
    # within sampling noise plus the Euler discretization's small shrink (~3% at 200 steps)
    np.testing.assert_allclose(np.cov(samples, rowvar=False), cov, rtol=0.06, atol=0.03)
    assert np.abs(np.cov(samples, rowvar=False) - np.eye(4)).max() > 1.0  # not merely the noise it started from


def test_auc_score_counts_ties_half_and_orders():
    assert auc_score(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert auc_score(np.array([0, 0, 1, 1]), np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert auc_score(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    with pytest.raises(ValueError, match="both classes"):
        auc_score(np.array([1, 1]), np.array([0.1, 0.2]))


C2ST_CFG = EvalConfig(c2st_steps=500, c2st_hidden=64, n_bootstrap=200)


def test_c2st_is_chance_on_two_halves_of_the_same_data_and_certain_on_shifted_data():
    x = np.random.default_rng(0).standard_normal((2000, 5))
    same = c2st(x[:1000], x[1000:], C2ST_CFG)
    assert 0.44 < same["auc"] < 0.56 and same["auc_ci"][0] < 0.5 < same["auc_ci"][1]
    shifted = c2st(x[:1000], x[1000:] + 3.0, C2ST_CFG)
    assert shifted["auc"] > 0.98


def test_c2st_sees_beyond_second_moments_where_fd_cannot():
    """Rademacher +-1 coordinates have the mean and covariance of N(0, I): FD is at its floor, the C2ST is not."""
    rng = np.random.default_rng(0)
    gauss, ref = rng.standard_normal((1500, 4)), rng.standard_normal((1500, 4))
    signs = rng.choice([-1.0, 1.0], size=(1500, 4))
    assert frechet_distance(signs, ref) < 3 * frechet_distance(gauss, ref) + 0.02
    assert c2st(ref, signs, C2ST_CFG)["auc_ci"][0] > 0.8
    assert c2st(ref, gauss, C2ST_CFG)["auc"] < 0.58


class MixtureVelocity(torch.nn.Module):
    """The exact flow-matching velocity E[eps - x0 | x_t] for x0 from an equal mixture of N(mu_k, s^2 I):
    per component the affine predictor, weighted by the component's posterior given x_t. Its Euler samples
    follow the mixture: a prior that learned the data law exactly."""

    def __init__(self, means: torch.Tensor, sigma: float):
        super().__init__()
        self.register_buffer("means", means.float())
        self.sigma2 = sigma**2

    def forward(self, x: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0])[:, None, None]  # (B, 1, 1)
        centred = x[:, None, :] - (1 - t) * self.means[None]  # (B, K, d)
        s = (1 - t) ** 2 * self.sigma2 + t**2
        logw = -(centred**2).sum(-1, keepdim=True) / (2 * s)  # (B, K, 1)
        w = torch.softmax(logw, dim=1)
        v_k = -self.means[None] + (t - (1 - t) * self.sigma2) / s * centred
        return (w * v_k).sum(1)


def _mixture(n: int, seed: int, means: torch.Tensor, sigma: float) -> np.ndarray:
    g = torch.Generator().manual_seed(seed)
    k = torch.randint(0, len(means), (n,), generator=g)
    return (means[k] + sigma * torch.randn(n, means.shape[1], generator=g)).numpy()


def test_a_gaussian_prior_fails_the_check_and_the_exact_prior_passes_it():
    means, sigma = torch.tensor([[1.5, 0.0, 0.0], [-1.5, 0.0, 0.0]]), 0.5
    heldout = _mixture(3000, 0, means, sigma)
    cov = np.cov(_mixture(20_000, 1, means, sigma), rowvar=False)  # the "train" covariance
    cfg = EvalConfig(n_t=8, n_samples=800, sample_steps=50, sweep_steps=[], c2st_steps=250, c2st_hidden=64,
                     n_bootstrap=100)
    gaussian = evaluate_prior(AffineVelocity(cov), heldout, cov, cfg, "cpu")
    ok, reasons = beats_gaussian(gaussian)
    assert not ok and any("C2ST" in r for r in reasons)
    # the Gaussian prior's samples are what the full-covariance Gaussian baseline draws: the same AUC, within noise
    assert abs(gaussian["c2st_auc_glp"] - gaussian["c2st_auc_full_gaussian"]) < 0.05
    exact = evaluate_prior(MixtureVelocity(means, sigma), heldout, cov, cfg, "cpu")
    assert beats_gaussian(exact) == (True, [])
    assert exact["c2st_auc_glp"] < 0.6 < exact["c2st_auc_full_gaussian"]


def test_reconstructions_become_candidates_and_raw_fd_scales_with_the_denormalization():
    x = np.random.default_rng(0).standard_normal((400, 3))
    cfg = EvalConfig(n_t=2, n_samples=200, sample_steps=2, sweep_steps=[], c2st_steps=20, n_bootstrap=50)
    rep = evaluate_prior(tiny_denoiser(3), x, np.eye(3), cfg, "cpu",
                         reconstructions={"identity": ("identity reconstructions", lambda z: z.clone())},
                         denormalize=lambda z: 10.0 * z + 5.0)
    ident, floor = rep["candidates"]["identity"], rep["candidates"]["heldout_floor"]
    assert ident["label"] == "identity reconstructions" and ident["fd"] == pytest.approx(floor["fd"])
    assert floor["fd_raw"] == pytest.approx(100 * floor["fd"], rel=1e-6)
    assert list(rep["candidates"])[-1] == "heldout_floor"


def test_evaluate_prior_refuses_too_few_heldout_rows():
    with pytest.raises(ValueError, match="heldout_max_tokens"):
        evaluate_prior(tiny_denoiser(2), np.zeros((20, 2)), np.eye(2), EvalConfig(), "cpu")
