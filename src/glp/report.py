"""Human-readable renderings of pipeline results: PNG plots and markdown tables (for the UI and files)."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend (no display here or in Dagster workers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def to_png(fig) -> bytes:
    """Render a matplotlib figure to PNG bytes and close it."""
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    return buf.getvalue()


def loss_curve_png(losses: Sequence[float], title: str = "flow-matching training loss") -> bytes:
    """Per-step loss (light) and its moving average (dark), as PNG bytes."""
    plt = pyplot()
    y = np.asarray(losses, dtype=float)
    k = max(1, len(y) // 50)
    smooth = np.convolve(y, np.ones(k) / k, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.2), dpi=100)
    ax.plot(np.arange(1, len(y) + 1), y, color="#9ecae1", lw=0.8, label="step")
    ax.plot(np.arange(k, len(y) + 1), smooth, color="#08519c", lw=1.6, label=f"mean of {k}")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend()
    return to_png(fig)


def png_markdown(png: bytes, alt: str) -> str:
    """Markdown that embeds a PNG inline (Dagster's UI renders it)."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v: object) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def eval_table(report: dict) -> str:
    """The prior_eval report as markdown: summary, then loss per t against the Gaussian baseline."""
    summary = markdown_table(
        ["metric", "GLP", "baseline", "baseline kind"],
        [
            ["held-out flow-matching loss", report["heldout_loss_mean"], report["gaussian_baseline_loss_mean"],
             "optimal linear denoiser (data covariance)"],
            ["Frechet distance to held-out", report["fd_glp"], report["fd_diag_gaussian"], "diagonal Gaussian"],
            ["FD noise floor (held-out vs held-out)", report["fd_heldout_floor"], "", ""],
        ],
    )
    per_t = markdown_table(
        ["t", "GLP loss", "Gaussian-baseline loss"],
        [[round(t, 4), a, b] for t, a, b in zip(report["t"], report["heldout_loss"], report["gaussian_baseline_loss"])],
    )
    return summary + "\n\n" + per_t
