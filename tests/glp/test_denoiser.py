import json

import pytest
import torch

from glp.config import DenoiserConfig
from glp.denoiser import GLPDenoiser

D_MODEL = 8


def make_cfg(**overrides) -> DenoiserConfig:
    return DenoiserConfig(**{"width_mult": 2.0, "hidden_mult": 4.0, "n_blocks": 3, "time_dim": 16, **overrides})


@pytest.fixture
def model() -> GLPDenoiser:
    torch.manual_seed(0)
    m = GLPDenoiser(D_MODEL, make_cfg())
    for block in m.blocks:  # leave the zero init so every parameter matters in these tests
        torch.nn.init.normal_(block.w_down.weight, std=0.1)
    return m


def test_forward_returns_one_velocity_per_row(model):
    x = torch.randn(5, D_MODEL)
    assert model(x, torch.rand(5)).shape == (5, D_MODEL)


def test_scalar_t_is_the_same_as_a_constant_vector(model):
    x = torch.randn(5, D_MODEL)
    torch.testing.assert_close(model(x, 0.3), model(x, torch.full((5,), 0.3)))


def test_widths_follow_the_config_multipliers():
    m = GLPDenoiser(10, make_cfg(width_mult=1.5, hidden_mult=2.5, n_blocks=2))
    assert (m.width, m.hidden) == (15, 25)
    assert m.in_proj.weight.shape == (15, 10) and m.out_proj.weight.shape == (10, 15)
    assert m.blocks[0].w_gate.weight.shape == (25, 15)


def test_meta_neurons_are_n_blocks_times_hidden_and_block_major(model):
    x, t = torch.randn(4, D_MODEL), torch.rand(4)
    v, meta = model(x, t, return_meta=True)
    assert model.n_meta_neurons == 3 * 4 * D_MODEL
    assert meta.shape == (4, model.n_meta_neurons)
    torch.testing.assert_close(v, model(x, t))

    # block-major: the second block's hidden units come from its own W_down input
    seen = []
    handle = model.blocks[1].w_down.register_forward_hook(lambda mod, inp, out: seen.append(inp[0]))
    model(x, t)
    handle.remove()
    torch.testing.assert_close(meta[:, model.hidden : 2 * model.hidden], seen[0])


def test_time_projection_multiplies_the_gate_pre_activation(model):
    x, t = torch.randn(4, D_MODEL), torch.rand(4)
    # zero time projection => gate pre-activation 0 => SiLU(0) = 0 => every meta-neuron is 0
    for block in model.blocks:
        torch.nn.init.zeros_(block.w_time.weight)
        torch.nn.init.zeros_(block.w_time.bias)
    _, meta = model(x, t, return_meta=True)
    assert torch.count_nonzero(meta) == 0

    # a constant time projection c gives exactly SiLU(c * W_gate LN(h)) * W_up LN(h)
    block = model.blocks[0]
    torch.nn.init.constant_(block.w_time.bias, 2.0)
    h = model.in_proj(x)
    expected = torch.nn.functional.silu(2.0 * block.w_gate(block.ln(h))) * block.w_up(block.ln(h))
    _, meta = model(x, t, return_meta=True)
    torch.testing.assert_close(meta[:, : model.hidden], expected)


def test_velocity_depends_on_t(model):
    x = torch.randn(4, D_MODEL)
    assert not torch.allclose(model(x, 0.1), model(x, 0.9))


def test_untrained_blocks_start_as_the_identity():
    m = GLPDenoiser(D_MODEL, make_cfg())
    x = torch.randn(4, D_MODEL)
    expected = m.out_proj(m.ln_f(m.in_proj(x)))
    torch.testing.assert_close(m(x, torch.rand(4)), expected)


def test_config_dict_round_trips_through_json(model):
    d = json.loads(json.dumps(model.config_dict()))
    assert d["d_model"] == D_MODEL
    rebuilt = GLPDenoiser.from_config_dict(d)
    rebuilt.load_state_dict(model.state_dict())
    x, t = torch.randn(3, D_MODEL), torch.rand(3)
    torch.testing.assert_close(rebuilt(x, t), model(x, t))


def test_from_config_dict_without_d_model_says_what_is_missing():
    with pytest.raises(ValueError, match="d_model"):
        GLPDenoiser.from_config_dict({"n_blocks": 2})
