"""The prior's recipe levers (glp.prior.recipe): Muon, x-prediction, loss weighting by t, µP-style lr transfer.
Each goes through the real DeepSpeed engine and resumes bit-exactly; a checkpoint of one recipe is refused by
another."""

import copy
import hashlib
import json

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from glp.config import DenoiserConfig, TrainConfig, config_hash
from glp.prior import load_prior, save_prior
from glp.prior.denoiser import GLPDenoiser
from glp.prior.flow import affine_velocity, flow_matching_loss
from glp.prior.recipe import FlowObjective, MuonWithAdamW, build_optimizer, width_lr_scale
from glp.prior.checkpoints import CheckpointRecipeMismatch
from glp.prior.train import TrainingInterrupted, train_prior
from glp.data.stats import compute_stats
from tests.glp.test_train import tiny_store

D = 8


@pytest.fixture()
def store(tmp_path):
    return tiny_store(tmp_path / "a.zarr")


def _train(store, ckpt, dcfg=None, interrupt_after=None, **overrides):
    cfg = TrainConfig(**{"batch_size": 64, "lr": 3e-3, "checkpoint_every": 8, "epochs": 2, "loss_weighting": "none",
                         **overrides})  # each lever against the unweighted AdamW baseline
    dcfg = dcfg or DenoiserConfig(n_blocks=2, time_dim=16, skip="none")
    norm = compute_stats(store, with_cov=False).normalizer()
    return train_prior(store, norm, dcfg, cfg, ckpt, torch.device("cpu"), interrupt_after=interrupt_after)


def _same(a, b):
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=k)


def test_muon_with_adamw_takes_the_steps_of_torchs_muon_and_adamw_and_resumes_from_its_state_dict():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(6, 5), torch.nn.Linear(6, 5)
    b.load_state_dict(a.state_dict())

    def ours(m):
        return MuonWithAdamW([{"params": [m.weight]}], [{"params": [m.bias]}], lr=0.02, weight_decay=0.01,
                             momentum=0.9, betas=(0.9, 0.999))

    opt = ours(a)
    ref = [torch.optim.Muon([b.weight], lr=0.02, weight_decay=0.01, momentum=0.9, adjust_lr_fn="match_rms_adamw"),
           torch.optim.AdamW([b.bias], lr=0.02, weight_decay=0.01)]
    x = torch.randn(32, 6)

    def step(m, opts):
        m.zero_grad()
        m(x).square().mean().backward()
        for o in opts:
            o.step()

    for _ in range(3):
        step(a, [opt])
        step(b, ref)
    _same(a, b)
    c = torch.nn.Linear(6, 5)
    c.load_state_dict(a.state_dict())
    resumed = ours(c)
    resumed.load_state_dict(copy.deepcopy(opt.state_dict()))  # the inner optimizers must see the loaded state and lr
    for _ in range(2):
        step(a, [opt])
        step(c, [resumed])
    _same(a, c)
    assert not torch.equal(a.weight, b.weight)  # the two more steps moved it


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    dcfg = DenoiserConfig(n_blocks=2, time_dim=16)
    obj = FlowObjective(GLPDenoiser(D, dcfg), TrainConfig(optimizer="muon"))
    opt = build_optimizer(obj, dcfg, TrainConfig(optimizer="muon"))
    names = {id(p): n for n, p in obj.named_parameters()}
    muon = {names[id(p)] for g in opt._muon.param_groups for p in g["params"]}
    adamw = {names[id(p)] for g in opt._adamw.param_groups for p in g["params"]}
    assert muon.isdisjoint(adamw) and muon | adamw == set(names.values())
    assert "denoiser.blocks.0.w_gate.weight" in muon and "denoiser.time_mlp.2.weight" in muon
    assert {"denoiser.in_proj.weight", "denoiser.out_proj.weight", "denoiser.blocks.0.ln.weight"} <= adamw
    assert all(obj.get_parameter(n).ndim == 2 for n in muon)


def test_mup_style_lr_scales_each_matrix_by_its_fan_in_against_the_base_width():
    dcfg = DenoiserConfig(width_mult=2.0, hidden_mult=4.0, n_blocks=1, time_dim=16)
    obj = FlowObjective(GLPDenoiser(D, dcfg), TrainConfig())
    scale = width_lr_scale(obj, dcfg, TrainConfig(lr_base_width_mult=1.0))
    assert scale["denoiser.blocks.0.w_gate.weight"] == 0.5  # fan-in D = 2d against d
    assert scale["denoiser.out_proj.weight"] == 0.5
    assert scale["denoiser.blocks.0.w_down.weight"] == 1.0  # fan-in H = 4d at both widths
    assert scale["denoiser.in_proj.weight"] == 1.0 and scale["denoiser.in_proj.bias"] == 1.0
    opt = build_optimizer(obj, dcfg, TrainConfig(lr=1e-3, lr_base_width_mult=1.0))
    assert sorted({g["lr"] for g in opt.param_groups}) == [5e-4, 1e-3]
    assert set(width_lr_scale(obj, dcfg, TrainConfig()).values()) == {1.0}


def test_x_prediction_turns_the_networks_clean_estimate_into_a_velocity():
    torch.manual_seed(0)
    v_net = GLPDenoiser(D, DenoiserConfig(n_blocks=1, time_dim=16, skip="none", init="torch"))
    x_net = GLPDenoiser(D, DenoiserConfig(n_blocks=1, time_dim=16, skip="none", init="torch", prediction="x"))
    x_net.load_state_dict(v_net.state_dict())
    x, t = torch.randn(16, D), torch.rand(16)
    t[0] = 0.01  # below x_t_min: 1/t clipped at 1/0.05
    out = v_net(x, t)  # the same weights' raw output
    torch.testing.assert_close(x_net(x, t), (x - out) / t.clamp_min(0.05)[:, None])


def test_x_prediction_with_the_skip_path_starts_as_the_gaussian_prior():
    net = GLPDenoiser(D, DenoiserConfig(n_blocks=1, time_dim=16, prediction="x"))
    a = torch.randn(D, D)
    net.set_gaussian(a @ a.T / D + torch.eye(D), torch.randn(D))
    x, t = torch.randn(16, D), torch.rand(16)
    torch.testing.assert_close(net(x, t), affine_velocity(x, t, net.skip_lam, net.skip_vecs, net.skip_mean))


def test_min_snr_weights_the_velocity_error_by_min_of_one_minus_t_squared_and_gamma_t_squared():
    torch.manual_seed(0)
    net = GLPDenoiser(D, DenoiserConfig(n_blocks=1, time_dim=16, skip="none", init="torch"))
    x0, eps, t = torch.randn(64, D), torch.randn(64, D), torch.rand(64)
    loss, plain = FlowObjective(net, TrainConfig(loss_weighting="min_snr", min_snr_gamma=2.0))(x0, t, eps)
    err = flow_matching_loss(net, x0, t=t, eps=eps, per_sample=True)
    w = torch.minimum((1 - t) ** 2, 2.0 * t**2)
    torch.testing.assert_close(plain, err.mean())
    torch.testing.assert_close(loss, (w * err).sum() / w.sum())
    assert abs(float((loss - plain).detach())) > 1e-3


@pytest.mark.parametrize("lever", [
    {"optimizer": "muon"}, {"loss_weighting": "min_snr"}, {"loss_weighting": "learned"}, {"prediction": "x"},
    {"lr_base_width_mult": 0.5},
], ids=lambda d: "-".join(f"{k}={v}" for k, v in d.items()))
def test_each_lever_trains_through_deepspeed_and_resumes_bit_exactly(store, tmp_path, lever):
    dcfg = DenoiserConfig(n_blocks=2, time_dim=16, skip="none", **{k: v for k, v in lever.items() if k == "prediction"})
    tover = {k: v for k, v in lever.items() if k != "prediction"}
    full, res = _train(store, tmp_path / "full", dcfg, **tover)
    assert np.mean(res.losses[-8:]) < 0.8 * np.mean(res.losses[:8])  # the logged (plain) loss falls
    with pytest.raises(TrainingInterrupted):
        _train(store, tmp_path / "res", dcfg, interrupt_after=20, **tover)
    resumed, again = _train(store, tmp_path / "res", dcfg, **tover)
    assert again.resumed_from == 16
    _same(full, resumed)
    assert again.losses == res.losses


def test_the_learned_weighting_head_trains_but_is_not_part_of_the_prior(store, tmp_path):
    model, _ = _train(store, tmp_path / "ckpt", loss_weighting="learned")
    assert not any("log_var" in k for k in model.state_dict())
    save_prior(tmp_path / "prior", model, compute_stats(store, with_cov=False).normalizer(), {"source": "test"})
    _same(model, load_prior(tmp_path / "prior").denoiser)


def test_a_checkpoint_of_one_recipe_is_refused_by_another_with_what_to_do(store, tmp_path):
    with pytest.raises(TrainingInterrupted):
        _train(store, tmp_path / "ckpt", interrupt_after=10)
    with pytest.raises(CheckpointRecipeMismatch) as e:
        _train(store, tmp_path / "ckpt", optimizer="muon")
    msg = str(e.value)
    assert "optimizer 'adamw' where the config now asks for 'muon'" in msg and "delete" in msg, msg


def test_the_new_default_weighting_gets_a_hash_of_its_own_and_the_old_recipe_keeps_its_hash():
    # artifacts built before `loss_weighting` existed trained unweighted: that value is left out of the hash (not the
    # new default), so they stay current for a config that asks for it, and the new default is a new version
    legacy = {k: v for k, v in TrainConfig().model_dump(mode="json").items()
              if k not in TrainConfig.HASH_OMIT + TrainConfig.HASH_OMIT_AT_DEFAULT}
    old = hashlib.sha256(json.dumps(legacy, sort_keys=True).encode()).hexdigest()[:12]
    assert config_hash(TrainConfig(loss_weighting="none")) == old
    assert config_hash(TrainConfig()) != old


def test_muon_is_refused_where_deepspeed_flattens_the_weights():
    with pytest.raises(ValidationError, match="cannot orthogonalize"):
        TrainConfig(optimizer="muon", precision="bf16")
    with pytest.raises(ValidationError, match="zero_stage 2"):
        TrainConfig(optimizer="muon", zero_stage=2)


def _run(minutes, seed, ratios, official_loss=None, equal_wall=False):
    """A recipe-benchmark JSON of straight-line curves: recipe -> final ratio (Gaussian loss 1)."""
    res = [{"recipe": n, "ratio": r, "loss": r, "tflop": 10.0,
            "curve": [{"tflop": 0.0, "loss": 1.0, "ratio": 1.0}, {"tflop": 10.0, "loss": r, "ratio": r}]}
           for n, r in ratios.items()]
    if official_loss is not None:
        res.append({"recipe": "official", "ratio": official_loss, "loss": official_loss, "tflop": 10.0,
                    "curve": [{"tflop": 0.0, "loss": 2.0, "ratio": 2.0}, {"tflop": 10.0, "loss": official_loss,
                                                                          "ratio": official_loss}]})
    run = {"minutes": minutes, "seed": seed, "gaussian_loss": 1.0, "budget_fp32_flops": 1e13, "heldout": 4096, "n_t": 8,
           "results": res}
    return {**run, "equal_wall": True, "wall_threads": 2} if equal_wall else run


def test_the_recipe_table_adopts_a_lever_only_when_it_beats_the_baseline_on_every_seed():
    from benchmarks.prior_recipe import flops_to_reach, results_markdown, summary_rows

    runs = [_run(9, 0, {"adamw": 0.85, "muon": 0.84, "xpred": 0.83}, official_loss=0.95),
            _run(9, 1, {"adamw": 0.86, "muon": 0.87, "xpred": 0.85}, official_loss=0.96),
            _run(1.5, 0, {"adamw": 0.93, "muon": 0.92, "xpred": 0.95})]
    _, rows = summary_rows(runs, {"muon": 1.1})
    row = {r["recipe"]: r for r in rows}
    assert row["xpred"]["wins_all"] and not row["muon"]["wins_all"]  # muon loses on seed 1
    assert row["muon"]["delta"] == pytest.approx([-0.01, 0.01])
    # the baseline's line 1 -> 0.85 crosses official's 0.95 a third of the way: 1/3 of official's 10 TFLOP
    assert row["adamw"]["reach_official"][0] == pytest.approx(1 / 3)
    assert row["xpred"]["reach_adamw"] == pytest.approx([0.15 / 0.17, 0.14 / 0.15])  # 0.85 at 0.15/0.17 of its line
    assert flops_to_reach([{"tflop": 0, "loss": 1.0}, {"tflop": 4, "loss": 0.9}], 0.5) is None
    table = results_markdown(runs, {"muon": 1.1})
    assert "| xpred |" in table and "yes: below the baseline on every seed" in table and "1.10" in table
    assert "no: not below the baseline on 1 of 2 seeds" in table
    one = [_run(9, 0, {"adamw": 0.85, "w2": 0.87, "d4": 0.84})]  # one seed: behind is decided, ahead is not
    assert "no: behind the baseline at 9 min (one seed: +0.020)" in results_markdown(one, {})
    assert "not decided: one seed at 9 min" in results_markdown(one, {})
    compact = results_markdown(runs, {"muon": 1.1}, compact=True)  # the README's: the verdicts, not the deltas
    assert "| xpred |" in compact and "no: not below the baseline on 1 of 2 seeds" in compact
    assert "FLOPs to reach official's loss" in compact and "FLOPs to reach adamw's loss" not in compact
    assert compact.splitlines()[0].count("|") == table.splitlines()[0].count("|") - 2


def test_a_lever_that_costs_wall_time_is_adopted_only_if_it_wins_at_equal_wall_time_too():
    from benchmarks.prior_recipe import results_markdown, summary_rows

    flops = [_run(9, s, {"adamw": 0.85, "muon": 0.80, "muon+b1024": 0.81, "minsnr": 0.825}) for s in (0, 1)]
    slow = {"muon": 1.8, "muon+b1024": 1.3}
    assert "at equal FLOPs only: costs 1.80×" in results_markdown(flops, slow)  # never run at equal wall time
    wall = [_run(9, 0, {"muon": 0.86, "muon+b1024": 0.83}, equal_wall=True),
            _run(9, 1, {"muon": 0.84, "muon+b1024": 0.84}, equal_wall=True)]
    _, rows = summary_rows(flops + wall, slow)
    row = {r["recipe"]: r for r in rows}
    assert row["muon+b1024"]["delta_wall"] == pytest.approx([-0.02, -0.01])  # against adamw's own 9-min runs
    assert row["muon+b1024"]["wins_wall"] and not row["muon"]["wins_wall"]  # muon loses on seed 0 at equal wall
    assert row["adamw"][(9, True)] == row["adamw"][(9, False)]  # its wall time is its own
    table = results_markdown(flops + wall, slow)
    assert "÷ Gaussian, 9 min of wall time" in table
    assert "yes: below the baseline on every seed at equal wall time" in table
    assert "no: not below the baseline on 1 of 2 seeds at equal wall time" in table
    assert "Not comparable" not in table
    # of the levers that qualify, the default is the best at equal wall time: muon+b1024 qualifies but is behind it
    assert "| minsnr |" in table and "**adopted: the default**" in table
    assert "behind minsnr at equal wall time (0.835 vs 0.825)" in table
    wall[1]["heldout"] = 8192  # scored on other rows than the baseline: the table says so
    assert "**Not comparable:** the runs at 9 min" in results_markdown(flops + wall, slow)
