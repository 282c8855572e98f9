"""The probing-task builder: balanced, seeded, stratified splits in one shared text order; tasks from the corpus
and the labelled data; no steering-direction text; a byte-deterministic dataset."""

import json
from pathlib import Path

import numpy as np
import pytest

from glp.config import ProbeTasksConfig
from glp.data.corpus import load_labelled, text_key
from glp.data.corpus_build import write_labelled
from glp.data.probe_tasks import (BBC_LEAD_WORDS, TASKS, ProbeTasksError, TaskSpec, balance_and_split, build_tasks, gloss_of,
                             load_tasks, split_counts, tasks_hash, unique_text_tokens, write_tasks)

ROOT = Path(__file__).resolve().parents[2]
REAL = ROOT / "assets/datasets/probe_tasks/data"
REAL_LABELLED = ROOT / "assets/datasets/labelled"


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
    assert rows == balance_and_split("t", list(reversed(pos)), list(reversed(neg)), cfg)  # order-free


def test_tasks_over_the_same_texts_draw_the_same_examples():
    cfg = ProbeTasksConfig(max_examples=40, max_train=30, min_examples=20)
    pool = _items("x", 300)
    a = balance_and_split("a", pool[:100], _items("n", 100), cfg)
    b = balance_and_split("b", pool, _items("m", 100), cfg)  # a superset of a's candidates, another task
    same = balance_and_split("c", pool[:100], _items("m", 100), cfg)
    a_pos, b_pos = {r["text"] for r in a if r["label"] == 1}, {r["text"] for r in b if r["label"] == 1}
    # one seeded order of texts for all tasks: whatever b picks among a's candidates, a picked too
    assert b_pos & {t for _, t in pool[:100]} <= a_pos
    assert {r["text"] for r in same if r["label"] == 1} == a_pos  # same candidates: the same texts
    assert balance_and_split("a", pool[:150], _items("n", 100), cfg, examples_scale=0.5)[0]["task"] == "a"
    assert len(balance_and_split("a", pool[:150], _items("n", 100), cfg, examples_scale=0.5)) == 20


def test_forbidden_texts_never_become_examples():
    cfg = ProbeTasksConfig(max_examples=400, min_examples=20)
    pos, neg = _items("p", 60), _items("n", 60)
    forbidden = {text_key(t) for _, t in pos[:30]}
    rows = balance_and_split("t", [(i, t.upper()) for i, t in pos], neg, cfg, forbidden=forbidden)
    assert not {text_key(r["text"]) for r in rows} & forbidden and len(rows) == 60


def test_a_task_with_too_few_examples_fails_naming_it():
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


# ---------------------------------------------------------------- tasks from BBC, human ratings and tweets

TOPICS = ("business", "entertainment", "politics", "sports", "tech")


def _new_source_inputs(tmp_path: Path) -> tuple[Path, Path, set[str]]:
    """A prepared corpus with BBC articles and NYT snippets, and labelled data in the contracted format, where
    some texts of the movie snippets' direction half also turn up elsewhere."""
    docs = []
    for k, topic in enumerate(TOPICS):
        for i in range(30):
            body = " ".join(f"{topic}word{j}" for j in range(60))
            docs.append({"id": f"bbc-{topic}-{i:03d}", "source": "bbc", "topic": topic,
                         "text": f"Headline {i} of {topic}. {body}"})
    for i in range(40):
        docs.append({"id": f"vader-nyt-{i}", "source": "vader-nyt", "rating": 2.0 if i % 2 else -2.0,
                     "text": f"Editorial {i} is {'hopeful' if i % 2 else 'grim'}."})
    docs.append({"id": "vader-nyt-shared", "source": "vader-nyt", "rating": 3.0, "text": "A direction text, word for word."})
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, part in (("train", docs[::2]), ("heldout", docs[1::2])):
        (corpus / f"{split}.jsonl").write_text("".join(json.dumps(d) + "\n" for d in part))
    (corpus / "manifest.json").write_text("{}")

    movie = [{"id": f"movie-{i}", "text": f"Movie {i} was {'wonderful' if i % 2 else 'dreadful'}.",
              "rating": 2.5 if i % 2 else -2.5, "use": "probe" if i % 3 else "direction"} for i in range(90)]
    movie.append({"id": "movie-999", "text": "A direction text, word for word.", "rating": 3.0, "use": "direction"})
    amazon = [{"id": f"amazon-{i}", "text": f"Product {i} is {'great' if i % 2 else 'broken'}.",
               "rating": 1.5 if i % 2 else -1.5} for i in range(40)] + [
        {"id": "amazon-x", "text": "A DIRECTION text word for word", "rating": 2.0}]
    tweets = [{"id": f"tweet-{i:05d}", "text": f"@user day {i} was {['bad', 'ok', 'great'][i % 3]}",
               "label": ["negative", "neutral", "positive"][i % 3]} for i in range(90)]
    labelled = tmp_path / "labelled"
    write_labelled(labelled, {"movie_snippets.jsonl": movie, "amazon_reviews.jsonl": amazon, "tweets.jsonl": tweets},
                   counts={}, seed=0)
    direction = {text_key(r["text"]) for r in movie if r["use"] == "direction"}
    return corpus, labelled, direction


def test_topic_and_human_rated_sentiment_tasks_never_use_a_direction_text(tmp_path):
    corpus, labelled, direction = _new_source_inputs(tmp_path)
    names = [f"bbc_{t}" for t in TOPICS] + ["movie_sentiment", "amazon_sentiment", "nyt_sentiment", "tweet_sentiment"]
    specs = [s for s in TASKS if s.name in names]
    cfg = ProbeTasksConfig(max_examples=40, max_train=24, min_examples=16)
    tasks, rows = build_tasks(corpus, cfg, specs, labelled=labelled)
    assert {t["name"] for t in tasks} == set(names)
    assert not {text_key(r["text"]) for r in rows} & direction
    by_task: dict[str, list[dict]] = {}
    for r in rows:
        by_task.setdefault(r["task"], []).append(r)
    for name, task_rows in by_task.items():
        assert sum(r["label"] for r in task_rows) * 2 == len(task_rows)
    for r in by_task["movie_sentiment"]:
        assert r["id"] in {f"movie-{i}" for i in range(90) if i % 3}  # the probe half only
        assert r["label"] == ("wonderful" in r["text"])
    for r in by_task["bbc_sports"]:
        assert len(r["text"].split()) == BBC_LEAD_WORDS and r["text"].startswith("Headline")
        assert r["label"] == (r["id"].startswith("bbc-sports-"))
    assert len(by_task["bbc_sports"]) == int(40 * 0.8)  # long texts: a smaller share of max_examples
    assert all(r["label"] == ("great" in r["text"]) for r in by_task["tweet_sentiment"])
    assert not any("ok" in r["text"] for r in by_task["tweet_sentiment"])  # neutral tweets are left out
    bbc_texts = {r["text"] for n in names[:5] for r in by_task[n]}
    assert len(bbc_texts) <= 5 * 16  # the five topic tasks share one pool of leads
    n_texts, tokens = unique_text_tokens(rows)
    write_tasks(tmp_path / "out", tasks, rows, cfg, {"corpus_hash": "x"})
    manifest = json.loads((tmp_path / "out/manifest.json").read_text())
    assert manifest["n_unique_texts"] == n_texts and manifest["est_tokens"]["unique_texts"] == tokens > 0
    assert all(t["est_tokens"] > 0 and t["licence"] for t in json.loads((tmp_path / "out/tasks.json").read_text()))


def test_a_task_of_labelled_data_without_it_says_how_to_get_it(tmp_path):
    corpus, _, _ = _new_source_inputs(tmp_path)
    spec = next(s for s in TASKS if s.name == "tweet_sentiment")
    with pytest.raises(ProbeTasksError, match="reads the labelled data: build it with `dvc repro labelled`"):
        build_tasks(corpus, ProbeTasksConfig(min_examples=16), [spec])


# ---------------------------------------------------------------- the shipped dataset (after `dvc pull` / `dvc repro`)


@pytest.mark.skipif(not (REAL / "tasks.json").is_file(), reason="the probe_tasks dataset is not built (dvc pull)")
def test_the_shipped_dataset_has_25_balanced_tasks_sized_for_a_cpu():
    tasks = load_tasks(REAL)
    assert len(tasks) >= 25
    names = {t.name for t in tasks}
    assert {f"bbc_{t}" for t in TOPICS} <= names and {"movie_sentiment", "tweet_sentiment"} <= names
    cfg = ProbeTasksConfig()
    for t in tasks:
        c = split_counts(t)
        assert min(c.values()) > 0 and c["train_pos"] == c["train_neg"] and c["test_pos"] == c["test_neg"]
        assert sum(c.values()) >= cfg.min_examples and len(t.train_y) <= cfg.max_train
        assert t.info["description"] and t.info["licence"]
    manifest = json.loads((REAL / "manifest.json").read_text())
    assert manifest["est_tokens"]["unique_texts"] <= 120_000
    if (REAL_LABELLED / "movie_snippets.jsonl").is_file():
        direction = {text_key(r["text"]) for r in load_labelled(REAL_LABELLED, "movie_snippets.jsonl")
                     if r["use"] == "direction"}
        assert not direction & {text_key(x) for t in tasks for x in (*t.train_text, *t.test_text)}
