"""The source LLM: load any HF causal LM from a local path and read one block's residual stream.

Residual-stream *output* of decoder block `layer` = HF `hidden_states[layer + 1]`. We capture it with a
forward hook on the block module (no `output_hidden_states`, which would keep every layer alive).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


class SourceModelError(ValueError):
    """The source LLM cannot be loaded or does not have the requested layer."""


@dataclass
class SourceLM:
    """A loaded causal LM, its tokenizer and where it came from."""

    model: Any  # transformers PreTrainedModel (causal LM), eval mode
    tokenizer: Any
    path: str
    device: torch.device

    @property
    def n_layers(self) -> int:
        return len(decoder_layers(self.model))

    @property
    def d_model(self) -> int:
        return int(self.model.config.hidden_size)

    @property
    def bos_id(self) -> int:
        """Token prepended to every document (bos, else eos), excluded from stored activations."""
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if bos is None:
            raise SourceModelError(f"tokenizer at {self.path} has neither a bos nor an eos token")
        return int(bos)

    @property
    def pad_id(self) -> int:
        tok = self.tokenizer
        return int(tok.pad_token_id if tok.pad_token_id is not None else self.bos_id)

    def block(self, layer: int) -> nn.Module:
        """Decoder block `layer`, or a clear error listing the valid range."""
        layers = decoder_layers(self.model)
        if not 0 <= layer < len(layers):
            raise SourceModelError(
                f"layer {layer} out of range for the model at {self.path} ({len(layers)} blocks): "
                f"choose 0..{len(layers) - 1}"
            )
        return layers[layer]


def resolve_device(device: str) -> torch.device:
    """`auto` → cuda when available, else cpu."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def cpu_has_bf16() -> bool:
    """The CPU computes bfloat16 natively (avx512_bf16 or AMX): only then is bf16 faster than float32 on CPU."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """`auto` → bfloat16 where the hardware runs it natively (CUDA with bf16, CPU with avx512_bf16/AMX), else float32."""
    if dtype != "auto":
        return dtype
    if device.type == "cuda":
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    return "bfloat16" if cpu_has_bf16() else "float32"


def load_source_lm(
    path: str | Path,
    device: str = "auto",
    dtype: str = "float32",
    trust_remote_code: bool = False,
) -> SourceLM:
    """Load a causal LM and tokenizer from a local directory with `from_pretrained` (never the hub)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    if not (path / "config.json").is_file():
        raise SourceModelError(
            f"no model at {path} (missing config.json): point the source's `model` at a local directory "
            "saved with save_pretrained, or use `builtin` and materialize the `source_lm` asset first"
        )
    dev = resolve_device(device)
    torch_dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[resolve_dtype(dtype, dev)]
    kwargs = dict(local_files_only=True, trust_remote_code=trust_remote_code)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, **kwargs)
    except Exception as e:  # noqa: BLE001 (OSError, ValueError, safetensors' SafetensorError, torn JSON, ...)
        raise SourceModelError(_load_error(path, e)) from e
    model.to(dev).eval()
    return SourceLM(model=model, tokenizer=tokenizer, path=str(path), device=dev)


def _load_error(path: Path, e: Exception) -> str:
    """One line: what is broken (the model folder, the weights file when the error is about it) and how to clear it."""
    weights = sorted(path.glob("*.safetensors"))
    what = f"{weights[0]} is truncated or corrupt" if weights and "safetensor" in f"{type(e).__name__} {e}".lower() \
        else f"could not load a causal LM from {path}"
    asset = next((a for a in ("source_model", "source_lm") if a in path.parts), None)
    fix = (f"delete {path} and re-materialize `{asset}` (dagster asset materialize -m glp_dagster.definitions "
           f"--select {asset})" if asset else f"re-save the model into {path} with save_pretrained")
    return f"{what} ({type(e).__name__}: {str(e)[:200]}): {fix}"


def find_module(root: nn.Module, candidates: tuple[str, ...], kind: type[nn.Module] = nn.Module) -> nn.Module | None:
    """The first dotted attribute path in `candidates` (e.g. `model.layers`) that exists under `root` as a `kind`."""
    for dotted in candidates:
        obj: Any = root
        for part in dotted.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                break
        if isinstance(obj, kind):
            return obj
    return None


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder blocks of any common HF causal LM (GPT-2, Llama, Mistral, GPT-NeoX, OPT…)."""
    candidates = ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers", "transformer.blocks")
    found = find_module(model, candidates, nn.ModuleList)
    if found is not None:
        return found
    # Fallback: the longest ModuleList in the model.
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise SourceModelError(f"cannot find decoder blocks in {type(model).__name__}")
    return max(lists, key=len)


def pad_tokens(seqs: Sequence[Sequence[int]], pad_id: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask), each (B, W) long with W the longest sequence: right-padded (or left-padded, every sequence ending
    in the last column), mask 1 on real tokens."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if left else slice(0, len(s))
        ids[i, cols] = torch.tensor(s, dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


@contextmanager
def replace_block_output(block: nn.Module, edit: Callable[[torch.Tensor], None]) -> Iterator[None]:
    """While active, the block's output hidden states (B, T, d) are cloned and `edit` changes the clone in place
    (e.g. `h[keep] = ...`); the rest of a tuple output (caches, attentions) passes through."""

    def hook(_module: nn.Module, _inputs: tuple, output: Any) -> Any:
        hidden = (output[0] if isinstance(output, tuple) else output).clone()
        edit(hidden)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


class StopForward(Exception):
    """Raised by a capture hook with `stop=True` to skip the blocks above the captured one."""


@contextmanager
def capture_residual(lm: SourceLM, layer: int, stop: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Context manager: after each forward, `box["acts"]` holds block `layer`'s output (B, T, d).

    With `stop=True` the hook raises `StopForward` once it has the activations, so the blocks above
    `layer` and the LM head are never run; call the model inside `run_until_captured`.
    """
    box: dict[str, torch.Tensor] = {}

    def hook(_module: nn.Module, _inputs: tuple, output: Any) -> None:
        box["acts"] = output[0] if isinstance(output, tuple) else output
        if stop:
            raise StopForward

    handle = lm.block(layer).register_forward_hook(hook)
    try:
        yield box
    finally:
        handle.remove()


def run_until_captured(lm: SourceLM, box: dict[str, torch.Tensor], **inputs: torch.Tensor) -> torch.Tensor:
    """Forward `inputs` through the model (inside `capture_residual(..., stop=True)`); return the capture."""
    try:
        lm.model(**inputs, use_cache=False)
    except StopForward:
        pass
    return box.pop("acts")
