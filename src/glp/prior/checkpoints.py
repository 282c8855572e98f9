"""Checkpoints of the prior's training run, trusted only after checks (docs/reliability_checkpoints.md).

Each tag folder gets a manifest of its files' sha256 and the recipe it was trained with, written last and
atomically, so a torn save (killed mid-write, a truncated or missing file) is skipped for the previous good tag (the
last two are kept) or a fresh start, said in the log; a sound tag of another recipe is refused with what to do; a
write that fails (a full disk) removes the torn tag and says why; and DeepSpeed's `torch.load` runs with
`weights_only=True` and only the globals in SAFE_CHECKPOINT_GLOBALS, so a crafted pickle is refused, never executed.

    resume_tag(ckpt_dir, say, device, recipe)              -> the newest sound tag all ranks can use, or None
    save_checkpoint(engine, ckpt_dir, step, state, recipe) -> tag step<N>, sealed by its manifest
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import pickle
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from glp.artifacts import sha256_file, write_atomic


class UnsafeCheckpoint(ValueError):
    """A checkpoint file that passed its manifest holds a pickled object outside SAFE_CHECKPOINT_GLOBALS."""


MANIFEST = "manifest.json"
KEEP_CHECKPOINTS = 2  # the newest good tag and one before it, so a torn newest save still has a fallback

# Globals a DeepSpeed 0.19 checkpoint of this trainer pickles beyond what torch's weights_only loader allows by
# default (tensors, dtypes, torch.Size, plain containers); measured with
# torch.serialization.get_unsafe_globals_in_checkpoint on ZeRO 0-3, fp32 and bf16 (tests/glp/test_checkpoint_safety.py
# keeps the list complete). Plain data classes only: nothing here runs code when rebuilt.
SAFE_CHECKPOINT_GLOBALS = (
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",  # ZeRO/bf16 optimizer states: the (static) loss scaler
    "deepspeed.runtime.zero.config.ZeroStageEnum",  # an IntEnum
    "deepspeed.utils.tensor_fragment.fragment_address",  # a dataclass (numel, start) per parameter slice
)


def process_rank() -> int:
    """This process's rank among the training processes (0 alone)."""
    return int(os.environ.get("RANK", "0"))


def _all_ranks_min(value: int, device: torch.device) -> int:
    """The smallest `value` over all ranks (itself in a single process): how ranks agree on a resume point."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def checkpoint_tags(ckpt_dir: Path) -> list[tuple[int, str]]:
    """(step, tag) of every `step<N>` folder in `ckpt_dir`, newest first."""
    if not Path(ckpt_dir).is_dir():
        return []
    found = [(int(m.group(1)), p.name) for p in Path(ckpt_dir).iterdir()
             if p.is_dir() and (m := re.fullmatch(r"step(\d+)", p.name))]
    return sorted(found, reverse=True)


def _checkpoint_files(tag_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(tag_dir)) for p in tag_dir.rglob("*") if p.is_file() and p.name != MANIFEST)


def write_checkpoint_manifest(tag_dir: Path, step: int, recipe: dict[str, Any] | None = None) -> Path:
    """Record size and sha256 of every file of a finished save, and the recipe it was trained with (optimizer,
    parameterization: `recipe.recipe_record`), then the manifest itself (atomically, last)."""
    files = {}
    for name in _checkpoint_files(tag_dir):
        fd = os.open(tag_dir / name, os.O_RDONLY)  # on disk before the manifest that vouches for it
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        files[name] = {"bytes": (tag_dir / name).stat().st_size, "sha256": sha256_file(tag_dir / name)}
    manifest = {"format": "glp-checkpoint/1", "step": step, "files": files, "recipe": recipe}
    return write_atomic(tag_dir / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def verify_checkpoint(tag_dir: Path) -> str | None:
    """None if every file of the tag matches its manifest (nothing missing, added or changed); else why not."""
    tag_dir = Path(tag_dir)
    try:
        manifest = json.loads((tag_dir / MANIFEST).read_text())
        files = {str(n): (int(w["bytes"]), str(w["sha256"])) for n, w in manifest["files"].items()}
    except FileNotFoundError:
        return f"it has no {MANIFEST} (the save did not finish: killed mid-save?)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"its {MANIFEST} is unreadable ({type(e).__name__}: {e})"
    present = set(_checkpoint_files(tag_dir))
    for name in sorted(present - files.keys()):
        return f"{tag_dir / name} is not in its {MANIFEST} (a file added after the save)"
    for name in sorted(files.keys() - present):
        return f"{tag_dir / name} is missing"
    for name, (size, sha) in sorted(files.items()):
        path = tag_dir / name
        if path.stat().st_size != size:
            return f"{path} has {path.stat().st_size} bytes where its {MANIFEST} records {size} (truncated or replaced)"
        if sha256_file(path) != sha:
            return f"{path} does not match the sha256 in its {MANIFEST} (corrupted or replaced after the save)"
    return None


class CheckpointRecipeMismatch(ValueError):
    """A sound checkpoint trained with another optimizer or parameterization than the config asks for."""


def _check_recipe(tag_dir: Path, recipe: dict[str, Any]) -> None:
    found = json.loads((tag_dir / MANIFEST).read_text()).get("recipe")
    if found == recipe:
        return
    if found is None:
        what = "was written by an older glp that did not record its optimizer and parameterization"
    else:
        diff = {k: (found.get(k), v) for k, v in recipe.items() if found.get(k) != v}
        what = "was trained with " + ", ".join(f"{k} {a!r} where the config now asks for {b!r}"
                                              for k, (a, b) in diff.items())
    raise CheckpointRecipeMismatch(
        f"checkpoint {tag_dir} {what}: its optimizer state and weights cannot continue this run. Set the config back "
        f"to resume it, or delete {tag_dir.parent} to train from step 0")


def resume_tag(ckpt_dir: Path, say: Callable[[str], None], device: torch.device,
               recipe: dict[str, Any] | None = None) -> str | None:
    """The newest checkpoint tag whose files all match their manifest (on every rank), or None to start afresh.
    With `recipe`, a sound tag trained with another one raises CheckpointRecipeMismatch (never silently restarts).

    Nothing is unpickled here: a tag is only read by DeepSpeed once it passed. Every skipped tag is said.
    """
    tags = checkpoint_tags(ckpt_dir)
    step = -1
    for s, tag in tags:
        why = verify_checkpoint(ckpt_dir / tag)
        if why is None:
            if recipe is not None:
                _check_recipe(ckpt_dir / tag, recipe)
            step = s
            break
        say(f"checkpoint {ckpt_dir / tag} refused: {why}; trying the one before it")
    agreed = _all_ranks_min(step, device)  # ranks that disagree take the oldest choice, if all of them can use it
    if agreed >= 0:
        usable = agreed == step or verify_checkpoint(ckpt_dir / f"step{agreed}") is None
        agreed = agreed if _all_ranks_min(int(usable), device) else -1
    if agreed < 0:
        if tags:
            say(f"no usable checkpoint in {ckpt_dir}: training restarts from step 0")
        return None
    return f"step{agreed}"


def save_checkpoint(engine: Any, ckpt_dir: Path, step: int, client_state: dict[str, Any],
                    recipe: dict[str, Any] | None = None) -> None:
    """Save tag `step<N>` through DeepSpeed, seal it with its manifest, keep the newest KEEP_CHECKPOINTS sealed tags.
    A write that fails (a full disk) removes the torn tag and raises CheckpointWriteError saying why and what to do."""
    tag = f"step{step}"
    if process_rank() == 0 and (ckpt_dir / tag).exists():
        shutil.rmtree(ckpt_dir / tag)  # a torn save of this step from a killed run: write it afresh
    _barrier()
    try:
        engine.save_checkpoint(str(ckpt_dir), tag=tag, client_state=client_state)  # ends with a barrier of all ranks
        if process_rank() == 0:
            write_checkpoint_manifest(ckpt_dir / tag, step, recipe)
    except (OSError, RuntimeError) as e:
        if not is_write_failure(e):
            raise
        if process_rank() == 0:
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)  # torn (no manifest): its space back, never resumed
        raise CheckpointWriteError(write_failure_message(ckpt_dir / tag, e)) from e
    if process_rank() == 0:
        _prune_checkpoints(ckpt_dir, KEEP_CHECKPOINTS)


class CheckpointWriteError(RuntimeError):
    """A checkpoint could not be written (a full disk, a file size limit): the message says which and what to do."""


# torch's zip writer reports a failed write as "[enforce fail at inline_container.cc] . unexpected pos N vs M" or
# "PytorchStreamWriter failed writing file ...: file write failed", without the errno
_TORCH_WRITE_FAILED = re.compile(r"inline_container|PytorchStreamWriter|unexpected pos|file write failed")


def is_write_failure(e: BaseException) -> bool:
    """Whether `e` is a failed file write: ENOSPC, EDQUOT, EFBIG or EIO, or torch's writer failing."""
    import errno

    if isinstance(e, OSError):
        return e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)
    return isinstance(e, RuntimeError) and bool(_TORCH_WRITE_FAILED.search(str(e)))


def write_failure_message(target: Path, e: BaseException) -> str:
    """Why writing `target` failed, in words (no space left on <mount>, a file size limit), and what to do."""
    import errno
    import resource

    folder = next(p for p in (target, *target.parents) if p.exists())
    mount = folder.resolve()
    while not os.path.ismount(mount):
        mount = mount.parent
    usage = shutil.disk_usage(folder)
    space = f"{usage.free / 2**20:,.0f} MiB free of {usage.total / 2**30:,.1f} GiB"
    fsize = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT) or (code is None and usage.free < 64 * 2**20):
        cause = f"no space left on {mount} ({space})"
        fix = "free space there, or set GLP_STORE__ROOT to a disk with room"
    elif code == errno.EFBIG or (code is None and fsize != resource.RLIM_INFINITY):
        cause = f"a file reached this process's file size limit (ulimit -f: {fsize:,} bytes; {mount}: {space})"
        fix = "raise the limit (ulimit -f unlimited)"
    else:
        cause = f"the write failed ({mount}: {space})"
        fix = "check that disk (dmesg shows I/O errors)"
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return (f"writing {target} failed: {cause}. The torn checkpoint was removed and the newest complete one is kept, "
            f"so training resumes from it: {fix}, then run the step again ({type(e).__name__}: {first[:200]})")


def _prune_checkpoints(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` sealed tags (torn ones too); the manifest goes first, so a half-deleted
    tag reads as unfinished."""
    sealed = 0
    for _, tag in checkpoint_tags(ckpt_dir):
        if (ckpt_dir / tag / MANIFEST).is_file() and sealed < keep:
            sealed += 1
            continue
        (ckpt_dir / tag / MANIFEST).unlink(missing_ok=True)
        shutil.rmtree(ckpt_dir / tag, ignore_errors=True)


def _allowed_globals() -> list[Any]:
    out = []
    for name in SAFE_CHECKPOINT_GLOBALS:
        module, _, attr = name.rpartition(".")
        out.append(getattr(importlib.import_module(module), attr))
    return out


def load_checkpoint_file(path: str | os.PathLike, map_location: Any = None) -> Any:
    """`torch.load` of one DeepSpeed checkpoint file with weights_only=True and only SAFE_CHECKPOINT_GLOBALS."""
    with torch.serialization.safe_globals(_allowed_globals()):
        try:
            return torch.load(path, map_location=map_location, weights_only=True)
        except pickle.UnpicklingError as e:  # torch stops at the first global outside the list, before calling it
            m = re.search(r"GLOBAL (\S+)", str(e))
            what = f"a reference to {m.group(1)}" if m else " ".join(str(e).split())[:200]
            raise UnsafeCheckpoint(
                f"{path} holds {what}, which is not in glp.prior.checkpoints.SAFE_CHECKPOINT_GLOBALS: refused, nothing in it was "
                f"run. Delete {Path(path).parent} to resume from the checkpoint before it (or, if a DeepSpeed upgrade "
                "added a plain data type, review it and add it to the list)") from e


@functools.cache
def weights_only_checkpoint_engine() -> type:
    """DeepSpeed's torch checkpoint engine whose `load` is load_checkpoint_file (every load of our resume path
    goes through `engine.checkpoint_engine.load`)."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    class WeightsOnlyCheckpointEngine(TorchCheckpointEngine):
        def load(self, path: str, map_location: Any = None) -> Any:
            return load_checkpoint_file(path, map_location)

    return WeightsOnlyCheckpointEngine
