"""The builtin source LM: a tiny config trained on a tiny corpus, reloaded through the HF Auto classes."""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import pytest
import torch

from glp.config import CorpusConfig, SourceLMConfig
from glp.data.corpus import corpus_hash
from glp.data.corpus_build import write_corpus
from glp.data.source_lm import REPORT, source_lm_dir, train_source_lm


def tiny_cfg(**overrides) -> SourceLMConfig:
    base = dict(vocab_size=300, n_layer=2, n_embd=32, n_head=2, n_ctx=32, batch_size=8, steps=150, lr=3e-3)
    return SourceLMConfig(**(base | overrides))


def _tiny_corpus(path: Path) -> Path:
    rng = random.Random(0)
    subjects = ["the dog", "a cat", "my friend", "the old man", "a small bird", "the teacher"]
    verbs = ["sees", "likes", "follows", "finds", "watches", "helps"]
    objects = ["the ball", "a tree", "the river", "some bread", "the house", "a red car"]
    docs = [
        {
            "id": f"doc-{i:04d}",
            "text": " ".join(f"{rng.choice(subjects)} {rng.choice(verbs)} {rng.choice(objects)}." for _ in range(rng.randint(1, 4))),
            "source": "test",
        }
        for i in range(400)
    ]
    write_corpus(docs, path, CorpusConfig(heldout_fraction=0.1))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """A 37k-parameter model gains nothing from threads, and on a busy 2-core machine they cost 10x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("source_lm")
    corpus = _tiny_corpus(root / "corpus")
    out = source_lm_dir(root / "store", tiny_cfg(), corpus_hash(corpus))
    messages: list[str] = []
    report = train_source_lm(corpus, tiny_cfg(), out, log=messages.append)
    return corpus, out, report, messages


def test_the_model_folder_holds_weights_tokenizer_and_report(trained):
    _, out, _, _ = trained
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", REPORT} <= names
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temp folder left behind


def test_the_model_reloads_through_the_auto_classes(trained):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out, report, _ = trained
    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=False)
    assert model.config.model_type == "gpt2" and model.config.n_layer == 2 and model.config.n_positions == 32
    assert len(tokenizer) == model.config.vocab_size == report["vocab_size"]
    bos = tokenizer.bos_token_id
    assert bos == tokenizer.eos_token_id == tokenizer.pad_token_id == model.config.bos_token_id
    ids = tokenizer("the dog sees the ball.").input_ids
    assert ids[0] == bos and ids[1:] == tokenizer("the dog sees the ball.", add_special_tokens=False).input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the dog sees the ball."
    with torch.inference_mode():
        hidden = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
    assert len(hidden) == 3 and hidden[-1].shape == (1, len(ids), 32)


def test_the_report_shows_a_learning_language_model(trained):
    _, _, report, messages = trained
    assert math.isfinite(report["heldout_perplexity"]) and report["heldout_tokens"] > 0
    assert report["heldout_perplexity"] < report["unigram_perplexity"]
    curve = report["loss_curve"]
    assert curve[-1][0] == 150 and curve[-1][1] < curve[0][1] - 0.5
    assert report["tokens_seen"] == 150 * 8 * 32 and report["steps"] == 150
    assert [s["prompt"] for s in report["samples"]][:2] == ["The dog", "A person who"] and len(report["samples"]) == 5
    assert all(s["text"].startswith(s["prompt"]) for s in report["samples"])
    assert any("held-out perplexity" in m for m in messages)


def test_a_complete_model_with_the_same_config_is_reused(trained):
    corpus, out, report, _ = trained
    weights = out / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    start = time.perf_counter()
    messages: list[str] = []
    again = train_source_lm(corpus, tiny_cfg(), out, log=messages.append)
    assert time.perf_counter() - start < 1.0
    assert again == report and weights.stat().st_mtime_ns == mtime
    assert "not retraining" in messages[0]


def test_training_is_deterministic_and_a_stale_folder_is_replaced(trained, tmp_path):
    from safetensors.torch import load_file

    corpus, out, report, _ = trained
    target = tmp_path / "lm"
    train_source_lm(corpus, tiny_cfg(steps=5), target)  # a different config: the next call must retrain
    second = train_source_lm(corpus, tiny_cfg(), target)
    assert second["loss_curve"] == report["loss_curve"]
    assert second["heldout_perplexity"] == report["heldout_perplexity"]
    a, b = load_file(out / "model.safetensors"), load_file(target / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lm"]


def test_the_cache_folder_depends_on_config_and_corpus(tmp_path):
    a = source_lm_dir(tmp_path, tiny_cfg(), "c1")
    assert a.parent == tmp_path / "source_lm" and len(a.name) == 12
    assert a == source_lm_dir(tmp_path, tiny_cfg(), "c1")
    assert a != source_lm_dir(tmp_path, tiny_cfg(steps=151), "c1")
    assert a != source_lm_dir(tmp_path, tiny_cfg(), "c2")
