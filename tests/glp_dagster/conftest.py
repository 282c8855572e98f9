from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from glp.config import Settings, load_settings
from tests.conftest import write_tiny_corpus

TINY = {
    "source_lm": {"vocab_size": 300, "n_layer": 2, "n_embd": 32, "n_head": 4, "n_ctx": 32, "batch_size": 8, "steps": 20},
    "store": {"chunk_rows": 256, "batch_size": 8, "max_seq_len": 32, "max_tokens": 1500, "heldout_max_tokens": 400},
    "denoiser": {"n_blocks": 2, "time_dim": 16},
    "train": {"batch_size": 64, "lr": 3e-3, "checkpoint_every": 10},
    "eval": {"n_t": 4, "n_samples": 64, "sample_steps": 4, "sweep_steps": [2], "c2st_hidden": 32, "c2st_steps": 50,
             "n_bootstrap": 100},
    "steer": {"r_values": [-2.0, 0.0, 2.0], "prompts": ["The cat", "Rain fell on"], "max_new_tokens": 4,
              "decoding": "sample", "samples_per_prompt": 2, "steps": 4, "n_direction_texts": 8, "n_probe_texts": 8,
              "direction_max_tokens": 16, "n_bootstrap": 50},
    "delta_lm": {"max_tokens": 64, "steps": 4, "pca_rows": 500, "n_bootstrap": 50},
    "probe": {"prefilter": 16, "folds": 3, "n_bootstrap": 200, "dashboard_rows": 200, "dashboard_top": 3},
    "sae": {"expansion": 2, "k": 4, "batch_size": 64, "lr": 3e-3},
    "ood": {"n_direction_texts": 8, "max_seq_len": 32, "sdedit_steps": 4, "n_bootstrap": 50},
    "device": "cpu",
}


def write_tiny_probe_tasks(path: Path) -> dict:
    """Two templated binary tasks in the format of glp.data.probe_tasks; returns their config values."""
    from glp.config import ProbeTasksConfig
    from glp.data.probe_tasks import balance_and_split, write_tasks

    cfg = ProbeTasksConfig(path=path, max_train=24, min_examples=20)
    words = {"animal": ["cat", "dog", "bird", "horse"], "thing": ["mat", "bread", "letter", "garden"]}
    tasks, rows = [], []
    for name, pos_key in (("is_animal", "animal"), ("is_thing", "thing")):
        items = {k: [(f"{k}{i}", f"The {w} was seen by the river {i}") for i, w in enumerate(ws * 10)]
                 for k, ws in words.items()}
        neg_key = "thing" if pos_key == "animal" else "animal"
        r = balance_and_split(name, items[pos_key], items[neg_key], cfg)
        rows += r
        tasks.append({"name": name, "category": "test", "description": f"{pos_key} (1) or not (0)",
                      "source": "template", "licence": "n/a", "n_examples": len(r)})
    write_tasks(path, tasks, rows, cfg)
    return cfg.model_dump(mode="json")


POSITIVE = ["good", "great", "wonderful", "lovely", "happy", "brilliant", "delightful", "excellent"]
NEGATIVE = ["bad", "awful", "terrible", "boring", "sad", "dreadful", "horrible", "poor"]
NOUNS = ["film", "story", "plot", "acting", "ending", "music", "product", "service"]


def write_tiny_labelled(path: Path, n: int = 48, seed: int = 0) -> Path:
    """Synthetic files in the format of the DVC stage `labelled`: movie_snippets.jsonl {id, text, rating (|r| >= 1),
    use}, amazon_reviews.jsonl {id, text, rating} and tweets.jsonl {id, text, label}; n rows each, seeded."""
    rng = random.Random(seed)
    path.mkdir(parents=True, exist_ok=True)

    def text(positive: bool) -> str:
        words = POSITIVE if positive else NEGATIVE
        return f"The {rng.choice(NOUNS)} was {rng.choice(words)} and {rng.choice(words)} {rng.randrange(1000)}"

    def write(name: str, rows: list[dict]) -> None:
        with open(path / name, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)

    sign = [1 if i % 2 else -1 for i in range(n)]
    write("movie_snippets.jsonl", [
        {"id": f"movie-{i}", "text": text(s > 0), "rating": s * rng.uniform(1, 3.5),
         "use": "direction" if (i // 2) % 2 else "probe"} for i, s in enumerate(sign)])
    write("amazon_reviews.jsonl", [  # every 6th row weak (|rating| < 0.5): not used by the judge
        {"id": f"amazon-{i}", "text": text(s > 0),
         "rating": s * (rng.uniform(0, 0.4) if i % 6 == 5 else rng.uniform(0.6, 3))} for i, s in enumerate(sign)])
    write("tweets.jsonl", [
        {"id": f"tweet-{i}", "label": ("neutral" if i % 5 == 4 else "positive" if s > 0 else "negative"),
         "text": (f"The {rng.choice(NOUNS)} opens at {rng.randrange(12)} today" if i % 5 == 4 else text(s > 0))}
        for i, s in enumerate(sign)])
    return path


def tiny_settings(tmp: Path, **overrides) -> Settings:
    corpus = tmp / "corpus"
    if not corpus.exists():
        write_tiny_corpus(corpus)
    tasks = write_tiny_probe_tasks(tmp / "probe_tasks")
    labelled = tmp / "labelled"
    if not labelled.exists():
        write_tiny_labelled(labelled)
    values = {**TINY, "corpus": {"path": str(corpus)}, "sources": [{"model": "builtin", "layer": 1}],
              "probe_tasks": tasks}
    values["store"] = {**values["store"], "root": str(tmp / "store")}
    values.update(overrides)
    values["steer"] = {"labelled": str(labelled), **values["steer"]}
    return load_settings(**values)


def build_prior_chain(s: Settings, src) -> None:  # noqa: ANN001 (SourceConfig)
    """Every library step up to the evaluated prior, in pipeline order: source LM, activations, norm stats, prior,
    SAE (prior_eval compares with it), prior_eval."""
    from glp import pipeline
    from glp.pipeline.probing import build_sae

    pipeline.build_source_lm(s)
    pipeline.build_activations(s, src)
    pipeline.build_norm_stats(s, src)
    pipeline.build_prior(s, src)
    build_sae(s, src)
    pipeline.build_prior_eval(s, src)


@pytest.fixture()
def settings(tmp_path: Path) -> Settings:
    return tiny_settings(tmp_path)
