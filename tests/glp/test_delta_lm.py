import numpy as np
import torch

from glp.config import DeltaLMConfig
from glp.delta_lm import delta_lm_markdown, delta_lm_report, fit_pca, heldout_batches, pca_mse_by_k, token_ce
from tests.conftest import TEXTS
from tests.glp.test_steer import tiny_prior

LAYER = 1


def test_identity_replacement_leaves_the_loss_unchanged_and_mean_ablation_raises_it(tiny_lm):
    batches = heldout_batches(tiny_lm, TEXTS[:8], 32, 60)
    clean = token_ce(tiny_lm, LAYER, batches, None)
    same = token_ce(tiny_lm, LAYER, batches, lambda a: a.clone())
    zero = token_ce(tiny_lm, LAYER, batches, lambda a: torch.zeros_like(a))
    assert len(clean) == 60 and np.array_equal(clean, same)
    assert not np.allclose(clean, zero)


def test_heldout_batches_cap_the_predicted_tokens(tiny_lm):
    batches = heldout_batches(tiny_lm, TEXTS, 32, 25)
    assert sum(int(m[:, 1:].sum()) for _, m in batches) == 25


def test_pca_mse_falls_to_zero_with_every_component():
    x = np.random.default_rng(0).normal(size=(300, 6)) * np.array([5, 3, 1, 0.5, 0.1, 0.01])
    mu, axes = fit_pca(x)
    mse = pca_mse_by_k(torch.as_tensor(x, dtype=torch.float32), mu, axes)
    assert mse.shape == (7,) and np.all(np.diff(mse) <= 1e-6) and mse[-1] < 1e-4
    np.testing.assert_allclose(mse[0], ((x - x.mean(0)) ** 2).mean(), rtol=1e-3)


def test_report_has_glp_pca_and_mean_ablation_with_matched_k(tiny_lm):
    prior = tiny_prior(tiny_lm.d_model)
    train = np.random.default_rng(1).normal(size=(400, tiny_lm.d_model)).astype(np.float32)
    cfg = DeltaLMConfig(max_tokens=48, steps=4, n_bootstrap=50)
    rep = delta_lm_report(tiny_lm, LAYER, prior, TEXTS[:10], train, cfg, max_seq_len=32)
    m = rep["methods"]
    assert set(m) == {"glp", "pca", "mean_ablation"} and rep["n_tokens"] == 48 and rep["glp_passes"] == 2
    # matched budget: PCA's error is at most the GLP's (unless even all components cannot reach it)
    assert m["pca"]["recon_mse_normalized"] <= m["glp"]["recon_mse_normalized"] + 1e-6 or m["pca"]["k"] == 32
    assert all(np.isfinite(v["delta_ce"]) for v in m.values())
    assert "mean-ablation" in delta_lm_markdown(rep)
