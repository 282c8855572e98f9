"""Multi-process training of the prior through Dagster Pipes: `glp_prior` launches `torchrun`, one process per rank.

With `train.world_size` W > 1, the `glp_prior` step calls `launch_training`. It starts

    python -m torch.distributed.run --standalone --nproc_per_node W -m glp_dagster.pipes_train --settings F --source S

through `dagster.PipesSubprocessClient`. Every rank runs `glp.pipeline.build_prior`: DeepSpeed data parallel, gloo
on CPU and nccl on GPUs, and each rank takes its slice of every global batch (glp.prior.train). Rank 0 alone opens the
Pipes channel. Its progress lines go to the run's log, and its summary (the loss curve, throughput, the exported
prior's path and version) comes back as a custom message that the asset turns into its metadata and data version.
If a rank dies, torchrun stops the others and the step fails. Rerunning it resumes from the last checkpoint that
every rank can read.

This module is also the child's entry point, so its top level imports neither dagster nor torch: the child
needs only `dagster_pipes` and glp.
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def launch_training(context: Any, settings: Any, source: Any) -> dict[str, Any]:
    """Run `build_prior` on `settings.train.world_size` ranks under torchrun; rank 0's summary (AssetExecutionContext,
    glp Settings and SourceConfig in)."""
    import dagster as dg

    world = settings.train.world_size
    with tempfile.TemporaryDirectory(prefix="glp-train-") as tmp:
        cfg = Path(tmp) / "settings.json"
        cfg.write_text(settings.model_dump_json())
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
                   "--nproc_per_node", str(world), "-m", "glp_dagster.pipes_train", "--settings", str(cfg),
                   "--source", source.key]
        context.log.info(f"training on {world} ranks: {' '.join(command[1:])}")
        done = dg.PipesSubprocessClient().run(context=context, command=command)
    summaries = [m for m in done.get_custom_messages() if isinstance(m, dict) and "version" in m]
    if not summaries:
        raise dg.Failure(description=f"the {world} training ranks ended without rank 0's summary: see the step's log")
    return summaries[-1]


def main(argv: list[str] | None = None) -> None:
    """One rank of the training: all ranks train, rank 0 reports through Dagster Pipes."""
    ap = argparse.ArgumentParser(description="one rank of glp_prior's multi-process training (run by torchrun)")
    ap.add_argument("--settings", type=Path, required=True, help="the run's settings as JSON")
    ap.add_argument("--source", required=True, help="the source key, e.g. smollm2-135m/L15")
    args = ap.parse_args(argv)
    from glp import pipeline
    from glp.config import load_settings

    settings = load_settings(**json.loads(args.settings.read_text()))
    source = settings.source(args.source)
    if int(os.environ.get("RANK", "0")) != 0:
        pipeline.build_prior(settings, source)
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        out = pipeline.build_prior(settings, source, log=pipes.log.info)
        pipes.report_custom_message(out)


if __name__ == "__main__":
    main()
