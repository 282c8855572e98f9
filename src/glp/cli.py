"""The `glp` command line (`glp --help`). Heavy imports happen inside the subcommands."""

from __future__ import annotations

import argparse
import json
import sys


def _summary(args: argparse.Namespace) -> int:
    from glp import pipeline
    from glp.config import load_settings

    settings = load_settings()
    source = settings.source(args.partition)
    paths = pipeline.source_paths(settings, source)
    print(f"\nglp artifacts for source {source.key}:")
    if pipeline.uses_builtin(settings) and source.model == "builtin":
        lm = pipeline.builtin_lm_dir(settings)
        rep = json.loads((lm / "train_report.json").read_text()) if (lm / "train_report.json").is_file() else {}
        ppl = rep.get("heldout_perplexity")
        print(f"  source LM      {lm}" + (f"  (held-out perplexity {ppl:.1f}, unigram {rep['unigram_perplexity']:.1f})" if ppl else ""))
    for label, path in [("activations", paths.activations), ("norm stats", paths.norm_stats), ("prior", paths.prior),
                        ("evaluation", paths.prior_eval)]:
        print(f"  {label:<14} {path}{'' if path.exists() else '  (missing)'}")
    if paths.prior_eval.is_file():
        r = json.loads(paths.prior_eval.read_text())
        print(f"\n  held-out flow-matching loss  GLP {r['heldout_loss_mean']:.4f}   "
              f"optimal linear (Gaussian) baseline {r['gaussian_baseline_loss_mean']:.4f}")
        print(f"  Frechet distance to held-out GLP {r['fd_glp']:.3f}   diagonal Gaussian {r['fd_diag_gaussian']:.3f}   "
              f"noise floor {r['fd_heldout_floor']:.3f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="glp", description="Generative Latent Priors over LLM activations")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("summary", help="print where a source's artifacts are and its evaluation numbers")
    p.add_argument("--partition", default="builtin/L1", help="source key, e.g. builtin/L1")
    p.set_defaults(func=_summary)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
