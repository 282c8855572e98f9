from __future__ import annotations

from pathlib import Path

import pytest

from glp.config import Settings, load_settings
from tests.conftest import write_tiny_corpus

TINY = {
    "source_lm": {"vocab_size": 300, "n_layer": 2, "n_embd": 32, "n_head": 4, "n_ctx": 32, "batch_size": 8, "steps": 20},
    "store": {"chunk_rows": 256, "batch_size": 8, "max_seq_len": 32, "max_tokens": 1500, "heldout_max_tokens": 400},
    "denoiser": {"n_blocks": 2, "time_dim": 16},
    "train": {"batch_size": 64, "lr": 3e-3, "checkpoint_every": 10},
    "eval": {"n_t": 4, "n_samples": 64, "sample_steps": 4},
    "device": "cpu",
}


def tiny_settings(tmp: Path, **overrides) -> Settings:
    corpus = tmp / "corpus"
    if not corpus.exists():
        write_tiny_corpus(corpus)
    values = {**TINY, "corpus": {"path": str(corpus)}, "sources": [{"model": "builtin", "layer": 1}]}
    values["store"] = {**values["store"], "root": str(tmp / "store")}
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return tiny_settings(tmp_path)
