import json

import pytest
import torch
from pydantic import ValidationError

from glp.config import DenoiserConfig, load_settings
from glp.prior.denoiser import GLPDenoiser

D_MODEL = 8


def make_cfg(**overrides) -> DenoiserConfig:
    return DenoiserConfig(**{"width_mult": 2.0, "hidden_mult": 4.0, "n_blocks": 3, "time_dim": 16, "skip": "none",
                             **overrides})


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


# The tensors of a default prior (DenoiserConfig(), d_model = 8) as the code wrote them before `bias`, `init`,
# `preset` and time_dim="D" existed (ed4c444): every saved prior holds exactly this layout.
SAVED_LAYOUT_D8 = {
    "time_mlp.0.weight": (8, 128), "time_mlp.0.bias": (8,), "time_mlp.2.weight": (8, 8), "time_mlp.2.bias": (8,),
    "in_proj.weight": (8, 8), "in_proj.bias": (8,),
    **{
        f"blocks.{i}.{name}": shape
        for i in range(2)
        for name, shape in [
            ("ln.weight", (8,)), ("ln.bias", (8,)), ("w_gate.weight", (32, 8)), ("w_up.weight", (32, 8)),
            ("w_time.weight", (32, 8)), ("w_time.bias", (32,)), ("w_down.weight", (8, 32)),
        ]
    },
    "ln_f.weight": (8,), "ln_f.bias": (8,), "out_proj.weight": (8, 8), "out_proj.bias": (8,),
}
SAVED_CONFIG_D8 = {"d_model": 8, "width_mult": 1.0, "hidden_mult": 4.0, "n_blocks": 2, "time_dim": 128}


def layout(m: GLPDenoiser) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in m.state_dict().items()}


def test_the_default_denoiser_keeps_the_layout_of_saved_priors():
    m = GLPDenoiser(8, DenoiserConfig(skip="none"))
    assert layout(m) == SAVED_LAYOUT_D8
    assert sum(p.numel() for p in m.parameters()) == 3408
    # the default since issue 13 adds the Gaussian skip path as buffers only: same parameters
    skip = GLPDenoiser(8, DenoiserConfig())
    assert layout(skip) == {**SAVED_LAYOUT_D8, "skip_lam": (8,), "skip_vecs": (8, 8), "skip_mean": (8,)}
    assert sum(p.numel() for p in skip.parameters()) == 3408


def test_the_affine_skip_starts_as_the_gaussian_prior_exactly():
    from glp.prior.evaluate import AffineVelocity

    m = GLPDenoiser(8, DenoiserConfig())
    a = torch.randn(8, 8)
    cov, mean = a @ a.T / 8, torch.randn(8) * 0.1
    m.set_gaussian(cov, mean)
    x, t = torch.randn(16, 8), torch.rand(16)
    torch.testing.assert_close(m(x, t), AffineVelocity(cov.numpy(), mean.numpy())(x, t), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="skip='affine'"):
        GLPDenoiser(8, DenoiserConfig(skip="none")).set_gaussian(cov, mean)


def test_a_config_saved_before_the_new_fields_existed_loads_its_weights():
    old = GLPDenoiser.from_config_dict(SAVED_CONFIG_D8)
    assert (old.cfg.bias, old.cfg.time_dim, old.cfg.init, old.cfg.preset, old.cfg.skip) == (False, 128, "glp", None,
                                                                                              "none")
    old.load_state_dict({k: torch.randn(shape) for k, shape in SAVED_LAYOUT_D8.items()})  # strict: no key missing


def official_param_count(d: int, D: int, H: int, n_blocks: int) -> int:
    """Parameters of the official TransformerMLPDenoiser (d_input = d, d_model = D, d_mlp = H), counted by hand."""
    block = 3 * (D * H + H) + (H * D + D) + 2 * D  # up, gate, time projections; down; LayerNorm
    in_proj, out_proj = d * D + D, D * d + d
    time_mlp = 2 * (D * D + D)  # Linear(D, D) - SiLU - Linear(D, D) on a D-wide sinusoid
    final_ln = 2 * D
    return n_blocks * block + in_proj + out_proj + time_mlp + final_ln


@pytest.mark.parametrize(
    ("d", "width_mult", "hidden_mult", "n_blocks"),
    [(8, 2.0, 4.0, 3), (5, 1.4, 2.0, 2), (12, 1.0, 4.0, 1)],  # D = 16, 7 (odd: a padded sinusoid), 12
)
def test_the_official_preset_has_the_official_parameter_count(d, width_mult, hidden_mult, n_blocks):
    cfg = DenoiserConfig(preset="official", width_mult=width_mult, hidden_mult=hidden_mult, n_blocks=n_blocks)
    m = GLPDenoiser(d, cfg)
    n = sum(p.numel() for p in m.parameters())
    assert n == official_param_count(d, m.width, m.hidden, n_blocks)
    assert m(torch.randn(3, d), torch.rand(3)).shape == (3, d)


def test_the_official_preset_differs_from_the_default_by_block_biases_and_time_width():
    ours = GLPDenoiser(D_MODEL, make_cfg())
    official = GLPDenoiser(D_MODEL, make_cfg(preset="official", time_dim="D"))
    D, H, n_blocks = ours.width, ours.hidden, 3
    extra = n_blocks * (2 * H + D) + (D - 16) * D  # biases of gate, up, down; sinusoid width 16 -> D
    n_ours, n_official = (sum(p.numel() for p in m.parameters()) for m in (ours, official))
    assert n_official - n_ours == extra


def test_a_preset_model_round_trips_through_its_config_dict():
    torch.manual_seed(0)
    model = GLPDenoiser(D_MODEL, DenoiserConfig(preset="official", init="torch", n_blocks=2))
    d = json.loads(json.dumps(model.config_dict()))
    assert (d["preset"], d["bias"], d["time_dim"], d["init"]) == ("official", True, "D", "torch")
    rebuilt = GLPDenoiser.from_config_dict(d)
    assert rebuilt.cfg == model.cfg
    rebuilt.load_state_dict(model.state_dict())
    x, t = torch.randn(3, D_MODEL), torch.rand(3)
    torch.testing.assert_close(rebuilt(x, t), model(x, t))


def test_fields_set_by_the_user_win_over_the_preset():
    assert DenoiserConfig(preset="official").model_dump(include={"bias", "time_dim", "init"}) == {
        "bias": True, "time_dim": "D", "init": "glp"
    }
    no_bias = DenoiserConfig(preset="official", bias=False)
    assert (no_bias.bias, no_bias.time_dim) == (False, "D")
    narrow = DenoiserConfig(preset="official", time_dim=64, init="torch")
    assert (narrow.bias, narrow.time_dim, narrow.init) == (True, 64, "torch")
    assert DenoiserConfig(preset="glp") == DenoiserConfig().model_copy(update={"preset": "glp"})


def test_the_preset_is_chosen_by_environment_variable_and_explicit_env_fields_win(monkeypatch):
    monkeypatch.setenv("GLP_DENOISER__PRESET", "official")
    assert (load_settings().denoiser.bias, load_settings().denoiser.time_dim) == (True, "D")
    monkeypatch.setenv("GLP_DENOISER__TIME_DIM", "64")
    assert (load_settings().denoiser.bias, load_settings().denoiser.time_dim) == (True, 64)


def test_torch_init_leaves_w_down_non_zero_and_glp_init_zeroes_it():
    torch_init = GLPDenoiser(D_MODEL, make_cfg(init="torch", bias=True))
    glp_init = GLPDenoiser(D_MODEL, make_cfg(bias=True))
    for tb, gb in zip(torch_init.blocks, glp_init.blocks):
        assert torch.count_nonzero(tb.w_down.weight) == tb.w_down.weight.numel()
        assert torch.count_nonzero(tb.w_down.bias) > 0
        assert not torch.all(tb.w_time.bias == 1)
        assert torch.count_nonzero(gb.w_down.weight) == 0 and torch.count_nonzero(gb.w_down.bias) == 0
        assert torch.all(gb.w_time.bias == 1)


def test_the_official_network_with_glp_init_starts_with_identity_blocks():
    m = GLPDenoiser(D_MODEL, make_cfg(preset="official", time_dim="D"))
    x = torch.randn(4, D_MODEL)
    torch.testing.assert_close(m(x, torch.rand(4)), m.out_proj(m.ln_f(m.in_proj(x))))


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"preset": "paper"}, "preset\n.*Input should be 'glp' or 'official'"),
        ({"init": "xavier"}, "init\n.*Input should be 'glp' or 'torch'"),
        ({"time_dim": "d"}, "time_dim.int\\n.*valid integer(.|\\n)*Input should be 'D'"),
        ({"time_dim": 4}, "time_dim\n.*time_dim 4 is too small .* at least 8, or 'D'"),
        ({"bias": "sometimes"}, "bias\n.*valid boolean"),
        ({"biases": True}, "biases\n.*Extra inputs are not permitted"),
    ],
)
def test_a_bad_value_is_rejected_naming_the_field(bad, message):
    with pytest.raises(ValidationError, match=message):
        DenoiserConfig(**bad)
