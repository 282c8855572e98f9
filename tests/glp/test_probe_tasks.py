"""The probing-task builder: balanced, seeded, stratified splits; no label leaks; a byte-deterministic dataset."""

import json
from pathlib import Path

import numpy as np
import pytest

from glp.config import ProbeTasksConfig
from glp.probe_tasks import (TaskSpec, balance_and_split, build_tasks, gloss_of, load_tasks, split_counts, tasks_hash,
                             write_tasks)

REAL = Path(__file__).resolve().parents[2] / "assets/datasets/probe_tasks/data"


def _items(prefix: str, n: int) -> list[tuple[str, str]]:
    return [(f"{prefix}{i}", f"{prefix} text {i}") for i in range(n)]


def test_a_task_is_balanced_deduplicated_and_split_stratified_with_train_capped():
    cfg = ProbeTasksConfig(max_examples=400, max_train=100, min_examples=20)
    pos = _items("p", 500) + [("dup", "shared text")]
    neg = _items("n", 260) + [("dup2", "shared text")]
    rows = balance_and_split("t", pos, neg, cfg)
    assert "shared text" not in {r["text"] for r in rows}  # a text in both classes has no label
    assert len(rows) == 400 and sum(r["label"] for r in rows) == 200
    train = [r for r in rows if r["split"] == "train"]
    assert len(train) == 100 and sum(r["label"] for r in train) == 50
    assert rows == balance_and_split("t", pos, neg, cfg)  # seeded
    assert rows != balance_and_split("t", pos, neg, cfg.model_copy(update={"seed": 1}))


def test_a_task_with_too_few_examples_fails_naming_it():
    from glp.probe_tasks import ProbeTasksError

    with pytest.raises(ProbeTasksError, match="task tiny: only 20 balanced examples"):
        balance_and_split("tiny", _items("p", 10), _items("n", 50), ProbeTasksConfig(min_examples=200))


def test_gloss_drops_the_lemmas_the_pos_tag_and_the_examples():
    doc = {"text": 'cat, true cat (noun): feline mammal usually having thick soft fur; "the cat purred"'}
    assert gloss_of(doc) == "feline mammal usually having thick soft fur"


def test_build_write_load_round_trip_is_byte_deterministic(tmp_path):
    from tests.conftest import write_tiny_corpus

    corpus = write_tiny_corpus(tmp_path / "corpus", [f"the {w} number {i}" for w in ("cat", "dog") for i in range(40)])
    spec = TaskSpec("cat_vs_dog", "test", "cat (1) or dog (0)", "test", "none",
                    lambda v: ([(d["id"], d["text"]) for d in v["fortunes"] if "cat" in d["text"]],
                               [(d["id"], d["text"]) for d in v["fortunes"] if "dog" in d["text"]]))
    # the tiny corpus's docs have source "test": present them as fortunes
    for split in ("train", "heldout"):
        p = corpus / f"{split}.jsonl"
        p.write_text("".join(json.dumps({**json.loads(l), "source": "fortunes", "file": "f"}) + "\n"
                             for l in p.read_text().splitlines()))
    cfg = ProbeTasksConfig(min_examples=20, max_train=40)
    hashes = []
    for out in (tmp_path / "a", tmp_path / "b"):
        tasks, rows = build_tasks(corpus, cfg, [spec])
        write_tasks(out, tasks, rows, cfg)
        hashes.append(tasks_hash(out))
    assert hashes[0] == hashes[1]
    (task,) = load_tasks(tmp_path / "a")
    c = split_counts(task)
    assert c["train_pos"] == c["train_neg"] == 20 and c["test_pos"] == c["test_neg"] > 0
    assert all(("cat" in t) == bool(y) for t, y in zip(task.train_text + task.test_text,
                                                       np.concatenate([task.train_y, task.test_y])))


@pytest.mark.skipif(not (REAL / "tasks.json").is_file(), reason="the probe_tasks dataset is not built (dvc pull)")
def test_the_shipped_dataset_has_20_balanced_tasks_of_200_examples_or_more():
    tasks = load_tasks(REAL)
    assert len(tasks) >= 20
    for t in tasks:
        c = split_counts(t)
        assert min(c.values()) > 0 and c["train_pos"] == c["train_neg"] and c["test_pos"] == c["test_neg"]
        assert sum(c.values()) >= 200 and len(t.train_y) <= 1024 and t.info["description"] and t.info["licence"]
