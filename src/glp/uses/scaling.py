"""The scaling law: held-out diffusion loss of priors over compute C = 6·N·D, the fit L(C) = E + A·C^(−α), and
whether loss predicts the downstream uses (1-D probing, steering, ΔLM).

A sweep point is one prior (depth n_blocks, width D = width_mult·d with H = hidden_ratio·D, `steps` batches of
activations) and each of its mid-training snapshots (same N, fewer activations D seen), as in the paper. Every
prior is trained once through `glp.prior.train.train_prior` (the DeepSpeed engine) and cached under

    <source root>/scaling/points/<key>/        exported prior (glp.prior.save_prior: atomic) with its snapshots
    <source root>/scaling/evals/<key>-<h>.json  held-out loss of the prior and each snapshot (eval config hash h)
    <source root>/scaling/downstream/<key>-<h>.json  downstream scores per unit (downstream config hash h)
    <source root>/scaling/scaling.json, scaling.png, downstream.png   the report

with <key> a hash of everything the prior depends on (activations version, norm stats, its network and training
config), so adding a point to `scaling.points` trains, evaluates and scores that point only.

The fit minimizes squared residuals of log L (relative errors: the points span a factor of several in loss and
three decades in C), with bounded nonlinear least squares (scipy.optimize.least_squares) from a grid of starts;
CIs are percentile bootstraps over points.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from glp.artifacts import content_hash, write_atomic
from glp.config import DenoiserConfig, ScalingConfig, ScalingPoint, TrainConfig, config_hash
from glp.prior import Prior, load_prior, load_snapshots, save_prior
from glp.prior.evaluate import heldout_loss
from glp.prior.train import train_prior
from glp.progress import Log, nolog
from glp.report import inline_scatter_chart, markdown_table, pyplot, to_png

PAPER_FIT = {"E": 0.52, "A": 435.1, "alpha": 0.169}
"""The paper's fit on Llama-1B activations, C in FLOPs from 1e15 to 2e19."""
PAPER_C_RANGE = (1e15, 2e19)

METRICS = {  # key -> (label, +1 if higher is better, -1 if lower is better)
    "probe_auc": ("1-D probe AUC (mean over tasks)", +1),
    "steer_concept": ("steering concept P(positive) at r", +1),
    "steer_nll_cost": ("steering NLL − raw NLL at r (nats/token)", -1),
    "delta_lm": ("ΔLM: CE increase under GLP SDEdit (nats/token)", -1),
}


def scaling_key(*parts: object) -> str:
    """The scaling cache keys (points, evals, downstream): a 12-digit content hash."""
    return content_hash(*parts, length=12)


class ScalingError(ValueError):
    """The sweep cannot run as configured; the message says what to change."""


# ---------------------------------------------------------------- the sweep's priors


def point_configs(point: ScalingPoint, cfg: ScalingConfig, denoiser: DenoiserConfig,
                  train: TrainConfig) -> tuple[DenoiserConfig, TrainConfig]:
    """The network and training config of one sweep prior: the project's, with the point's depth, width, steps and
    snapshots and the sweep's batch size, learning rate, skip path and seed."""
    dcfg = DenoiserConfig(**{**denoiser.model_dump(), "n_blocks": point.n_blocks, "width_mult": point.width_mult,
                             "hidden_mult": cfg.hidden_ratio * point.width_mult, "skip": cfg.skip})
    tcfg = TrainConfig(**{**train.model_dump(), "steps": point.steps, "snapshots": point.snapshots,
                          "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed})
    return dcfg, tcfg


def point_key(data_version: str, dcfg: DenoiserConfig, tcfg: TrainConfig) -> str:
    """Cache key of a sweep prior: its data (activations + norm stats) and its full network and training config."""
    return scaling_key("scaling-point/1", data_version, config_hash(dcfg), config_hash(tcfg))


def train_point(store: Any, normalizer: Any, dcfg: DenoiserConfig, tcfg: TrainConfig, out: Path, device: Any,
                log: Log = nolog) -> dict[str, Any]:
    """Train one sweep prior (resuming from its checkpoints) and export it with its snapshots to `out` atomically;
    a prior already exported at `out` is returned as it is. Returns {n_params, steps, seconds, trained}."""
    import shutil


    if (out / "config.json").is_file():
        meta = json.loads((out / "config.json").read_text())
        return {"n_params": meta["n_params"], "steps": meta["steps"], "seconds": meta["train_seconds"], "trained": False}
    if tcfg.steps * tcfg.batch_size > store.n_rows:
        log(f"{out.name}: {tcfg.steps * tcfg.batch_size:,} rows asked of a store of {store.n_rows:,}: rows repeat")
    ckpt = out.parent.parent / "ckpt" / out.name
    model, res = train_prior(store, normalizer, dcfg, tcfg, ckpt, device, log=log)
    meta = {"n_params": res.n_params, "steps": res.steps, "batch_size": tcfg.batch_size, "train_seconds": res.seconds,
            "final_loss": float(np.mean(res.losses[-50:])), "losses": res.losses,
            "train_config": tcfg.model_dump(mode="json")}
    save_prior(out, model, normalizer, meta, snapshots=res.snapshots)
    shutil.rmtree(ckpt, ignore_errors=True)
    return {"n_params": res.n_params, "steps": res.steps, "seconds": res.seconds, "trained": True}


def checkpoints_of(prior_dir: Path, device: Any = "cpu") -> list[tuple[int, Any]]:
    """(step, Prior) of every snapshot of a sweep prior and of its final weights, by step."""
    prior = load_prior(prior_dir, device)
    snaps = [(k, Prior(net, prior.normalizer, prior.config)) for k, net in load_snapshots(prior, prior_dir)]
    return [*snaps, (int(prior.config["steps"]), prior)]


# ---------------------------------------------------------------- the fit


def power_law(C: np.ndarray, E: float, A: float, alpha: float) -> np.ndarray:
    return E + A * np.power(C, -alpha)


def _fit_once(logc: np.ndarray, logl: np.ndarray, c0: float, starts: Sequence[tuple[float, float, float]]
              ) -> tuple[np.ndarray, Any]:
    """Least squares of log L = log(E + exp(a) (C/C0)^(−α)) over (E, a, α) in bounds, best of `starts`."""
    from scipy.optimize import least_squares

    x = logc - np.log(c0)
    lmin = float(np.exp(logl.min()))

    def resid(p: np.ndarray) -> np.ndarray:
        return np.log(p[0] + np.exp(p[1] - p[2] * x)) - logl

    best = None
    for s in starts:
        s = np.clip(s, [0.0, -50.0, 0.0], [lmin * (1 - 1e-6), 50.0, 5.0])
        r = least_squares(resid, s, bounds=([0.0, -50.0, 0.0], [lmin, 50.0, 5.0]), method="trf", x_scale="jac",
                          max_nfev=2000)
        if best is None or r.cost < best.cost:
            best = r
    return best.x, best


def fit_power_law(C: Sequence[float], L: Sequence[float], n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict[str, Any]:
    """Fit L(C) = E + A·C^(−α) (log-space residuals, bounded: 0 ≤ E ≤ min L, 0 ≤ α ≤ 5) and bootstrap the points
    for percentile CIs of E, A, α and of the curve. Needs 4 points or more with at least 3 distinct C."""
    C, L = np.asarray(C, np.float64), np.asarray(L, np.float64)
    if len(C) != len(L) or len(C) < 4 or len(np.unique(C)) < 3:
        raise ScalingError(f"a power-law fit needs at least 4 points with 3 distinct C; got {len(C)} points, "
                           f"{len(np.unique(C))} distinct C: add points to scaling.points")
    if not (np.all(np.isfinite(C)) and np.all(np.isfinite(L)) and C.min() > 0 and L.min() > 0):
        raise ScalingError(f"C and L must be finite and positive; got C in [{C.min()}, {C.max()}], "
                           f"L in [{L.min()}, {L.max()}]")
    logc, logl = np.log(C), np.log(L)
    c0 = float(np.exp(logc.mean()))  # the geometric mean: a = log A − α log C0 stays O(1)
    starts = []
    for e_frac in (0.0, 0.5, 0.9):  # E as a share of min L; a and α from the line through log(L − E) vs log C
        y = np.log(np.maximum(L - e_frac * L.min(), 1e-12))
        slope, icpt = np.polyfit(logc - np.log(c0), y, 1)
        starts.append((e_frac * L.min(), icpt, min(max(-slope, 1e-3), 5.0)))
    p, res = _fit_once(logc, logl, c0, starts)
    E, a, alpha = (float(v) for v in p)
    A = float(np.exp(a) * c0**alpha)
    resid = logl - np.log(power_law(C, E, A, alpha))
    rng = np.random.default_rng(seed)
    boots = []
    for _ in range(n_boot):
        i = rng.integers(0, len(C), len(C))
        if len(np.unique(C[i])) < 3:  # too few distinct C to identify three parameters
            continue
        q, _ = _fit_once(logc[i], logl[i], c0, [tuple(p)])
        boots.append(q)
    b = np.array(boots)
    qs = [(1 - level) / 2, (1 + level) / 2]
    grid = np.logspace(logc.min() / np.log(10), logc.max() / np.log(10), 60)
    band = np.array([q[0] + np.exp(q[1] - q[2] * (np.log(grid) - np.log(c0))) for q in b])
    log_a_boot = b[:, 1] + b[:, 2] * np.log(c0)
    return {
        "E": E, "A": A, "alpha": alpha,
        "E_ci": np.quantile(b[:, 0], qs).tolist(), "A_ci": np.exp(np.quantile(log_a_boot, qs)).tolist(),
        "alpha_ci": np.quantile(b[:, 2], qs).tolist(),
        "converged": bool(res.success and np.all(np.isfinite(p))),
        "status": int(res.status), "message": str(res.message), "nfev": int(res.nfev),
        "at_bound": {"E_at_0": bool(E <= 1e-9), "E_at_min_loss": bool(E >= L.min() * (1 - 1e-6)),
                     "alpha_at_0": bool(alpha <= 1e-9), "alpha_at_5": bool(alpha >= 5 - 1e-9)},
        "residuals_log": resid.tolist(), "rms_residual_log": float(np.sqrt(np.mean(resid**2))),
        "max_abs_residual_log": float(np.abs(resid).max()),
        "n_points": len(C), "n_boot_ok": len(b), "C0": c0, "objective": "log L, least squares",
        "curve": {"C": grid.tolist(), "L": power_law(grid, E, A, alpha).tolist(),
                  "lo": np.quantile(band, qs[0], axis=0).tolist(), "hi": np.quantile(band, qs[1], axis=0).tolist()},
    }


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rho, nan when either side is constant."""
    from scipy.stats import spearmanr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(spearmanr(x, y).statistic)


def rho_ci_points(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int, level: float = 0.95) -> list[float]:
    """Percentile bootstrap CI of Spearman's rho resampling (x, y) pairs; constant resamples are skipped."""
    rng = np.random.default_rng(seed)
    boots = [spearman(x[i], y[i]) for i in (rng.integers(0, len(x), len(x)) for _ in range(n_boot))]
    boots = [b for b in boots if np.isfinite(b)]
    return np.quantile(boots, [(1 - level) / 2, (1 + level) / 2]).tolist() if boots else [float("nan")] * 2


# ---------------------------------------------------------------- held-out loss of every point


def point_losses(prior_dir: Path, z: Any, n_t: int, seed: int, out: Path) -> list[dict[str, Any]]:
    """Held-out loss (glp.prior.evaluate.heldout_loss: fixed t levels, seeded noise) of a sweep prior's snapshots and final
    weights on normalized rows z (n, d), cached in `out` (JSON, atomic)."""
    if out.is_file():
        return json.loads(out.read_text())
    rows = []
    for step, prior in checkpoints_of(prior_dir):
        cfg = prior.config
        loss = heldout_loss(prior.denoiser, z, n_t, seed)
        rows.append({"step": step, "rows_seen": step * cfg["batch_size"], "n_params": cfg["n_params"],
                     "C": 6.0 * cfg["n_params"] * step * cfg["batch_size"], "loss": loss["mean"],
                     "loss_by_t": loss["loss"], "final": step == cfg["steps"]})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(rows, indent=1))
    return rows


def spearman_loss_vs_c(points: Sequence[dict[str, Any]]) -> float:
    """Spearman rho of held-out loss vs C over the sweep's points (< 0: loss falls with compute)."""
    return spearman(np.array([p["C"] for p in points]), np.array([p["loss"] for p in points]))


# ---------------------------------------------------------------- downstream scores of a prior


def downstream_correlations(losses: np.ndarray, per_unit: dict[str, np.ndarray], units: dict[str, np.ndarray],
                            n_boot: int, seed: int, level: float = 0.95) -> dict[str, Any]:
    """For each metric ({metric: (n_priors, n_values)} with its unit per value): its mean per prior, Spearman rho of
    held-out loss vs that mean, and two percentile bootstrap CIs of rho: over priors (pairs resampled) and over units
    (tasks / prompts / documents resampled, the priors fixed: measurement noise only). `agreement` = rho signed so
    that > 0 means lower loss, better downstream; `verdict` reads the priors' CI."""
    qs = [(1 - level) / 2, (1 + level) / 2]
    out = {}
    for m, vals in per_unit.items():
        vals = np.asarray(vals, np.float64)
        codes = np.unique(units[m], return_inverse=True)[1].ravel()
        n_units = int(codes.max()) + 1
        sums = np.stack([np.bincount(codes, v, n_units) for v in vals])  # (n_priors, n_units)
        counts = np.bincount(codes, minlength=n_units).astype(np.float64)
        means = sums.sum(1) / counts.sum()
        rho = spearman(losses, means)
        rng = np.random.default_rng(seed)
        pick = rng.integers(0, n_units, (n_boot, n_units))
        boot_means = sums[:, pick].sum(2) / counts[pick].sum(1)  # (n_priors, n_boot)
        unit_rhos = [r for r in (spearman(losses, boot_means[:, b]) for b in range(n_boot)) if np.isfinite(r)]
        label, sign = METRICS[m]
        ci_points = rho_ci_points(losses, means, n_boot, seed)
        agree = sorted(-sign * c for c in ci_points)  # the CI of the agreement, low first
        verdict = ("holds" if agree[0] > 0 else "contradicted" if agree[1] < 0 else "inconclusive")
        out[m] = {"label": label, "higher_is_better": sign > 0, "values": means.tolist(), "spearman": rho,
                  "ci_points": ci_points,
                  "ci_units": np.quantile(unit_rhos, qs).tolist() if unit_rhos else [float("nan")] * 2,
                  "agreement": -sign * rho, "verdict": verdict, "n_units": n_units}
    return out


# ---------------------------------------------------------------- plots and text


def scaling_png(report: dict[str, Any]) -> bytes:
    """Left: every point's held-out loss vs C (log x), coloured by prior, with the fit and its 95% band and the
    Gaussian prior's loss. Right: the shape of the law: reducible loss (L − E) relative to the start of each range
    vs C relative to it, ours (with band) against the paper's (E=0.52, A=435.1, α=0.169 over 1e15–2e19 FLOPs)."""
    plt = pyplot()
    fit = report["fit"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(13, 5), dpi=100)
    for i, prior in enumerate(report["priors"]):
        pts = prior["points"]
        ax.plot([p["C"] for p in pts], [p["loss"] for p in pts], "o-", color=plt.cm.viridis(i / max(1, len(report["priors"]) - 1)),
                ms=5, lw=0.8, label=f"{prior['n_blocks']} block{'s' * (prior['n_blocks'] > 1)} × D={prior['width']} ({prior['n_params'] / 1e6:.2f}M)")
    cv = fit["curve"]
    ax.fill_between(cv["C"], cv["lo"], cv["hi"], color="#9ecae1", alpha=0.5, label="fit, 95% band (bootstrap)")
    ax.plot(cv["C"], cv["L"], "--", color="#08519c",
            label=f"L = {fit['E']:.3f} + {fit['A']:.3g}·C^(−{fit['alpha']:.3f})")
    ax.axhline(report["gaussian"]["loss"], color="gray", ls=":", label="full-covariance Gaussian prior")
    ax.set(xscale="log", xlabel="C = 6·N·D (FLOPs)", ylabel="held-out flow-matching loss (MSE per dim)",
           title=f"Held-out loss vs compute ({len(report['points'])} points)")
    ax.legend(fontsize=7)
    c_lo, c_hi = min(cv["C"]), max(cv["C"])
    rel = np.logspace(0, np.log10(PAPER_C_RANGE[1] / PAPER_C_RANGE[0]), 60)
    bx.plot(rel, rel ** -PAPER_FIT["alpha"], color="crimson",
            label=f"paper (Llama-1B): α = {PAPER_FIT['alpha']}, {PAPER_C_RANGE[0]:.0e}–{PAPER_C_RANGE[1]:.0e} FLOPs")
    ours = np.asarray(cv["C"]) / c_lo
    base = fit["A"] * c_lo ** -fit["alpha"]
    bx.plot(ours, (np.asarray(cv["L"]) - fit["E"]) / base, color="#08519c",
            label=f"ours: α = {fit['alpha']:.3f} [{fit['alpha_ci'][0]:.3f}, {fit['alpha_ci'][1]:.3f}], "
                  f"{c_lo:.1e}–{c_hi:.1e} FLOPs")
    a_lo, a_hi = fit["alpha_ci"]
    bx.fill_between(ours, ours ** -a_hi, ours ** -a_lo, color="#9ecae1", alpha=0.5, label="ours, α's 95% CI")
    bx.set(xscale="log", yscale="log", xlabel="C / C at the start of the range",
           ylabel="(L − E) / (L − E at the start)", title="Shape of the law: reducible loss over decades of compute")
    bx.legend(fontsize=7)
    return to_png(fig)


def downstream_png(report: dict[str, Any]) -> bytes:
    """Each downstream metric vs held-out loss (one point per prior), with Spearman's rho and its CIs."""
    plt = pyplot()
    corr, pts = report["downstream"]["correlations"], report["downstream"]["points"]
    fig, axes = plt.subplots(1, len(corr), figsize=(4.2 * len(corr), 4), dpi=100, squeeze=False)
    x = [p["loss"] for p in pts]
    for ax, (m, c) in zip(axes[0], corr.items()):
        ax.plot(x, c["values"], "o", color="#1b9e77")
        for p, y in zip(pts, c["values"]):
            ax.annotate(p["label"], (p["loss"], y), xytext=(4, 3), textcoords="offset points", fontsize=6)
        ax.set(xlabel="held-out loss", ylabel=c["label"],
               title=f"ρ = {c['spearman']:+.2f} [{c['ci_points'][0]:+.2f}, {c['ci_points'][1]:+.2f}]: {c['verdict']}")
        ax.title.set_fontsize(9)
        ax.yaxis.label.set_fontsize(8)
    return to_png(fig)


def scaling_inline(report: dict[str, Any]) -> str:
    """The points, the fit and its band on log10 C, as an inline chart (< 1,000 characters)."""
    fit, cv = report["fit"], report["fit"]["curve"]
    lx = np.log10(cv["C"]).tolist()
    return inline_scatter_chart(
        [(float(np.log10(p["C"])), p["loss"]) for p in report["points"]],
        f"loss vs C: α={fit['alpha']:.3f}, E={fit['E']:.3f}", "C = 6ND (log scale), dashed: Gaussian prior",
        line=(lx, cv["L"]), band=(lx, cv["lo"], cv["hi"]), ref=report["gaussian"]["loss"],
        xticks=(f"{min(cv['C']):.0e}", f"{max(cv['C']):.0e}"))


def scaling_headline(report: dict[str, Any]) -> str:
    """The fit and the downstream verdicts in a few sentences."""
    f = report["fit"]

    def ci(c: Sequence[float], fmt: str = ".3f") -> str:
        return f"[{c[0]:{fmt}}, {c[1]:{fmt}}]"

    c = [p["C"] for p in report["points"]]
    text = (f"**L(C) = {f['E']:.3f} {ci(f['E_ci'])} + {f['A']:.3g} {ci(f['A_ci'], '.3g')} · C^(−{f['alpha']:.3f} "
            f"{ci(f['alpha_ci'])})** over {len(c)} points, C {min(c):.1e}–{max(c):.1e} FLOPs "
            f"({np.log10(max(c) / min(c)):.1f} decades; paper: α = {PAPER_FIT['alpha']}). "
            f"Spearman ρ(loss, C) = {report['spearman_loss_vs_c']:+.2f}; the full-covariance Gaussian prior scores "
            f"{report['gaussian']['loss']:.4f}.")
    corr = report.get("downstream", {}).get("correlations", {})
    if corr:
        text += " Lower loss → better downstream? " + "; ".join(
            f"{v['label'].split(' (')[0].split(':')[0]}: {v['verdict']} (ρ {v['spearman']:+.2f} {ci(v['ci_points'], '+.2f')})"
            for v in corr.values()) + "."
    return text


def scaling_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: headline, the fit table, every point, the downstream correlations."""
    f = report["fit"]
    fit = markdown_table(["parameter", "estimate", "95% CI (bootstrap over points)", "paper (Llama-1B)"],
                         [[k, f"{f[k]:.4g}", f"[{f[k + '_ci'][0]:.4g}, {f[k + '_ci'][1]:.4g}]", PAPER_FIT[k]]
                          for k in ("E", "A", "alpha")])
    pts = markdown_table(["prior", "N", "step", "D (rows)", "C (FLOPs)", "held-out loss"],
                         [[p["label"], f"{p['n_params']:,}", p["step"], f"{p['rows_seen']:,}", f"{p['C']:.3g}",
                           f"{p['loss']:.4f}"] for p in report["points"]])
    parts = [scaling_headline(report), fit,
             f"Fit: least squares on log L, {f['n_points']} points, {f['n_boot_ok']} bootstrap refits; RMS log "
             f"residual {f['rms_residual_log']:.4f} (max {f['max_abs_residual_log']:.4f}); converged: {f['converged']}.",
             pts]
    corr = report.get("downstream", {}).get("correlations", {})
    if corr:
        parts.append(markdown_table(
            ["downstream metric", "ρ(loss, metric)", "95% CI, priors resampled", "95% CI, units resampled",
             "lower loss → better?"],
            [[v["label"], f"{v['spearman']:+.3f}", f"[{v['ci_points'][0]:+.3f}, {v['ci_points'][1]:+.3f}]",
              f"[{v['ci_units'][0]:+.3f}, {v['ci_units'][1]:+.3f}]", v["verdict"]] for v in corr.values()]))
    return "\n\n".join(parts)


# ---------------------------------------------------------------- the pipeline step


