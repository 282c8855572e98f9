import numpy as np
import pytest
import torch

from glp.config import DeltaLMConfig
from glp.uses.delta_lm import batch_docs, delta_lm_markdown, delta_lm_report, heldout_docs, token_ce, token_doc_ids
from glp.data.stats import fit_pca, pca_mse_by_k
from tests.conftest import TEXTS
from tests.glp.test_steer import tiny_prior

LAYER = 1


def test_identity_replacement_leaves_the_loss_unchanged_and_mean_ablation_raises_it(tiny_lm):
    batches = batch_docs(tiny_lm, heldout_docs(tiny_lm, TEXTS[:8], 32, 60)[0])
    clean = token_ce(tiny_lm, LAYER, batches, None)
    same = token_ce(tiny_lm, LAYER, batches, lambda a: a.clone())
    zero = token_ce(tiny_lm, LAYER, batches, lambda a: torch.zeros_like(a))
    assert len(clean) == 60 and np.array_equal(clean, same)
    assert not np.allclose(clean, zero)


def test_heldout_docs_cap_the_predicted_tokens(tiny_lm):
    batches = batch_docs(tiny_lm, heldout_docs(tiny_lm, TEXTS, 32, 25)[0])
    assert sum(int(m[:, 1:].sum()) for _, m in batches) == 25


def test_pca_mse_falls_to_zero_with_every_component():
    x = np.random.default_rng(0).normal(size=(300, 6)) * np.array([5, 3, 1, 0.5, 0.1, 0.01])
    mu, axes = fit_pca(x)
    mse = pca_mse_by_k(torch.as_tensor(x, dtype=torch.float32), mu, axes)
    assert mse.shape == (7,) and np.all(np.diff(mse) <= 1e-6) and mse[-1] < 1e-4
    np.testing.assert_allclose(mse[0], ((x - x.mean(0)) ** 2).mean(), rtol=1e-3)


def test_report_has_glp_sae_pca_and_mean_ablation_with_k_matched_on_other_documents(tiny_lm):
    from glp.uses.sae import TopKSAE

    prior = tiny_prior(tiny_lm.d_model)
    torch.manual_seed(0)
    sae = TopKSAE(tiny_lm.d_model, 2 * tiny_lm.d_model, 4)
    train = np.random.default_rng(1).normal(size=(400, tiny_lm.d_model)).astype(np.float32)
    cfg = DeltaLMConfig(max_tokens=48, select_tokens=40, steps=4, n_bootstrap=50)
    rep = delta_lm_report(tiny_lm, LAYER, prior, TEXTS[:16], train, cfg, max_seq_len=32, sae=sae)
    m = rep["methods"]
    assert list(m) == ["glp", "sae", "pca", "mean_ablation"] and rep["n_tokens"] == 48 and rep["glp_passes"] == 2
    assert rep["n_select_tokens"] == 40 and m["sae"]["k"] == 4 and m["sae"]["n_latents"] == 2 * tiny_lm.d_model
    assert set(rep["paired"]) == {"glp_minus_sae", "glp_minus_pca"}
    p = rep["paired"]["glp_minus_sae"]
    assert p["d"] == pytest.approx(m["glp"]["delta_ce"] - m["sae"]["delta_ce"]) and p["ci"][0] <= p["d"] <= p["ci"][1]
    assert all(np.isfinite(v["delta_ce"]) for v in m.values())
    md = delta_lm_markdown(rep)
    assert "mean-ablation" in md and "SAE (TopK k=4" in md and "GLP − SAE (paired)" in md


def test_pca_k_is_matched_on_the_selection_documents_not_the_scored_ones(tiny_lm):
    """k is the smallest whose error on the selection documents is at most the GLP's there; the scored rows only
    report it (recomputed here from the same ingredients)."""
    from glp.uses.delta_lm import layer_rows
    from glp.data.stats import Normalizer
    from glp.prior.manifold import sdedit

    prior = tiny_prior(tiny_lm.d_model)
    train = np.random.default_rng(1).normal(size=(400, tiny_lm.d_model)).astype(np.float32)
    cfg = DeltaLMConfig(max_tokens=48, select_tokens=40, steps=4, n_bootstrap=50)
    rep = delta_lm_report(tiny_lm, LAYER, prior, TEXTS[:16], train, cfg, max_seq_len=32)
    scored, nxt = heldout_docs(tiny_lm, TEXTS[:16], 32, 48)
    select, _ = heldout_docs(tiny_lm, TEXTS[:16], 32, 40, start=nxt)
    norm = Normalizer(prior.normalizer.mean, prior.normalizer.std)
    z_sel = norm.normalize(layer_rows(tiny_lm, LAYER, batch_docs(tiny_lm, select)))
    g = torch.Generator().manual_seed(cfg.seed + 1)
    glp_sel = float(((norm.normalize(sdedit(prior, norm.denormalize(z_sel), cfg.t_start, cfg.steps, "euler", g))
                      - z_sel) ** 2).mean())
    mu, axes = fit_pca(norm.normalize(torch.as_tensor(train)).numpy())
    mse = pca_mse_by_k(z_sel, mu, axes)
    k = rep["methods"]["pca"]["k"]
    assert mse[k] <= glp_sel + 1e-9 and (k == 0 or mse[k - 1] > glp_sel)


def test_selection_documents_follow_the_scored_ones_without_overlap(tiny_lm):
    scored, nxt = heldout_docs(tiny_lm, TEXTS, 32, 30)
    select, _ = heldout_docs(tiny_lm, TEXTS, 32, 30, start=nxt)
    assert sum(len(s) - 1 for s in scored) == 30 and 0 < nxt < len(TEXTS) and select
    from glp.data.activations import tokenize_doc

    assert select[0] == tokenize_doc(tiny_lm, TEXTS[nxt], 32)[: len(select[0])]


def test_token_doc_ids_follow_token_ce_order(tiny_lm):
    batches = batch_docs(tiny_lm, heldout_docs(tiny_lm, TEXTS[:8], 32, 60)[0], batch_size=3)
    ids = token_doc_ids(batches)
    assert len(ids) == len(token_ce(tiny_lm, LAYER, batches, None)) == 60
    lengths = [int(n) for _, m in batches for n in m[:, 1:].sum(1)]
    np.testing.assert_array_equal(np.bincount(ids), lengths)
    assert np.all(np.diff(ids) >= 0)


def test_the_report_says_what_to_do_when_no_documents_are_left_to_choose_k_on(tiny_lm):
    cfg = DeltaLMConfig(max_tokens=10_000, steps=4, n_bootstrap=50)
    with pytest.raises(ValueError, match="lower delta_lm.max_tokens"):
        delta_lm_report(tiny_lm, LAYER, tiny_prior(tiny_lm.d_model), TEXTS[:4],
                        np.zeros((40, tiny_lm.d_model), np.float32), cfg, max_seq_len=32)
