"""1-D probing: the protocol picks the unit that carries the label, matches sklearn, and is deterministic."""

import numpy as np
import pytest
import torch

from glp.config import DenoiserConfig, ProbeConfig
from glp.prior.denoiser import GLPDenoiser
from glp.uses.probe import (auc_columns, mean_and_ci, extract_features, fit_logreg_1d, glp_meta_neurons,
                       last_token_features, mlp_out_proj, prefilter, probe_1d, run_probing, summarize)
from glp.data.probe_tasks import ProbeTask
from glp.prior import Prior
from glp.data.stats import Normalizer

CFG = ProbeConfig(prefilter=32, n_bootstrap=500, dense_c_grid=[0.1])


def _synthetic(n: int = 600, m: int = 200, unit: int = 137, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    X = rng.normal(size=(n, m)) * rng.uniform(0.5, 3.0, size=m)  # units of very different scales
    X[:, unit] = 0.9 * y + rng.normal(scale=0.6, size=n)
    return X.astype(np.float32), y


def test_prefilter_ranks_the_informative_unit_first():
    X, y = _synthetic()
    keep = prefilter(X[:400], y[:400], 32)
    assert keep[0] == 137 and len(keep) == 32 and len(set(keep.tolist())) == 32


def test_the_1d_probe_picks_the_unit_that_carries_the_label():
    X, y = _synthetic()
    r = probe_1d(X[:400], y[:400], X[400:], y[400:], CFG)
    assert r.unit == 137 and r.sign == 1
    assert r.cv_auc > 0.8 and r.test_auc > 0.8 and r.C in CFG.c_grid


@pytest.mark.parametrize("C", [0.01, 1.0, 100.0])
def test_vectorized_1d_logistic_regression_equals_sklearn(C):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    X = rng.normal(size=(300, 6)) + np.outer(y, [0.0, 0.3, 1.0, 3.0, -2.0, 10.0])  # up to separable
    w, b = fit_logreg_1d(X, y, C)
    for j in range(X.shape[1]):
        ref = LogisticRegression(C=C, tol=1e-12, max_iter=10_000).fit(X[:, [j]], y)
        np.testing.assert_allclose([w[j], b[j]], [ref.coef_[0, 0], ref.intercept_[0]], rtol=1e-4, atol=1e-5)


def test_column_auc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 200)
    S = np.round(rng.normal(size=(200, 5)) + y[:, None] * [0, 0.5, 1, 2, -1], 1)  # rounded: many ties
    S[:, 0] = 0.0  # constant column: AUC 0.5
    np.testing.assert_allclose(auc_columns(S, y), [roc_auc_score(y, S[:, j]) for j in range(5)], atol=1e-12)


def test_mean_and_ci_brackets_the_mean_and_is_seeded():
    vals = [0.6, 0.7, 0.8, 0.9, 0.75]
    m, lo, hi = mean_and_ci(vals, 2000, seed=0)
    assert lo <= m <= hi and m == pytest.approx(0.75)
    assert mean_and_ci(vals, 2000, seed=0) == (m, lo, hi)


def test_the_mlp_hook_returns_the_mlp_width_and_the_input_of_its_output_projection(tiny_lm):
    texts = ["The cat sat on the mat.", "Rain fell all night long on the quiet town.", "Money"]
    resid, mlp = last_token_features(tiny_lm, 1, texts, batch_size=2)
    d = tiny_lm.d_model
    assert resid.shape == (3, d) and mlp.shape == (3, 4 * d)  # GPT-2: n_inner = 4 d
    block = tiny_lm.block(1)
    got = {}
    h = block.mlp.register_forward_hook(lambda m, i, o: got.__setitem__("out", o))
    try:
        for k, t in enumerate(texts):  # one text at a time, no padding: the reference
            ids = torch.tensor([[tiny_lm.bos_id, *tiny_lm.tokenizer(t, add_special_tokens=False)["input_ids"]]])
            with torch.no_grad():
                hs = tiny_lm.model(input_ids=ids, output_hidden_states=True).hidden_states
                np.testing.assert_allclose(resid[k], hs[2][0, -1].numpy(), rtol=1e-4, atol=1e-5)
                proj = mlp_out_proj(block)(torch.from_numpy(mlp[k])[None])
            np.testing.assert_allclose(proj[0].numpy(), got["out"][0, -1].numpy(), rtol=1e-4, atol=1e-5)
    finally:
        h.remove()


def _tiny_prior(d: int) -> Prior:
    torch.manual_seed(0)
    den = GLPDenoiser(d, DenoiserConfig(n_blocks=2, time_dim=16)).eval()
    for blk in den.blocks:  # give W_down a value so blocks interact
        torch.nn.init.normal_(blk.w_down.weight, std=0.02)
    return Prior(den, Normalizer(torch.zeros(d), torch.ones(d)), {"denoiser": den.config_dict()})


def test_meta_neurons_do_not_depend_on_the_batch_size():
    prior = _tiny_prior(16)
    acts = np.random.default_rng(0).normal(size=(50, 16)).astype(np.float32)
    a = glp_meta_neurons(prior, acts, 0.1, seed=3, batch_size=7)
    b = glp_meta_neurons(prior, acts, 0.1, seed=3, batch_size=50)
    assert a.shape == (50, prior.denoiser.n_meta_neurons)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_probe_results_are_identical_across_two_runs(tiny_lm):
    from tests.conftest import TEXTS

    texts = sorted(set(TEXTS)) * 1
    texts = [f"{t} number {i}" for i in range(6) for t in texts]  # 48 distinct texts
    y = np.array([int("the" in t.lower().split()[:2]) for t in texts])
    idx = np.random.default_rng(0).permutation(len(texts))
    tr, te = idx[:32], idx[32:]
    task = ProbeTask("starts_with_the", {"category": "test"}, [texts[i] for i in tr], y[tr], [texts[i] for i in te], y[te])
    prior = _tiny_prior(tiny_lm.d_model)
    cfg = ProbeConfig(prefilter=8, folds=3, n_bootstrap=200, dense_c_grid=[0.1], families=["layer", "mlp", "glp"])

    def once():
        feats = extract_features(tiny_lm, 1, texts, cfg.families, cfg, prior=prior)
        rows = run_probing([task], feats, {t: i for i, t in enumerate(texts)}, cfg)
        return rows, summarize(rows, cfg.families, cfg)

    first, second = once(), once()
    assert first == second
    rows, summary = first
    assert set(rows[0]) >= {"layer", "mlp", "glp"} and 0 <= rows[0]["glp"]["test_auc"] <= 1
    assert set(summary["glp_minus"]) == {"layer", "mlp"}


def test_cv_auc_shortcut_equals_fitted_probes_for_every_c():
    """The 1-D CV AUC needs no fit: it equals that of StandardScaler + fitted logistic regressions at any C."""
    from sklearn.model_selection import StratifiedKFold

    from glp.uses.probe import _standardize, cv_auc_1d

    X, y = _synthetic(n=300, m=40, unit=7)
    folds = list(StratifiedKFold(5, shuffle=True, random_state=0).split(X, y))
    shortcut = cv_auc_1d(X.astype(np.float64), y, folds)
    for C in (0.001, 1.0, 1000.0):
        fitted = np.zeros(X.shape[1])
        for tr, va in folds:
            A, V = _standardize(X[tr].astype(np.float64), X[va].astype(np.float64))
            w, b = fit_logreg_1d(A, y[tr], C)
            fitted += auc_columns(V * w + b, y[va]) / len(folds)
        np.testing.assert_allclose(shortcut, fitted, atol=1e-12)
