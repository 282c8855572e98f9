"""Checkpoints and priors that were torn, truncated or tampered with: refused with a message, never unpickled,
and training resumes from the newest good checkpoint with the same final weights (docs/reliability_checkpoints.md)."""

import json
import os
import resource
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from glp.prior.denoiser import GLPDenoiser
from glp.prior import PriorCorrupt, load_prior, save_prior
from glp.data.stats import Normalizer
from glp.prior.train import TrainingInterrupted
from glp.prior.checkpoints import (
    MANIFEST,
    CheckpointWriteError,
    SAFE_CHECKPOINT_GLOBALS,
    UnsafeCheckpoint,
    checkpoint_tags,
    is_write_failure,
    resume_tag,
    verify_checkpoint,
    write_checkpoint_manifest,
    write_failure_message,
)
from tests.glp.test_train import DCFG, _train, tiny_store

CPU = torch.device("cpu")
MODEL_STATES = "mp_rank_00_model_states.pt"


class _Plant:
    """Pickles as `open(marker, "w")`: unpickling it creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant(path, marker):
    torch.save({"module": _Plant(marker), "step": 16}, path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return tiny_store(tmp_path_factory.mktemp("store") / "a.zarr")


@pytest.fixture(scope="module")
def full(store, tmp_path_factory):
    """Final weights of an uninterrupted 64-step run."""
    model, _ = _train(store, tmp_path_factory.mktemp("full") / "ckpt")
    return model.state_dict()


@pytest.fixture(scope="module")
def killed(store, tmp_path_factory):
    """The checkpoint folder of a run killed after step 20 (tags step8 and step16)."""
    ckpt = tmp_path_factory.mktemp("killed") / "ckpt"
    with pytest.raises(TrainingInterrupted):
        _train(store, ckpt, interrupt_after=20)
    return ckpt


@pytest.fixture()
def ckpt(killed, tmp_path):
    return shutil.copytree(killed, tmp_path / "ckpt")


def _assert_same_weights(a, b):
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_the_test_pickle_is_armed(tmp_path):
    _plant(tmp_path / "evil.pt", tmp_path / "marker")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert (tmp_path / "marker").exists()


def test_a_run_keeps_its_last_two_checkpoints_each_sealed_by_a_manifest(killed):
    assert checkpoint_tags(killed) == [(16, "step16"), (8, "step8")]
    for tag in ("step8", "step16"):
        files = json.loads((killed / tag / MANIFEST).read_text())["files"]
        assert MODEL_STATES in files and len(files[MODEL_STATES]["sha256"]) == 64


# Each corruption of the newest tag (step16) and what resume_tag must say; every one falls back to step8.
def _no_manifest(d):
    (d / MANIFEST).unlink()


def _manifest_tmp_only(d):  # killed inside write_atomic: the .tmp was written, not renamed
    (d / MANIFEST).rename(d / (MANIFEST + ".tmp"))
    _truncate(d / (MANIFEST + ".tmp"))


def _empty_tag(d):  # killed right after DeepSpeed made the folder
    shutil.rmtree(d)
    d.mkdir()


def _flip_a_byte(d):
    data = bytearray((d / MODEL_STATES).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / MODEL_STATES).write_bytes(bytes(data))


CORRUPTIONS = {
    "no manifest (killed after DeepSpeed wrote, before the manifest)": (_no_manifest, "has no manifest.json"),
    "half-written manifest temp file": (_manifest_tmp_only, "has no manifest.json"),
    "empty tag folder": (_empty_tag, "has no manifest.json"),
    "truncated manifest": (lambda d: _truncate(d / MANIFEST), "manifest.json is unreadable"),
    "weights file cut in half": (lambda d: _truncate(d / MODEL_STATES), "(truncated or replaced)"),
    "weights file cut to 0 bytes": (lambda d: _truncate(d / MODEL_STATES, 0), "(truncated or replaced)"),
    "weights file missing": (lambda d: (d / MODEL_STATES).unlink(), "is missing"),
    "one byte flipped": (_flip_a_byte, "does not match the sha256"),
    "a file dropped in": (lambda d: _plant(d / "extra.pt", d / "marker"), "is not in its manifest.json"),
}


@pytest.mark.parametrize("name", CORRUPTIONS)
def test_a_broken_newest_checkpoint_is_refused_for_the_one_before_it(ckpt, name):
    corrupt, why = CORRUPTIONS[name]
    corrupt(ckpt / "step16")
    said = []
    assert resume_tag(ckpt, said.append, CPU) == "step8"
    assert len(said) == 1 and str(ckpt / "step16") in said[0] and why in said[0], said


def test_no_good_checkpoint_means_a_fresh_start_and_says_so(ckpt):
    _truncate(ckpt / "step16" / MODEL_STATES)
    (ckpt / "step8" / MODEL_STATES).unlink()
    said = []
    assert resume_tag(ckpt, said.append, CPU) is None
    assert "restarts from step 0" in said[-1]


def test_a_truncated_latest_checkpoint_resumes_from_the_previous_one_with_the_same_final_weights(store, ckpt, full):
    _truncate(ckpt / "step16" / MODEL_STATES)
    said = []
    model, res = _train(store, ckpt, log=said.append)
    assert res.resumed_from == 8 and res.steps == 64 and len(res.losses) == 64
    assert any("step16 refused" in s and "truncated" in s for s in said), said
    assert any(f"resumed from checkpoint {ckpt / 'step8'}" in s for s in said), said
    _assert_same_weights(full, model.state_dict())
    assert checkpoint_tags(ckpt) == [(64, "step64"), (56, "step56")]


def test_with_every_checkpoint_broken_training_restarts_and_ends_equal(store, ckpt, full):
    for tag in ("step8", "step16"):
        _truncate(ckpt / tag / MODEL_STATES)
    said = []
    model, res = _train(store, ckpt, log=said.append)
    assert res.resumed_from == 0 and any("restarts from step 0" in s for s in said), said
    _assert_same_weights(full, model.state_dict())


def test_a_crafted_pickle_replacing_a_checkpoint_file_is_refused_and_never_run(store, ckpt, full, tmp_path):
    marker = tmp_path / "pwned"
    _plant(ckpt / "step16" / MODEL_STATES, marker)
    said = []
    model, res = _train(store, ckpt, log=said.append)
    assert not marker.exists()
    assert res.resumed_from == 8 and any("step16 refused" in s and "replaced" in s for s in said), said
    _assert_same_weights(full, model.state_dict())


def test_a_crafted_pickle_with_a_forged_manifest_is_refused_by_the_weights_only_loader(store, ckpt, tmp_path):
    marker = tmp_path / "pwned"
    recipe = json.loads((ckpt / "step16" / MANIFEST).read_text())["recipe"]
    _plant(ckpt / "step16" / MODEL_STATES, marker)
    write_checkpoint_manifest(ckpt / "step16", 16, recipe)  # whoever can write the folder can write the manifest too
    with pytest.raises(UnsafeCheckpoint) as e:
        _train(store, ckpt)
    assert not marker.exists()
    msg = str(e.value)
    assert str(ckpt / "step16" / MODEL_STATES) in msg and "a reference to io.open" in msg and "\n" not in msg, msg


class _Killed(BaseException):
    """A kill -9 stand-in that no `except Exception` can swallow."""


def _die_mid_file(monkeypatch):
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    real = TorchCheckpointEngine.save

    def save(self, state_dict, path):
        real(self, state_dict, path)
        if "step16" in str(path):
            _truncate(Path(path))
            raise _Killed(path)

    monkeypatch.setattr(TorchCheckpointEngine, "save", save)


def _die_before_manifest(monkeypatch):
    import glp.prior.checkpoints

    real = glp.prior.checkpoints.write_checkpoint_manifest

    def write(tag_dir, step, recipe=None):
        if step == 16:
            raise _Killed(tag_dir)
        return real(tag_dir, step, recipe)

    monkeypatch.setattr(glp.prior.checkpoints, "write_checkpoint_manifest", write)


def _die_mid_manifest(monkeypatch):
    import glp.prior.checkpoints

    real = glp.prior.checkpoints.write_atomic

    def write(path, data):
        if "step16" in str(path):
            (path.parent / (path.name + ".tmp")).write_text(data[: len(data) // 2])
            raise _Killed(path)
        return real(path, data)

    monkeypatch.setattr(glp.prior.checkpoints, "write_atomic", write)


KILLS = {"mid-way through a DeepSpeed file": _die_mid_file, "after DeepSpeed, before the manifest": _die_before_manifest,
         "mid-way through the manifest": _die_mid_manifest}


@pytest.mark.parametrize("name", KILLS)
def test_a_run_killed_while_saving_resumes_from_the_checkpoint_before_with_the_same_final_weights(
        store, tmp_path, full, monkeypatch, name):
    ckpt = tmp_path / "ckpt"
    with monkeypatch.context() as m:
        KILLS[name](m)
        with pytest.raises(_Killed):
            _train(store, ckpt)
    model, res = _train(store, ckpt)
    assert res.resumed_from == 8 and res.steps == 64
    _assert_same_weights(full, model.state_dict())


@pytest.mark.parametrize("zero_stage", [0, 1, 2, 3])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_weights_only_resume_works_for_every_zero_stage_and_precision(store, tmp_path, zero_stage, precision):
    kw = {"zero_stage": zero_stage, "precision": precision, "batch_size": 256, "epochs": 1, "checkpoint_every": 4}
    with pytest.raises(TrainingInterrupted):
        _train(store, tmp_path / "ckpt", interrupt_after=4, **kw)
    for f in (tmp_path / "ckpt" / "step4").glob("*.pt"):  # the allow-list holds every global DeepSpeed pickled
        assert set(torch.serialization.get_unsafe_globals_in_checkpoint(f)) <= set(SAFE_CHECKPOINT_GLOBALS), f
    _, res = _train(store, tmp_path / "ckpt", **kw)
    assert res.resumed_from == 4 and res.steps == 8


# ---------------------------------------------------------------- exported priors


@pytest.fixture()
def prior_dir(tmp_path):
    torch.manual_seed(0)
    norm = Normalizer(torch.zeros(8), torch.ones(8))
    return save_prior(tmp_path / "prior", GLPDenoiser(8, DCFG), norm, {"source": "gpt2/L6"})


def _assert_one_line_naming(e, file):
    msg = str(e.value)
    assert "\n" not in msg and str(file) in msg, msg
    assert "dagster asset materialize -m glp_dagster.definitions --select glp_prior --partition 'gpt2/L6'" in msg


def test_an_exported_prior_records_the_sha256_of_its_weights(prior_dir):
    from glp.artifacts import sha256_file

    config = json.loads((prior_dir / "config.json").read_text())
    assert config["weights_sha256"] == sha256_file(prior_dir / "model.safetensors")
    assert config["norm_sha256"] == sha256_file(prior_dir / "norm.safetensors")
    assert load_prior(prior_dir).d_model == 8


@pytest.mark.parametrize("file", ["model.safetensors", "norm.safetensors"])
def test_a_truncated_prior_file_fails_with_one_line_and_the_command_that_rebuilds_it(prior_dir, file):
    _truncate(prior_dir / file)
    with pytest.raises(PriorCorrupt) as e:
        load_prior(prior_dir)
    _assert_one_line_naming(e, prior_dir / file)
    assert "truncated or corrupt" in str(e.value) and "sha256" in str(e.value)


def test_a_prior_whose_weights_changed_in_place_fails_on_its_checksum(prior_dir):
    from safetensors.torch import load_file, save_file

    state = load_file(prior_dir / "model.safetensors")
    name = next(iter(state))
    state[name] = state[name] + 1.0  # still valid safetensors: only the checksum can tell
    save_file(state, prior_dir / "model.safetensors")
    with pytest.raises(PriorCorrupt) as e:
        load_prior(prior_dir)
    _assert_one_line_naming(e, prior_dir / "model.safetensors")
    assert "weights_sha256" in str(e.value)


def test_an_older_prior_without_checksums_still_loads_and_a_truncated_one_still_fails_in_one_line(prior_dir):
    config = json.loads((prior_dir / "config.json").read_text())
    del config["weights_sha256"], config["norm_sha256"]
    (prior_dir / "config.json").write_text(json.dumps(config))
    assert load_prior(prior_dir).d_model == 8
    _truncate(prior_dir / "model.safetensors")
    with pytest.raises(PriorCorrupt) as e:
        load_prior(prior_dir)
    _assert_one_line_naming(e, prior_dir / "model.safetensors")


def test_a_corrupt_prior_config_names_the_config(prior_dir):
    _truncate(prior_dir / "config.json")
    with pytest.raises(PriorCorrupt) as e:
        load_prior(prior_dir)
    msg = str(e.value)
    assert str(prior_dir / "config.json") in msg and "--select glp_prior" in msg and "\n" not in msg


# ---------------------------------------------------------------- a disk that fills up during a save


@contextmanager
def _file_size_limit(n_bytes):
    """A real limit on the size of files this process writes (`ulimit -f`): a write past it fails with EFBIG, as
    torch's checkpoint writer meets a full disk (the SIGXFSZ it would also send is ignored meanwhile)."""
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, old[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old)
        signal.signal(signal.SIGXFSZ, handler)


def test_a_checkpoint_write_that_fails_says_why_removes_the_torn_tag_and_the_run_resumes(store, tmp_path, full):
    """A full disk during a save showed only torch's `inline_container ... unexpected pos`."""
    ckpt = tmp_path / "ckpt"
    with pytest.raises(TrainingInterrupted):
        _train(store, ckpt, interrupt_after=12)  # step8 sealed
    with _file_size_limit(32_000), pytest.raises(CheckpointWriteError) as e:  # step16's model states take ~60 kB
        _train(store, ckpt)
    msg = str(e.value)
    assert msg.startswith(f"writing {ckpt / 'step16'} failed: a file reached this process's file size limit (ulimit -f: "
                          "32,000 bytes; ")
    assert "training resumes from it: raise the limit (ulimit -f unlimited), then run the step again" in msg
    assert "RuntimeError: [enforce fail at inline_container.cc" in msg  # torch's own words, last
    assert [t for _, t in checkpoint_tags(ckpt)] == ["step8"] and verify_checkpoint(ckpt / "step8") is None
    model, res = _train(store, ckpt)
    assert res.resumed_from == 8 and res.steps == 64
    _assert_same_weights(full, model.state_dict())


def test_no_space_left_is_said_with_the_mount_and_what_to_do(tmp_path):
    """A real ENOSPC (from /dev/full) and torch's real writer failing there are both recognised."""
    with pytest.raises(OSError) as nospace:
        with open("/dev/full", "wb") as f:
            f.write(b"x" * 4096)
    with pytest.raises(RuntimeError) as torn:
        torch.save({"w": torch.zeros(1000)}, "/dev/full")
    assert is_write_failure(nospace.value) and is_write_failure(torn.value)
    assert not is_write_failure(RuntimeError("shape mismatch")) and not is_write_failure(FileNotFoundError(2, "x"))
    msg = write_failure_message(tmp_path / "ckpt" / "step8", nospace.value)
    mount = Path(tmp_path).resolve()
    while not os.path.ismount(mount):
        mount = mount.parent
    assert msg.startswith(f"writing {tmp_path / 'ckpt' / 'step8'} failed: no space left on {mount} (")
    assert "free space there, or set GLP_STORE__ROOT to a disk with room" in msg and "No space left on device" in msg
