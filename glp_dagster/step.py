"""What every asset and check of the code location shares: the one asset group, the code version, the failure
messages for a missing upstream artifact and for the library's user errors, the artifact write locks, and the
wrapper that turns an exception in a check into a failed check (a check never errors).
"""

import functools
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path

import dagster as dg

CODE_VERSION = "1"  # bump when a step's code changes what it produces
GROUP = "glp"
"""One asset group for the whole pipeline: Dagster's graph draws the assets of a lone group without a group box,
while it opens two or more groups collapsed (ui-core asset-graph/layout.ts, groupRendering 'if-varied'), which
showed a newcomer four boxes and no asset. The kinds tags (dvc, zarr, deepspeed, ...) tell the stages apart."""
LOCK_WAIT_TAG = "glp/lock_wait_s"
"""Run tag: seconds a step waits for another run writing the same artifact; absent or 0: fail at once, naming it.
(A run tag, not a `GLP_*` variable: every `GLP_*` variable must name a setting, glp.config.check_environment.)"""


def materialize_hint(asset: str, partition: str | None) -> str:
    # '+key:X' (new syntax) and '*X' (legacy) select X and *all* its ancestors; legacy '+X' is one layer only.
    part = f" --partition '{partition}'" if partition else ""
    return f"dagster asset materialize -m glp_dagster.definitions --select '+key:{asset}'{part}"


def require_upstream(path: Path, upstream: str, asset: str, partition: str | None) -> None:
    """Fail with the command to run when an upstream artifact is not on disk."""
    from glp.data.store import as_location

    if not as_location(path).exists():  # a local path, or an activation store's fsspec URL
        raise dg.Failure(
            description=f"`{asset}` needs `{upstream}`, which is not materialized (missing {path}). "
            f"Materialize it together with all its upstream assets: {materialize_hint(asset, partition)} "
            f"(`+key:{asset}` selects every ancestor; the legacy `--select '+{asset}'` adds only one layer up, "
            "so it works once the assets above that layer are stored)"
        )


@contextmanager
def user_errors() -> Iterator[None]:
    """Show the library's user-facing errors (what was wrong, what to do) as the step's failure message."""
    from glp.data.corpus import CorpusError
    from glp.data.lm import SourceModelError
    from glp.data.source_model import PackagedModelError
    from glp.data.store import StoreError
    from glp.prior.checkpoints import CheckpointWriteError

    try:
        yield
    except (CorpusError, SourceModelError, PackagedModelError, StoreError, CheckpointWriteError, FileNotFoundError,
            ValueError) as e:
        raise dg.Failure(description=f"{type(e).__name__}: {e}") from e


def lock_wait_s(context: dg.AssetExecutionContext) -> float:
    """The run's `glp/lock_wait_s` tag as seconds, else the `lock_wait_s` setting (`GLP_LOCK_WAIT_S`, default 0)."""
    raw = context.run.tags.get(LOCK_WAIT_TAG)
    if raw is None:
        return float(context.resources.glp.settings.lock_wait_s)
    try:
        wait = float(raw)
    except ValueError:
        wait = float("nan")
    if not wait >= 0:
        raise dg.Failure(description=f"run tag {LOCK_WAIT_TAG}={raw!r} is not a number of seconds: remove it (fail at "
                         "once when another run writes the same artifact) or give the seconds to wait, e.g. 600")
    return wait


@contextmanager
def writing(context: dg.AssetExecutionContext, *paths: Path, reads: Sequence[Path] = ()) -> Iterator[None]:
    """Hold the write lock of each artifact the step writes and a shared (read) lock of each it `reads`
    (glp.artifacts.artifact_lock; lock files under `<store.root>/.locks/`), run id as the holder: a second run
    writing the same artifact, or replacing one this step reads, fails at once naming this run, or waits up to
    `GLP_LOCK_WAIT_S` seconds (the `glp/lock_wait_s` run tag for one run)."""
    from glp.artifacts import ArtifactBusy, artifact_lock

    asset = context.asset_key.to_user_string()
    partition = context.partition_key if context.has_partition_key else None
    wait_s = lock_wait_s(context)
    root = context.resources.glp.settings.store.root
    writes = {Path(p): False for p in paths}
    wanted = {**{Path(p): True for p in reads if Path(p) not in writes}, **writes}
    with ExitStack() as stack:
        try:
            for path in sorted(wanted):  # one order everywhere: two waiting runs cannot deadlock
                stack.enter_context(artifact_lock(path, asset, partition, wait_s, run_id=context.run_id,
                                                  shared=wanted[path], root=root))
        except ArtifactBusy as e:
            raise dg.Failure(description=f"{e} (or let runs queue behind it: GLP_LOCK_WAIT_S=<seconds> in the "
                             f"environment, e.g. GLP_LOCK_WAIT_S=600, or the run tag {LOCK_WAIT_TAG} when "
                             "launching from the UI)") from e
        yield


def numbers_in(obj: object) -> Iterator[float]:
    """Every numeric leaf of a JSON value (bools and strings are not numbers here)."""
    if isinstance(obj, dict):
        for v in obj.values():
            yield from numbers_in(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from numbers_in(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield float(obj)


def error_result(context: dg.AssetCheckExecutionContext, check: str, e: Exception) -> dg.AssetCheckResult:
    """A failed check whose evidence is the exception its body raised."""
    asset = context.check_specs[0].asset_key.to_user_string()
    part = context.partition_key if context.has_partition_key else None
    select = f"--select '{asset}'" + (f" --partition '{part}'" if part else "")
    error = f"{type(e).__name__}: {e}"
    return dg.AssetCheckResult(
        passed=False,
        description=f"`{check}` could not evaluate `{asset}`{f' for `{part}`' if part else ''} ({error[:300]}). "
                    f"The artifact (or an input the check reads) is missing, unreadable or corrupt: re-materialize it "
                    f"(dagster asset materialize -m glp_dagster.definitions {select}); if the check fails the same "
                    "way on a fresh artifact, the traceback in this result's metadata shows where.",
        metadata={"error": error[:2000],
                  "traceback": dg.MetadataValue.text("".join(traceback.format_exception(e))[-4000:])},
    )


def reports_errors(check: Callable[..., dg.AssetCheckResult]) -> Callable[..., dg.AssetCheckResult]:
    """Wrap a check body (under `@dg.asset_check`) so that an exception becomes a failed result, never an error."""

    @functools.wraps(check)
    def body(context: dg.AssetCheckExecutionContext, **resources: object) -> dg.AssetCheckResult:
        try:
            return check(context, **resources)
        except Exception as e:  # noqa: BLE001 (the point: any failure to evaluate is reported as a failed check)
            return error_result(context, check.__name__, e)

    body.reports_errors = True  # type: ignore[attr-defined]  # tests assert every check carries it
    return body
