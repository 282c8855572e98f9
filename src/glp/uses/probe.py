"""Meta-neuron 1-D probing (DESIGN.md): GLP meta-neurons against raw layer dims, raw MLP neurons and SAE latents.

Features of a text are read at its last token. Families (one interface: texts -> (n, units) float32):
    layer  residual-stream output of block `layer` (what the prior models), d units
    mlp    the hidden activation of that block's MLP (input of its output projection), d_mlp units
    glp    meta-neurons of all denoiser blocks, one pass on the normalized activation noised to t (seeded)
    sae    TopK SAE latents (asset `sae`, trained on the same store)
The 1-D protocol, per task and family: keep the `prefilter` units with the largest |class-mean difference|
on train; for each, StandardScaler + 1-D L2 logistic regression with C chosen by stratified k-fold CV
ROC-AUC; the unit with the best CV AUC is refitted on all of train and scored on test. The thousands of
1-D fits are done at once by a vectorized Newton solver with the objective of sklearn's LogisticRegression
(tests check they agree); the dense reference probe is sklearn's own. Means over tasks get bootstrap CIs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from glp.ci import bootstrap_ci
from glp.config import ProbeConfig
from glp.data.activations import tokenize_doc
from glp.data.lm import capture_residual, find_module, pad_tokens, run_until_captured
from glp.progress import Log, Progress
from glp.report import inline_interval_chart, markdown_table, pyplot, to_png
from glp.uses.sae import sae_latents

FAMILY_LABELS = {"sae": "SAE", "layer": "raw layer", "mlp": "raw MLP neuron", "glp": "GLP"}
PAPER_MEAN_AUC = {"sae": 0.70, "layer": 0.77, "mlp": 0.79, "glp": 0.84}
"""The paper's mean 1-D AUC on Llama-1B (Table 4)."""

# Output projection of the MLP inside a decoder block, per architecture: its *input* is the MLP's hidden
# activation (GPT-2: act(c_fc x); Llama/Mistral: act(gate x) * up x; NeoX; OPT; GPT-J; Phi).
_MLP_OUT = ("mlp.c_proj", "mlp.down_proj", "mlp.dense_4h_to_h", "fc2", "mlp.fc_out", "mlp.fc2")


class ProbeError(ValueError):
    """Probing cannot run as configured (e.g. a model whose MLP cannot be found)."""


# ---------------------------------------------------------------- feature extractors


def mlp_out_proj(block: nn.Module) -> nn.Module:
    """The MLP output projection of a decoder block (we hook its input), or a clear error."""
    found = find_module(block, _MLP_OUT)
    if found is not None:
        return found
    raise ProbeError(f"cannot find the MLP output projection in {type(block).__name__} "
                     f"(looked for {', '.join(_MLP_OUT)}): add its name to glp.uses.probe._MLP_OUT")


@torch.no_grad()
def last_token_features(lm: Any, layer: int, texts: Sequence[str], max_seq_len: int = 128,
                        batch_size: int = 64, log: Log | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Last-token (residual output of block `layer` (n, d), MLP hidden activation of that block (n, d_mlp)).

    Texts are tokenized as in the activation store (`[BOS] + tokens`, truncated) and right-padded; the
    forward stops after the block.
    """
    block = lm.block(layer)
    box: dict[str, torch.Tensor] = {}

    def mlp_hook(_m: nn.Module, inputs: tuple) -> None:
        box["mlp"] = inputs[0]

    seqs = [tokenize_doc(lm, t, max_seq_len) for t in texts]
    order = sorted(range(len(seqs)), key=lambda i: -len(seqs[i]))  # length-sorted batches: less padding
    resid: list[np.ndarray] = [np.empty(0)] * len(seqs)
    mlp: list[np.ndarray] = [np.empty(0)] * len(seqs)
    handle = mlp_out_proj(block).register_forward_pre_hook(mlp_hook)
    progress = Progress("probe features", len(seqs), "text", log)
    try:
        with torch.inference_mode(), capture_residual(lm, layer, stop=True) as cap:
            for b in range(0, len(order), batch_size):
                idx = order[b : b + batch_size]
                ids, mask = pad_tokens([seqs[i] for i in idx], lm.pad_id)
                acts = run_until_captured(lm, cap, input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device))
                hidden = box.pop("mlp")
                last = mask.sum(1) - 1  # (B,) position of the last real token
                rows = torch.arange(len(idx))
                a = acts[rows, last.to(acts.device)].float().cpu().numpy()
                h = hidden.reshape(len(idx), ids.shape[1], -1)[rows, last.to(hidden.device)].float().cpu().numpy()
                for r, i in enumerate(idx):
                    resid[i], mlp[i] = a[r], h[r]
                progress.update(len(idx))
    finally:
        handle.remove()
    return np.stack(resid).astype(np.float32), np.stack(mlp).astype(np.float32)


@torch.no_grad()
def glp_meta_neurons(prior: Any, acts: np.ndarray, t: float, seed: int, batch_size: int = 2048) -> np.ndarray:
    """Meta-neurons (n, n_blocks*H) of one denoiser pass on normalized `acts` noised to level t.

    x_t = (1 - t) x + t eps with eps drawn for all n rows at once from a generator seeded by `seed`, so
    row i's features do not depend on the batch size.
    """
    dev = next(prior.denoiser.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(acts, dtype=np.float32))
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    out = []
    for i in range(0, len(x), batch_size):
        z = prior.normalizer.normalize(x[i : i + batch_size].to(dev))
        xt = (1 - t) * z + t * eps[i : i + batch_size].to(dev)
        _, meta = prior.denoiser(xt, t, return_meta=True)
        out.append(meta.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, prior.denoiser.n_meta_neurons), np.float32)


def sae_features(sae: Any, normalizer: Any, acts: np.ndarray) -> np.ndarray:
    """TopK SAE latents (n, n_latents) of raw activations."""
    return sae_latents(sae, normalizer, torch.from_numpy(np.ascontiguousarray(acts, dtype=np.float32))).numpy()


# ---------------------------------------------------------------- the 1-D protocol


def prefilter(X: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k columns with the largest |mean(X | y=1) - mean(X | y=0)|, largest first (stable)."""
    diff = np.abs(X[y == 1].mean(0, dtype=np.float64) - X[y == 0].mean(0, dtype=np.float64))
    return np.argsort(-diff, kind="stable")[: min(k, X.shape[1])]


def auc_columns(scores: np.ndarray, y: np.ndarray) -> np.ndarray:
    """ROC-AUC of every column of `scores` (n, m) for labels y (n,) — ties count half (= sklearn's)."""
    from scipy.stats import rankdata

    pos = y == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    ranks = rankdata(scores, axis=0)  # average ranks for ties
    return (ranks[pos].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def _standardize(X_fit: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    # StandardScaler semantics: population std, a constant column is left unscaled (std treated as 1)
    mean = X_fit.mean(0)
    std = X_fit.std(0)
    std[std < 10 * np.finfo(np.float64).eps] = 1.0
    return [(A - mean) / std for A in (X_fit, *others)]


def _objective(X: np.ndarray, ys: np.ndarray, w: np.ndarray, b: np.ndarray, C: float) -> np.ndarray:
    return C * np.logaddexp(0.0, -ys * (X * w + b)).sum(0) + 0.5 * w * w


def fit_logreg_1d(X: np.ndarray, y: np.ndarray, C: float, max_iter: int = 50, tol: float = 1e-10
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Every column of X (n, m) as its own 1-D logistic regression: (w (m,), b (m,)).

    Minimizes C * sum log(1 + exp(-s (w x + b))) + w^2 / 2 (s = ±1; intercept unpenalized), the objective
    of sklearn's LogisticRegression(C=C) with the default lbfgs solver, by damped Newton steps on all m
    columns at once (2x2 Hessians).
    """
    X = np.asarray(X, dtype=np.float64)
    n, m = X.shape
    ys = (2.0 * y - 1.0)[:, None]
    w = np.zeros(m)
    b = np.full(m, np.log(max(y.mean(), 1e-12) / max(1 - y.mean(), 1e-12)))
    f = _objective(X, ys, w, b, C)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(X * w + b)))
        r = p - y[:, None]
        s = p * (1 - p)
        gw, gb = C * (r * X).sum(0) + w, C * r.sum(0)
        sx = s * X
        hww, hwb, hbb = C * (sx * X).sum(0) + 1.0, C * sx.sum(0), C * s.sum(0) + 1e-12
        det = hww * hbb - hwb * hwb
        dw, db = (hbb * gw - hwb * gb) / det, (hww * gb - hwb * gw) / det
        step = np.ones(m)
        for _ in range(20):  # backtracking: halve the step where the objective would rise
            f_new = _objective(X, ys, w - step * dw, b - step * db, C)
            worse = f_new > f + 1e-12 * np.abs(f)
            if not worse.any():
                break
            step[worse] *= 0.5
        w, b, f = w - step * dw, b - step * db, np.minimum(f, f_new)
        if max(np.abs(step * dw).max(), np.abs(step * db).max()) < tol:
            break
    return w, b


@dataclass
class OneDResult:
    unit: int  # column index in the family's features
    C: float
    cv_auc: float
    test_auc: float
    prefilter_rank: int  # rank of the unit by |class-mean difference|
    sign: int  # +1: the unit is higher for the positive class


def cv_auc_1d(X: np.ndarray, y: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Mean validation ROC-AUC over `folds` of each column's 1-D L2 logistic probe (m,) — the same for every C.

    With one feature, w x + b is monotone in x with the sign of w, and for any C > 0 sign(w) is the sign
    of the fold's class-mean difference (the objective minimized over b is convex in w with slope
    -C n cov(x, y) at w = 0), so the AUC needs no fit. `test_cv_auc_shortcut_equals_fitted_probes` checks
    this against the fitted probes; StandardScaler (a positive affine map) does not change AUCs either.
    """
    auc = np.zeros(X.shape[1])
    for tr, va in folds:
        ytr = y[tr]
        sign = np.sign(X[tr][ytr == 1].mean(0, dtype=np.float64) - X[tr][ytr == 0].mean(0, dtype=np.float64))
        auc += auc_columns(X[va].astype(np.float64) * sign, y[va]) / len(folds)
    return auc


def probe_1d(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, cfg: ProbeConfig
             ) -> OneDResult:
    """The paper's 1-D protocol on one task and one feature family.

    Prefilter -> CV AUC of every kept unit (`cv_auc_1d`) -> best unit (first among ties, prefilter order)
    -> its C by CV over the grid with fitted StandardScaler + logistic regressions (first best C) -> refit
    on all of train -> test AUC.
    """
    from sklearn.model_selection import StratifiedKFold

    keep = prefilter(X_train, y_train, cfg.prefilter)
    Xk = X_train[:, keep].astype(np.float64)
    folds = list(StratifiedKFold(cfg.folds, shuffle=True, random_state=cfg.seed).split(Xk, y_train))
    unit_auc = cv_auc_1d(Xk, y_train, folds)
    j = int(unit_auc.argmax())
    x = Xk[:, [j]]
    c_auc = np.zeros(len(cfg.c_grid))
    for tr, va in folds:
        A, V = _standardize(x[tr], x[va])
        for ci, C in enumerate(cfg.c_grid):
            w, b = fit_logreg_1d(A, y_train[tr], C)
            c_auc[ci] += auc_columns(V * w + b, y_train[va])[0] / len(folds)
    C = cfg.c_grid[int(c_auc.argmax())]
    A, T = _standardize(x, X_test[:, [keep[j]]].astype(np.float64))
    w, b = fit_logreg_1d(A, y_train, C)
    test = float(auc_columns(T * w + b, y_test)[0])
    return OneDResult(int(keep[j]), float(C), float(c_auc.max()), test, j, 1 if w[0] >= 0 else -1)


def probe_dense(X_train: np.ndarray, y_train: np.ndarray, X_test: np.ndarray, y_test: np.ndarray,
                cfg: ProbeConfig) -> dict[str, float]:
    """Reference: StandardScaler + L2 logistic regression on all units, C by the same CV (sklearn)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def model(C: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=300, tol=1e-3))

    grid = cfg.dense_c_grid
    cv = StratifiedKFold(cfg.folds, shuffle=True, random_state=cfg.seed)
    # one C (the default, for time): no CV, cv_auc None
    scores = [float(cross_val_score(model(C), X_train, y_train, cv=cv, scoring="roc_auc").mean()) for C in grid] \
        if len(grid) > 1 else [None]
    C = grid[int(np.argmax(scores))] if len(grid) > 1 else grid[0]
    fitted = model(C).fit(X_train, y_train)
    return {"C": C, "cv_auc": scores[0] if len(grid) == 1 else max(scores),
            "test_auc": float(roc_auc_score(y_test, fitted.decision_function(X_test)))}


def mean_and_ci(values: Sequence[float], n_boot: int, seed: int, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, lo, hi): the mean over the items (tasks) and its percentile bootstrap CI."""
    lo, hi = bootstrap_ci(np.asarray(values, dtype=np.float64), n_boot, seed, level)
    return float(np.mean(values)), lo, hi


# ---------------------------------------------------------------- the pipeline step


def extract_features(lm: Any, layer: int, texts: Sequence[str], families: Sequence[str], cfg: ProbeConfig,
                     prior: Any = None, sae: Any = None, sae_norm: Any = None,
                     log: Log | None = None) -> dict[str, np.ndarray]:
    """Every requested family's features of `texts`: {family: (n, units) float32}."""
    resid, mlp = last_token_features(lm, layer, texts, cfg.max_seq_len, cfg.batch_size, log)
    feats: dict[str, np.ndarray] = {}
    for fam in families:
        if fam == "layer":
            feats[fam] = resid
        elif fam == "mlp":
            feats[fam] = mlp
        elif fam == "glp":
            feats[fam] = glp_meta_neurons(prior, resid, cfg.t, cfg.seed)
        elif fam == "sae":
            feats[fam] = sae_features(sae, sae_norm, resid)
    return feats


def run_probing(tasks: Sequence[Any], feats: dict[str, np.ndarray], index: dict[str, int], cfg: ProbeConfig,
                log: Log | None = None) -> list[dict[str, Any]]:
    """1-D (and dense) probes of every task x family; `index` maps a text to its row in `feats`."""
    rows = []
    progress = Progress("probe tasks", len(tasks), "task", log, every_s=0)  # every task: the event log keeps them all
    for task in tasks:
        tr = np.array([index[t] for t in task.train_text])
        te = np.array([index[t] for t in task.test_text])
        row: dict[str, Any] = {"task": task.name, "category": task.info.get("category", ""),
                               "n_train": len(tr), "n_test": len(te)}
        for fam, F in feats.items():
            r = probe_1d(F[tr], task.train_y, F[te], task.test_y, cfg)
            row[fam] = {"unit": r.unit, "C": r.C, "cv_auc": r.cv_auc, "test_auc": r.test_auc,
                        "prefilter_rank": r.prefilter_rank, "sign": r.sign}
            if cfg.dense:
                row[fam]["dense"] = probe_dense(F[tr], task.train_y, F[te], task.test_y, cfg)
        rows.append(row)
        progress.update(1, lambda: f"{task.name}: " + ", ".join(f"{f} {row[f]['test_auc']:.3f}" for f in feats))
    return rows


def summarize(rows: Sequence[dict[str, Any]], families: Sequence[str], cfg: ProbeConfig) -> dict[str, Any]:
    """Mean test AUC per family with bootstrap CIs (1-D and dense), and paired GLP-minus-baseline gaps."""
    out: dict[str, Any] = {"one_d": {}, "dense": {}, "glp_minus": {}}
    for fam in families:
        m, lo, hi = mean_and_ci([r[fam]["test_auc"] for r in rows], cfg.n_bootstrap, cfg.seed)
        out["one_d"][fam] = {"mean": m, "ci_low": lo, "ci_high": hi}
        if cfg.dense:
            m, lo, hi = mean_and_ci([r[fam]["dense"]["test_auc"] for r in rows], cfg.n_bootstrap, cfg.seed)
            out["dense"][fam] = {"mean": m, "ci_low": lo, "ci_high": hi}
    if "glp" in families:
        for fam in families:
            if fam != "glp":
                gaps = [r["glp"]["test_auc"] - r[fam]["test_auc"] for r in rows]
                m, lo, hi = mean_and_ci(gaps, cfg.n_bootstrap, cfg.seed)
                out["glp_minus"][fam] = {"mean": m, "ci_low": lo, "ci_high": hi}
    means = {f: out["one_d"][f]["mean"] for f in families}
    out["ordering"] = sorted(families, key=lambda f: means[f])
    paper = [f for f in ("sae", "layer", "mlp", "glp") if f in families]
    out["paper_ordering_reproduced"] = out["ordering"] == paper
    return out


def probing_headline(summary: dict[str, Any], families: Sequence[str], n_tasks: int) -> str:
    """The probing result in one place (asset page, table.md, README): GLP's mean 1-D AUC with its CI and each paired
    GLP − baseline gap with its CI, read as a finding only where the CI excludes 0."""
    if "glp" not in families:
        return "Mean 1-D AUC: " + "; ".join(f"{FAMILY_LABELS[f]} {summary['one_d'][f]['mean']:.3f} "
                                            f"[{summary['one_d'][f]['ci_low']:.3f}, {summary['one_d'][f]['ci_high']:.3f}]"
                                            for f in families) + "."
    g = summary["one_d"]["glp"]
    verdicts: dict[str, list[str]] = {"better than": [], "worse than": [], "not distinguishable from": []}
    for fam, gap in summary["glp_minus"].items():
        text = f"{FAMILY_LABELS[fam]} ({gap['mean']:+.3f} [{gap['ci_low']:+.3f}, {gap['ci_high']:+.3f}])"
        key = "better than" if gap["ci_low"] > 0 else "worse than" if gap["ci_high"] < 0 else "not distinguishable from"
        verdicts[key].append(text)
    parts = [f"**GLP meta-neurons: mean 1-D AUC {g['mean']:.3f} [{g['ci_low']:.3f}, {g['ci_high']:.3f}] over {n_tasks} "
             f"tasks** (paper, Llama-1B: {PAPER_MEAN_AUC['glp']:.2f})."]
    parts += [f"GLP is {k} {' and '.join(v)}{': the paired CI excludes 0' if k != 'not distinguishable from' else ': the paired CI includes 0'}."
              for k, v in verdicts.items() if v]
    same = summary["paper_ordering_reproduced"]
    parts.append(f"The means {'fall' if same else 'do not fall'} in the paper's order (SAE < raw layer < raw MLP neuron "
                 "< GLP); only gaps whose CI excludes 0 are findings.")
    return " ".join(parts)


def table4_markdown(summary: dict[str, Any], families: Sequence[str], n_tasks: int | None = None) -> str:
    """The paper's Table 4 format: mean 1-D AUC per feature family, ours (95% CI) next to Llama-1B's; with `n_tasks`,
    the headline (probing_headline) above it."""
    rows = []
    for fam in families:
        s = summary["one_d"][fam]
        dense = summary["dense"].get(fam)
        rows.append([FAMILY_LABELS[fam], f"{s['mean']:.3f} [{s['ci_low']:.3f}, {s['ci_high']:.3f}]",
                     f"{PAPER_MEAN_AUC[fam]:.2f}", f"{dense['mean']:.3f}" if dense else ""])
    table = markdown_table(["features", "mean 1-D AUC (95% CI)", "paper, Llama-1B", "dense probe AUC"], rows)
    gaps = "; ".join(f"GLP − {FAMILY_LABELS[f]}: {g['mean']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]"
                     for f, g in summary["glp_minus"].items())
    order = " < ".join(FAMILY_LABELS[f] for f in summary["ordering"])
    head = probing_headline(summary, families, n_tasks) + "\n\n" if n_tasks else ""
    return (f"{head}{table}\n\nOrder of the means here: {order} (paper: SAE < raw layer < raw MLP neuron < GLP).\n\n"
            f"Paired gaps, GLP minus each baseline over the same tasks (95% CI): {gaps}")


def mean_auc_inline(summary: dict[str, Any], families: Sequence[str]) -> str:
    """Mean 1-D AUC per family with its 95% CI as an inline forest plot (glp.report.inline_interval_chart)."""
    rows = [(FAMILY_LABELS[f], summary["one_d"][f]["mean"], summary["one_d"][f]["ci_low"], summary["one_d"][f]["ci_high"])
            for f in families]
    lo = min(0.5, *(r[2] for r in rows))
    return inline_interval_chart(rows, "1-D probing: mean AUC, 95% CI", "test AUC of the best single unit (0.5 = chance)",
                                 xlim=(lo, 1.0))


def per_task_png(rows: Sequence[dict[str, Any]], families: Sequence[str]) -> bytes:
    """Test 1-D AUC per task (rows) and family (markers), as PNG bytes."""
    plt = pyplot()

    colors = {"sae": "#9467bd", "layer": "#1f77b4", "mlp": "#2ca02c", "glp": "#d62728"}
    fig, ax = plt.subplots(figsize=(8.5, 0.28 * len(rows) + 1.2), dpi=100)
    y = np.arange(len(rows))
    for k, fam in enumerate(families):
        ax.scatter([r[fam]["test_auc"] for r in rows], y + (k - (len(families) - 1) / 2) * 0.15, s=14,
                   color=colors.get(fam), label=FAMILY_LABELS[fam])
    ax.set_yticks(y, [r["task"] for r in rows], fontsize=7)
    ax.axvline(0.5, color="grey", lw=0.8, ls=":")
    # xlim past 1.0 so that AUC = 1 points are whole; the legend outside the axes hides no point
    ax.set(xlabel="test ROC-AUC of the best single unit", xlim=(0.4, 1.02), title="1-D probing per task")
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return to_png(fig)


@torch.no_grad()
def meta_neuron_dashboards(prior: Any, store: Any, tokenizer: Any, units: dict[str, tuple[int, int]], cfg: ProbeConfig
                           ) -> str:
    """Markdown: for each task's best meta-neuron, its top-activating held-out tokens with left context.

    `units` maps task -> (meta-neuron index, sign). Meta-neurons are read as in probing (t, seeded noise)
    on the first `dashboard_rows` rows of the store; the activating token is in **bold**.
    """
    n = min(cfg.dashboard_rows, store.n_rows)
    acts = store.rows(0, n)
    doc, pos, tok = (store.provenance(k)[:n] for k in ("doc_id", "position", "token_id"))
    wanted = sorted({u for u, _ in units.values()})
    meta = glp_meta_neurons(prior, acts, cfg.t, cfg.seed + 1)[:, wanted]  # (n, n_wanted)
    col = {u: i for i, u in enumerate(wanted)}

    def snippet(r: int) -> str:
        start = r
        while start > 0 and doc[start - 1] == doc[r] and pos[start - 1] == pos[start] - 1 and r - start < cfg.dashboard_context:
            start -= 1
        left = tokenizer.decode(tok[start:r].tolist()) if r > start else ""
        clean = lambda s: " ".join(s.replace("|", "/").replace("*", "·").split())  # noqa: E731
        return f"…{clean(left)} **{clean(tokenizer.decode([int(tok[r])]))}**"

    parts = []
    for task, (unit, sign) in units.items():
        v = meta[:, col[unit]]
        top = np.argsort(-v, kind="stable")[: cfg.dashboard_top]
        block, within = divmod(unit, prior.denoiser.hidden)
        fires_for = "positive" if sign > 0 else "negative"
        lines = [f"#### {task}: meta-neuron {unit} (block {block}, unit {within}; higher for the {fires_for} class)"]
        lines += [f"{i + 1}. `{v[r]:+.3f}` {snippet(int(r))}" for i, r in enumerate(top)]
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


