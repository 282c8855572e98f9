"""Generation under an edit: the steering edit (a + α·w, then raw / SDEdit / gated post-processing) applied to the
newest position only at each forward pass, through one block-output hook, with a shared prefilled prompt cache."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
from torch import Tensor

from glp.data.lm import SourceLM, replace_block_output
from glp.prior.export import Prior
from glp.prior.manifold import Gate, diffusion_score, gated_edit, sdedit
from glp.uses.judges import left_pad, rewind_cache


def max_positions(lm: SourceLM) -> int | None:
    """The longest sequence the model's position embeddings allow (None if the config does not say)."""
    cfg = lm.model.config
    return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)


def encode(lm: SourceLM, text: str) -> list[int]:
    """`[BOS] + tokens` (the same convention as activation extraction)."""
    return [lm.bos_id, *lm.tokenizer(text, add_special_tokens=False)["input_ids"]]


def steer_edit(
    w: Tensor,
    alpha: Tensor | float,
    prior: Prior | None = None,
    t_start: float = 0.5,
    steps: int = 20,
    solver: Literal["euler", "heun", "midpoint"] = "euler",
    generator: torch.Generator | None = None,
    gate: Gate | None = None,
    weights: list[Tensor] | None = None,
) -> Edit:
    """The edit a -> a + alpha w (alpha scalar or per row (B,)), then SDEdit with `prior` if given; with `gate`
    too, SDEdit only in proportion to the gate's weight of each steered row (glp.uses.ood.gated_edit), the weights
    appended to `weights` if given."""

    def edit(a: Tensor) -> Tensor:
        al = torch.as_tensor(alpha, dtype=a.dtype, device=a.device)
        out = a + (al.reshape(-1, 1) if al.ndim else al) * w.to(a)
        if prior is None:
            return out
        if gate is None:
            return sdedit(prior, out, t_start, steps, solver, generator)
        z = prior.normalizer.normalize(out.to(prior.normalizer.mean))
        scores = diffusion_score(prior.denoiser, z, gate.ts, gate.seed)
        edited, wt = gated_edit(gate, scores, out, lambda x: sdedit(prior, x, t_start, steps, solver, generator))
        if weights is not None:
            weights.append(wt.cpu())
        return edited

    return edit


@contextmanager
def newest_position_hook(block: nn.Module, edit: Edit) -> Iterator[None]:
    """While active, the block's output at the last position (B, -1, d) is replaced by `edit` of it."""

    def newest(hidden: Tensor) -> None:
        hidden[:, -1] = edit(hidden[:, -1])

    with replace_block_output(block, newest):
        yield


@dataclass
class Prefix:
    """Left-padded prompts (B, W) and the unsteered KV cache of all but their last column, shared by every
    steering setting of the same prompts (edits start at the last prompt token, so this part never changes)."""

    ids: Tensor
    mask: Tensor
    pos: Tensor
    past: Any  # transformers Cache, rewound to W - 1 positions before each use


@torch.inference_mode()
def prefill(lm: SourceLM, prompts: Sequence[list[int]]) -> Prefix:
    """Run the prompts but their last token through the unsteered LM (one batch)."""
    if any(len(p) < 2 for p in prompts):
        raise ValueError("every prompt needs a token after BOS: position 0 (BOS) is never steered")
    ids, mask, pos = (x.to(lm.device) for x in left_pad(prompts, lm.pad_id))
    out = lm.model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1], use_cache=True,
                   logits_to_keep=1)
    return Prefix(ids, mask, pos, out.past_key_values)


@torch.inference_mode()
def generate(
    lm: SourceLM,
    prompts: Sequence[list[int]],
    max_new_tokens: int,
    decoding: Literal["greedy", "sample"] = "greedy",
    temperature: float = 1.0,
    seed: int = 0,
    layer: int | None = None,
    edit: Edit | None = None,
    prefix: Prefix | None = None,
) -> list[list[int]]:
    """Continue each token list (left-padded batch, KV cache); with `edit`, steer block `layer` at the newest
    position on every forward. `prefix` (from `prefill` of the same prompts) saves re-running the prompts.
    Sampling draws from a cpu generator seeded with `seed`. Returns new ids per row."""
    pre = prefix if prefix is not None else prefill(lm, prompts)
    if pre.ids.shape[0] != len(prompts):
        raise ValueError(f"prefix holds {pre.ids.shape[0]} prompts, {len(prompts)} given")
    B, width = pre.ids.shape
    limit = max_positions(lm)
    if limit and width + max_new_tokens > limit:
        raise ValueError(f"prompts of up to {width} tokens + {max_new_tokens} new tokens exceed the {limit} positions "
                         f"of the model at {lm.path}: shorten the prompts or lower `steer.max_new_tokens`")
    rewind_cache(pre.past, width - 1)
    past, mask, pos, inp = pre.past, pre.mask, pre.pos[:, -1:], pre.ids[:, -1:]
    gen = torch.Generator().manual_seed(seed)
    hook = newest_position_hook(lm.block(layer), edit) if edit is not None else nullcontext()
    new: list[Tensor] = []
    with hook:
        for _ in range(max_new_tokens):
            out = lm.model(input_ids=inp, attention_mask=mask, position_ids=pos, past_key_values=past, use_cache=True)
            logits = out.logits[:, -1].float().cpu()
            if decoding == "greedy":
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen).squeeze(1)
            new.append(nxt)
            inp = nxt.to(lm.device).unsqueeze(1)
            mask = torch.cat([mask, torch.ones((B, 1), dtype=mask.dtype, device=mask.device)], 1)
            pos = pos + 1
    return torch.stack(new, 1).tolist()


Edit = Callable[[Tensor], Tensor]  # (B, d) newest-position activations -> edited (B, d)
