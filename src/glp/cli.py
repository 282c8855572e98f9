"""The `glp` command line (`glp --help`). Heavy imports happen inside the subcommands."""

from __future__ import annotations

import argparse
import json
import os
import sys


def _summary(args: argparse.Namespace) -> int:
    from glp import pipeline
    from glp.config import load_settings

    settings = load_settings()
    source = settings.source(args.partition) if args.partition else settings.sources[0]
    paths = pipeline.source_paths(settings, source)
    if args.headline:
        from glp.summary import headline_markdown

        print(headline_markdown(settings, source))
        return 0
    if args.markdown:
        from glp.summary import results_markdown

        print(results_markdown(settings, source))
        return 0
    print(f"\nglp artifacts for source {source.key}:")
    if pipeline.uses_builtin(settings) and source.model == "builtin":
        lm = pipeline.builtin_lm_dir(settings)
        rep = json.loads((lm / "train_report.json").read_text()) if (lm / "train_report.json").is_file() else {}
        ppl = rep.get("heldout_perplexity")
        print(f"  source LM      {lm}" + (f"  (held-out perplexity {ppl:.1f}, unigram {rep['unigram_perplexity']:.1f})" if ppl else ""))
    from glp.data.source_model import is_packaged, load_report

    if is_packaged(source.model):
        mdir = pipeline.model_dir(settings, source)
        rep = load_report(mdir) or {}
        print(f"  source model   {mdir}" + (f"  ({rep['architecture']}, {rep['n_params'] / 1e6:.1f} M parameters, "
                                             f"{rep['n_layers']} layers, from {rep['gguf']})" if rep else "  (missing)"))
    for label, path in [("activations", paths.activations_dir), ("norm stats", paths.norm_stats), ("prior", paths.prior),
                        ("evaluation", paths.prior_eval)]:
        print(f"  {label:<14} {path}{'' if path.exists() else '  (missing)'}")
    if paths.prior_eval.is_file():
        r = json.loads(paths.prior_eval.read_text())
        print(f"\n  held-out flow-matching loss  GLP {r['heldout_loss_mean']:.4f}   "
              f"optimal linear (Gaussian) baseline {r['gaussian_baseline_loss_mean']:.4f}")
        if "c2st_auc_glp" not in r:
            print("  (an evaluation from before the two-sample test: re-materialize `prior_eval`)")
            r = {**r, "c2st_auc_glp": float("nan"), "c2st_auc_full_gaussian": float("nan"), "c2st_auc_floor": float("nan"),
                 "fd_full_gaussian": float("nan")}
        print(f"  C2ST AUC vs held-out (0.5 = indistinguishable)  GLP {r['c2st_auc_glp']:.3f}   "
              f"full-covariance Gaussian {r['c2st_auc_full_gaussian']:.3f}   floor {r['c2st_auc_floor']:.3f}")
        print(f"  Frechet distance to held-out  GLP {r['fd_glp']:.2f}   full-covariance Gaussian {r['fd_full_gaussian']:.2f}   "
              f"noise floor {r['fd_heldout_floor']:.2f}")
    probes = paths.root / "probes" / "results.json"
    if probes.is_file():
        one_d = json.loads(probes.read_text())["summary"]["one_d"]
        print("  mean 1-D probe AUC [95% CI]   " + "   ".join(
            f"{fam} {v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" for fam, v in one_d.items()))
    for name in ("steering.json", "steering_pareto.png", "delta_lm.json", "ood.json", "ood_roc.png",
                 "scaling/scaling.json", "scaling/scaling.png"):
        if (paths.root / name).is_file():
            print(f"  {name:<28} {paths.root / name}")
    return 0


def _steer(args: argparse.Namespace) -> int:
    import textwrap

    import torch

    from glp import pipeline
    from glp.config import load_settings
    from glp.data.lm import load_source_lm
    from glp.prior import load_prior
    from glp.uses.generate import encode, generate, steer_edit
    from glp.uses.direction import mean_activation_norm, movie_snippets, sentiment_direction
    from glp.data.store import ActivationStore

    settings = load_settings()
    source = settings.source(args.partition) if args.partition else settings.sources[0]
    cfg = settings.steer
    paths = pipeline.source_paths(settings, source)
    for path, asset in ((paths.prior, "glp_prior"), (paths.store("heldout"), "activations")):
        if not path.exists():
            print(f"missing {path}: materialize `{asset}` first (make run)", file=sys.stderr)
            return 1
    lm = load_source_lm(pipeline.model_dir(settings, source), settings.device, "float32", settings.trust_remote_code)
    prior = load_prior(paths.prior, lm.device)
    mean_norm = mean_activation_norm(ActivationStore(paths.store("heldout")).rows())
    snippets = movie_snippets(cfg.labelled, cfg.n_direction_texts, cfg.n_probe_texts, cfg.seed)
    w = sentiment_direction(lm, source.layer, snippets, cfg.direction_max_tokens)
    decoding = "greedy" if args.greedy else cfg.decoding
    ids = [encode(lm, args.prompt)]
    kw = dict(max_new_tokens=args.tokens, decoding=decoding, temperature=cfg.temperature, seed=args.seed,
              layer=source.layer)
    g = torch.Generator(device=lm.device).manual_seed(args.seed + 1)
    alpha = args.r * mean_norm
    raw = generate(lm, ids, edit=steer_edit(w, alpha), **kw)[0]
    glp = generate(lm, ids, edit=steer_edit(w, alpha, prior, cfg.t_start, cfg.steps, cfg.solver, g), **kw)[0]
    print(f"source {source.key}, direction {args.direction}, r={args.r} (alpha={alpha:.2f}), {decoding} decoding, "
          f"seed {args.seed}\nprompt: {args.prompt!r}\n")
    cols = [textwrap.wrap(lm.tokenizer.decode(t, skip_special_tokens=True), 48) for t in (raw, glp)]
    print(f"{'raw steering':<50}| with GLP (t_start={cfg.t_start}, {cfg.steps}-step {cfg.solver})")
    print("-" * 50 + "+" + "-" * 50)
    for i in range(max(len(c) for c in cols)):
        left, right = (c[i] if i < len(c) else "" for c in cols)
        print(f"{left:<50}| {right}")
    return 0


def _seeds(args: argparse.Namespace) -> int:
    from glp.config import load_settings
    from glp.seeds import run_seeds, seeds_markdown

    settings = load_settings()
    source = settings.source(args.partition) if args.partition else settings.sources[0]
    summary = run_seeds(settings, source, args.seeds)
    print(seeds_markdown(summary))
    return 0


def _export(args: argparse.Namespace) -> int:
    from glp import pipeline
    from glp.config import load_settings
    from glp.prior import export_prior
    from glp.summary import model_card

    settings = load_settings()
    source = settings.source(args.partition) if args.partition else settings.sources[0]
    paths = pipeline.source_paths(settings, source)
    out = export_prior(paths.prior, args.out, model_card(settings, source), paths.norm_stats)
    print(f"exported the prior of {source.key} to {out} (model.safetensors, norm.safetensors, norm_stats.safetensors, "
          "config.json, README.md model card, SHA256SUMS); load it with glp.load_prior")
    return 0


def _info(args: argparse.Namespace) -> int:
    from pathlib import Path

    path = Path(args.path)
    if (path / "config.json").is_file() and (path / "model.safetensors").is_file():
        from glp.artifacts import MANIFEST, verify_manifest
        from glp.prior import load_prior

        prior = load_prior(path)
        n = sum(p.numel() for p in prior.denoiser.parameters())
        c = prior.config
        print(f"GLP prior at {path}: source {c.get('source', '?')}, d {prior.d_model}, {n:,} parameters, "
              f"{c.get('steps', '?')} steps; weights verified against config.json")
        if (path / MANIFEST).is_file():
            problems = verify_manifest(path)
            print(f"  {MANIFEST}: " + ("every file intact" if not problems else "; ".join(problems)))
        return 0
    if (path / "zarr.json").is_file():
        from glp.data.store import ActivationStore

        store = ActivationStore(path)
        a = store.attrs
        problems = store.verify()
        print(f"activation store at {path}: {store.n_rows:,} rows x {store.d_model} ({a.get('model')}, layer "
              f"{a.get('layer', '?')}, split {a.get('split')}), {store.n_chunks} chunks; "
              + ("every chunk verified" if not problems else f"{len(problems)} problem(s): {problems[0]['problem']}"))
        return 0 if not problems else 1
    if (path / "sae.safetensors").is_file():
        from glp.uses.sae import load_sae

        sae, _, cfg = load_sae(path)
        print(f"TopK SAE at {path}: d {sae.d_model}, {sae.n_latents:,} latents, k {sae.k}, held-out FVU "
              f"{cfg.get('heldout_fvu', float('nan')):.4f}; weights verified")
        return 0
    print(f"{path}: not a glp prior, activation store or SAE folder", file=sys.stderr)
    return 2


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends `(default: ...)` to each option's help, unless the help already says it or there is nothing to show
    (a flag that is off, an option whose absence means something the help explains)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "default" in (action.help or "") or any(action.default is v for v in (None, False, argparse.SUPPRESS)):
            return action.help
        return super()._get_help_string(action)


def _score(args: argparse.Namespace) -> int:
    from glp.config import load_settings
    from glp.uses.ood import score_table
    from glp.pipeline.ood import score_text

    settings = load_settings()
    source = settings.source(args.partition) if args.partition else settings.sources[0]
    res = score_text(settings, source, args.text)
    print(json.dumps(res, indent=1) if args.json else score_table(res))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `glp` parser: one subcommand per task, each with a description and its options' defaults."""
    parser = argparse.ArgumentParser(
        prog="glp", description="Generative Latent Priors over LLM activations: inspect, export and use what "
        "`make run` built (the settings come from GLP_* variables and glp.toml, as for the pipeline).",
        epilog="`glp <command> --help` describes a command and its defaults.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="<command>")

    def command(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description, formatter_class=_HelpFormatter)

    p = command("summary", "print where a source's artifacts are and its evaluation numbers",
                "Print where a source's artifacts are and its evaluation numbers (held-out loss, two-sample test, "
                "Frechet distance, probing); with --markdown, the README's results tables.")
    p.add_argument("--partition", default=None, help="source key, e.g. smollm2-135m/L15 (default: the first source)")
    p.add_argument("--markdown", action="store_true", help="print the results tables (README format) from the artifacts")
    p.add_argument("--headline", action="store_true",
                   help="print the README's headline table (use, measured here, paper, holds here?) from the artifacts")
    p.set_defaults(func=_summary)
    p = command("seeds", "train + evaluate extra priors with other seeds on the same activations; "
                         "report every claim's mean and spread over seeds (after make run)",
                "Train and evaluate extra priors with other seeds on the same activations (after `make run`), "
                "then print every claim's mean and spread over the seeds (~12 min per seed on 2 CPU cores).")
    p.add_argument("--partition", default=None, help="source key (default: the first source)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="extra training seeds (default: 1 2)")
    p.set_defaults(func=_seeds)
    p = command("export", "copy a source's trained prior, its norm stats and a generated model card "
                          "(README.md) into a folder a model hub accepts as is",
                "Copy a source's trained prior, its norm stats and a model card generated from the artifacts "
                "(README.md) into OUT, with SHA256SUMS; a model hub accepts the folder as is and glp.load_prior "
                "reads it back.")
    p.add_argument("out", metavar="OUT", help="the folder to write (replaced atomically if it exists)")
    p.add_argument("--partition", default=None, help="source key (default: the first source)")
    p.set_defaults(func=_export)
    p = command("info", "describe and verify an artifact folder: a prior (or export), an activation "
                        "store (.zarr) or an SAE",
                "Describe an artifact folder and verify its checksums: a prior or an export of one, an activation "
                "store (.zarr) or an SAE. Exit status 1 if a store has a corrupt chunk, 2 if PATH is none of these.")
    p.add_argument("path", metavar="PATH", help="the artifact folder")
    p.set_defaults(func=_info)
    p = command("steer", "steer the source LM along a direction; print raw and GLP continuations",
                "Steer the source LM along a direction at strength r and print the raw-steered continuation beside "
                "the GLP post-processed one (same prompt, same sampling seed).")
    p.add_argument("--partition", default=None, help="source key, e.g. smollm2-135m/L15 (default: the first source)")
    p.add_argument("--direction", default="sentiment", choices=["sentiment"],
                   help="DiffMean direction (sentiment = positive minus negative human-rated movie snippets)")
    p.add_argument("--r", type=float, default=0.5, help="strength: alpha = r x mean activation norm (negative flips)")
    p.add_argument("--prompt", default="I think that", help="the text to continue")
    p.add_argument("--tokens", type=int, default=24, help="new tokens")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (the GLP noise uses seed + 1)")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (default: the steer config's decoding)")
    p.set_defaults(func=_steer)
    p = command("score", "per-token off-manifold scores of a text: which tokens does the prior find unusual?",
                "Print each token of TEXT with its GLP diffusion score at the source's layer (the flow-matching loss "
                "averaged over ood.ts, seeded noise), its percentile among real held-out tokens and a flag above the "
                "(1 - ood.fpr) quantile. Needs the source's prior and activations (after `make run`).")
    p.add_argument("text", metavar="TEXT", help="the text to score")
    p.add_argument("--partition", default=None, help="source key, e.g. smollm2-135m/L15 (default: the first source)")
    p.add_argument("--json", action="store_true", help="print the scores as JSON")
    p.set_defaults(func=_score)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # transformers' weight-loading bar (under a second) would sit in the middle of our printout
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
