import pytest
import torch
import torch.nn as nn

from glp.config import DenoiserConfig
from glp.prior.denoiser import GLPDenoiser
from glp.prior.flow import euler_schedule, flow_matching_loss, interpolate, project_on_manifold, sample


class Oracle(nn.Module):
    """Knows x0 and eps, so it outputs the exact target velocity eps - x0."""

    def __init__(self, x0, eps):
        super().__init__()
        self.x0, self.eps = x0, eps

    def forward(self, x, t):
        return self.eps - self.x0


class Zero(nn.Module):
    def forward(self, x, t):
        return torch.zeros_like(x)


class Affine(nn.Module):
    """v(x, t) = a * x + b * t: simple enough to integrate by hand."""

    def __init__(self, a=0.5, b=1.0):
        super().__init__()
        self.a, self.b, self.calls = a, b, 0

    def forward(self, x, t):
        self.calls += 1
        return self.a * x + self.b * torch.as_tensor(t).reshape(-1, 1)


@pytest.fixture
def denoiser() -> GLPDenoiser:
    torch.manual_seed(0)
    m = GLPDenoiser(4, DenoiserConfig(n_blocks=2, time_dim=16))
    for block in m.blocks:
        nn.init.normal_(block.w_down.weight, std=0.1)
    return m


def test_interpolate_is_data_at_t0_and_noise_at_t1():
    x0, eps = torch.randn(3, 4), torch.randn(3, 4)
    x_t, v = interpolate(x0, eps, torch.tensor([0.0, 1.0, 0.25]))
    torch.testing.assert_close(x_t[0], x0[0])
    torch.testing.assert_close(x_t[1], eps[1])
    torch.testing.assert_close(x_t[2], 0.75 * x0[2] + 0.25 * eps[2])
    torch.testing.assert_close(v, eps - x0)


def test_loss_of_the_oracle_is_zero():
    x0, eps = torch.randn(16, 4), torch.randn(16, 4)
    assert flow_matching_loss(Oracle(x0, eps), x0, eps=eps).item() == 0.0


def test_loss_of_a_zero_model_on_zero_data_is_the_noise_variance():
    g = torch.Generator().manual_seed(0)
    loss = flow_matching_loss(Zero(), torch.zeros(4096, 16), generator=g)
    assert loss.item() == pytest.approx(1.0, abs=0.02)


def test_loss_with_explicit_t_matches_a_hand_computation():
    x0 = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    eps = torch.tensor([[0.0, 1.0], [2.0, -1.0]])
    t = torch.tensor([0.5, 0.25])
    model = Affine(a=0.5, b=1.0)
    # row 0: x_t = (0.5, -0.5), pred = (0.75, 0.25), target = (-1, 3) -> sq err (3.0625, 7.5625)
    # row 1: x_t = (0.875, 2.0), pred = (0.6875, 1.25), target = (1.5, -4) -> sq err (0.66015625, 27.5625)
    per_row = torch.tensor([(3.0625 + 7.5625) / 2, (0.66015625 + 27.5625) / 2])
    torch.testing.assert_close(flow_matching_loss(model, x0, t=t, eps=eps, per_sample=True), per_row)
    torch.testing.assert_close(flow_matching_loss(model, x0, t=t, eps=eps), per_row.mean())


def test_loss_is_seeded_by_the_generator(denoiser):
    x0 = torch.randn(32, 4)
    a = flow_matching_loss(denoiser, x0, generator=torch.Generator().manual_seed(1))
    b = flow_matching_loss(denoiser, x0, generator=torch.Generator().manual_seed(1))
    assert a.item() == b.item()


def test_euler_schedule_runs_from_noise_to_data():
    ts = euler_schedule(20)
    assert len(ts) == 21 and ts[0].item() == 1.0 and ts[-1].item() == 0.0
    assert (ts[1:] < ts[:-1]).all()
    with pytest.raises(ValueError, match="at least 1"):
        euler_schedule(0)


def test_sample_matches_hand_integrated_euler():
    model, steps = Affine(a=0.5, b=1.0), 4
    x = sample(model, 3, 2, steps, generator=torch.Generator().manual_seed(0))
    expected = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    for t in [1.0, 0.75, 0.5, 0.25]:
        expected = expected - 0.25 * (0.5 * expected + t)
    torch.testing.assert_close(x, expected)
    assert model.calls == steps


def test_project_at_t0_returns_the_input_with_no_passes(denoiser):
    a = torch.randn(5, 4)
    out, passes = project_on_manifold(denoiser, a, t_start=0.0, return_passes=True)
    assert passes == 0 and torch.equal(out, a)


def test_project_at_t1_is_a_sample_and_ignores_the_input(denoiser):
    a = torch.randn(5, 4)
    out = project_on_manifold(denoiser, a, t_start=1.0, steps=20, generator=torch.Generator().manual_seed(3))
    ref = sample(denoiser, 5, 4, 20, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out, ref)
    out2 = project_on_manifold(denoiser, a + 100, t_start=1.0, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(out2, ref)


def test_project_at_half_takes_ten_of_twenty_steps():
    model = Affine()
    _, passes = project_on_manifold(model, torch.randn(2, 3), t_start=0.5, steps=20, return_passes=True)
    assert passes == 10 and model.calls == 10


def test_project_off_grid_starts_at_t_start_then_follows_the_grid():
    _, passes = project_on_manifold(Affine(), torch.randn(2, 3), t_start=0.52, steps=20, return_passes=True)
    assert passes == 11


def test_project_keeps_leading_shape_and_is_seeded(denoiser):
    a = torch.randn(2, 3, 4)
    out1 = project_on_manifold(denoiser, a, generator=torch.Generator().manual_seed(0))
    out2 = project_on_manifold(denoiser, a, generator=torch.Generator().manual_seed(0))
    assert out1.shape == a.shape and torch.equal(out1, out2)


def test_project_rejects_a_t_start_outside_unit_interval(denoiser):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        project_on_manifold(denoiser, torch.randn(2, 4), t_start=1.5)
