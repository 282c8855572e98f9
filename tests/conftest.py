"""Shared fixtures: a tiny *real* transformers causal LM saved to disk, a tiny corpus, tiny stores."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One math thread per process, set before torch is imported (subprocesses inherit it through os.environ): the
# models here are tiny, and on a small shared machine extra threads only contend (a trainer test: 10 min -> 5 s).
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = "1"

TEXTS = [
    "The cat sat on the mat and looked at the dog.",
    "A happy child plays in the warm garden every morning.",
    "The old man walked slowly to the market to buy bread.",
    "Rain fell on the quiet town all night long.",
    "She wrote a long letter to her friend across the sea.",
    "Money is a medium of exchange used to buy goods.",
    "The river runs through the green valley to the ocean.",
    "Birds sing loudly when the sun rises over the hills.",
] * 8


def write_tiny_corpus(root: Path, texts: list[str] = TEXTS) -> Path:
    """A corpus folder in the format of glp.data.corpus (train/heldout jsonl + manifest)."""
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in (("train", texts), ("heldout", texts[:16])):
        with open(root / f"{split}.jsonl", "w") as f:
            for i, t in enumerate(rows):
                f.write(json.dumps({"id": f"{split}-{i}", "text": f"{t} ({i})", "source": "test"}) + "\n")
    (root / "manifest.json").write_text(json.dumps({"files": {"train.jsonl": "x", "heldout.jsonl": "y"}}))
    return root


def build_tiny_lm(path: Path, n_layer: int = 3, n_embd: int = 32) -> Path:
    """Train a tiny byte-level BPE, build a random tiny GPT-2 and save both with save_pretrained."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast
    import torch

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_layer=n_layer, n_embd=n_embd, n_head=4, n_positions=64,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir: Path):
    from glp.data.lm import load_source_lm

    return load_source_lm(tiny_lm_dir, device="cpu")


@pytest.fixture()
def tiny_corpus(tmp_path: Path) -> Path:
    return write_tiny_corpus(tmp_path / "corpus")


def pytest_configure(config: pytest.Config) -> None:
    import torch  # noqa: PLC0415 (after the thread variables above)

    torch.set_num_threads(1)  # in case a plugin imported torch before this file set OMP_NUM_THREADS
