"""Binary probing tasks built offline from the corpus (WordNet 3.0, fortune-mod) and vaderSentiment's lexicon.

`python -m glp.probe_tasks --out assets/datasets/probe_tasks/data` (the DVC stage `probe_tasks`) writes

    tasks.json       one entry per task: name, category, description, source, licence, counts
    examples.jsonl   one row per example: task, id, text, label (0/1), split (train/test)
    manifest.json    seed, sizes, sha256 of the two files above

Every task is balanced (as many positives as negatives), has at least `min_examples` examples, and a fixed
seeded train/test split (train <= `max_train`, stratified). A task's texts never contain its label
verbatim: WordNet tasks read the gloss without its lemmas and part-of-speech tag, or the bare lemma.
The datasheet is `assets/datasets/probe_tasks/README.md`. The output is byte-deterministic.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from glp.config import ProbeTasksConfig
from glp.artifacts import fresh_temp_dir, publish_dir, sha256_file

TASKS_FILE, EXAMPLES_FILE, MANIFEST = "tasks.json", "examples.jsonl", "manifest.json"
WORDNET_LICENCE = "WordNet-3.0 (Princeton, permissive; notice in the corpus's licenses/wordnet-base.copyright)"
FORTUNES_LICENCE = "BSD-3-Clause (fortune-mod; collected quotations, see the corpus's licenses/fortunes.copyright)"
MAX_FORTUNE_WORDS = 30
VADER_LICENCE = "MIT (vaderSentiment 3.3.2: lexicon and scorer)"


class ProbeTasksError(ValueError):
    """A task cannot be built (too few examples) or the tasks dataset is missing or malformed."""


@dataclass(frozen=True)
class TaskSpec:
    """How one binary task is built: two candidate lists of (id, text), positives first."""

    name: str
    category: str
    description: str
    source: str
    licence: str
    build: Callable[[dict], tuple[list[tuple[str, str]], list[tuple[str, str]]]]


# ---------------------------------------------------------------- views of the corpus


def gloss_of(doc: dict) -> str:
    """The WordNet definition alone: no lemmas, no `(pos)` tag, no quoted examples (they repeat the lemma)."""
    gloss = doc["text"].partition("): ")[2]
    return gloss.split('; "')[0].strip()


def _corpus_views(corpus: Path) -> dict:
    from glp.corpus import load_documents

    docs = load_documents(corpus, "train") + load_documents(corpus, "heldout")
    docs.sort(key=lambda d: d["id"])
    wordnet = [d for d in docs if d.get("source") == "wordnet" and gloss_of(d)]
    # short quotations only: a text must fit the probe's context untruncated (its last token is what is probed)
    fortunes = [d for d in docs if d.get("source") == "fortunes" and len(d["text"].split()) <= MAX_FORTUNE_WORDS]
    word_lex: dict[str, set[str]] = defaultdict(set)
    for d in wordnet:
        for lemma in d["lemmas"]:
            if lemma.isalpha() and lemma.islower():
                word_lex[lemma].add(d["lexname"])
    return {"wordnet": wordnet, "fortunes": fortunes, "word_lex": dict(sorted(word_lex.items()))}


def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


# ---------------------------------------------------------------- task builders


def _glosses(v: dict, pred: Callable[[dict], bool]) -> list[tuple[str, str]]:
    return [(d["id"], gloss_of(d)) for d in v["wordnet"] if pred(d)]


def _gloss_task(pos_pred: Callable[[dict], bool], neg_pred: Callable[[dict], bool]):
    return lambda v: (_glosses(v, pos_pred), _glosses(v, neg_pred))


def _lex_vs_rest(lexname: str):
    prefix = lexname.split(".")[0] + "."
    return _gloss_task(lambda d: d["lexname"] == lexname, lambda d: d["lexname"].startswith(prefix) and d["lexname"] != lexname)


def _words(v: dict, pred: Callable[[set[str]], bool]) -> list[tuple[str, str]]:
    return [(f"word-{w}", w) for w, lex in v["word_lex"].items() if pred(lex)]


def _word_task(pos_pred: Callable[[set[str]], bool], neg_pred: Callable[[set[str]], bool]):
    return lambda v: (_words(v, pos_pred), _words(v, neg_pred))


def _only(prefix: str) -> Callable[[set[str]], bool]:
    return lambda lex: all(x.startswith(prefix) for x in lex)


def _fortunes(v: dict, pred: Callable[[dict], bool]) -> list[tuple[str, str]]:
    return [(d["id"], d["text"]) for d in v["fortunes"] if pred(d)]


def _fortune_topic(files: set[str], exclude: Iterable[str] = ()):
    skip = set(files) | set(exclude)
    return lambda v: (_fortunes(v, lambda d: d["file"] in files), _fortunes(v, lambda d: d["file"] not in skip))


def _vader_words(v: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    lex = SentimentIntensityAnalyzer().lexicon
    pos = [(f"vader-{w}", w) for w, s in sorted(lex.items()) if w.isalpha() and s >= 1.5]
    neg = [(f"vader-{w}", w) for w, s in sorted(lex.items()) if w.isalpha() and s <= -1.5]
    return pos, neg


def _sentiment(kind: str, threshold: float):
    def build(v: dict) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        judge = _vader()
        items = _fortunes(v, lambda d: True) if kind == "fortunes" else _glosses(v, lambda d: True)
        scored = [(i, t, judge.polarity_scores(t)["compound"]) for i, t in items]
        return [(i, t) for i, t, s in scored if s >= threshold], [(i, t) for i, t, s in scored if s <= -threshold]

    return build


_FIRST_PERSON = re.compile(r"\b(I|me|my|mine|myself|I'm|I've|I'll|I'd)\b")
_DIGIT = re.compile(r"\d")


def _n_words(text: str) -> int:
    return len(text.split())


TASKS: list[TaskSpec] = [
    # --- part of speech (syntax) from WordNet glosses and bare lemmas
    TaskSpec("gloss_noun_vs_verb", "syntax", "Is this WordNet definition that of a noun (1) or a verb (0)?",
             "wordnet gloss", WORDNET_LICENCE, _gloss_task(lambda d: d["pos"] == "noun", lambda d: d["pos"] == "verb")),
    TaskSpec("gloss_adj_vs_adv", "syntax", "Is this definition that of an adjective (1) or an adverb (0)?",
             "wordnet gloss", WORDNET_LICENCE, _gloss_task(lambda d: d["pos"] == "adj", lambda d: d["pos"] == "adv")),
    TaskSpec("word_noun_vs_verb", "syntax", "Is this single word only ever a noun (1) or only ever a verb (0) in WordNet?",
             "wordnet lemma", WORDNET_LICENCE, _word_task(_only("noun."), _only("verb."))),
    # --- semantic category (topic) of a noun or verb definition, one category vs the rest of its part of speech
    *[TaskSpec(f"gloss_{lex.split('.')[1]}", "semantics",
               f"Does this definition belong to WordNet's lexicographer file {lex} (1) or another {lex.split('.')[0]} file (0)?",
               "wordnet gloss", WORDNET_LICENCE, _lex_vs_rest(lex))
      for lex in ("noun.animal", "noun.plant", "noun.food", "noun.person", "noun.artifact", "noun.location",
                  "noun.body", "noun.feeling", "verb.motion", "verb.communication", "verb.consumption")],
    TaskSpec("word_animal_vs_artifact", "semantics", "Is this single word only an animal (1) or only an artifact (0) noun?",
             "wordnet lemma", WORDNET_LICENCE, _word_task(lambda x: x == {"noun.animal"}, lambda x: x == {"noun.artifact"})),
    # --- sentiment (lexicon judge; thresholds on VADER's compound score / word valence)
    TaskSpec("vader_word_sentiment", "sentiment", "Is this word positive (valence >= 1.5, 1) or negative (<= -1.5, 0) in VADER's lexicon?",
             "vaderSentiment lexicon", VADER_LICENCE, _vader_words),
    TaskSpec("fortune_sentiment", "sentiment", "Is this fortune positive (VADER compound >= 0.5, 1) or negative (<= -0.5, 0)?",
             "fortunes + vaderSentiment", f"{FORTUNES_LICENCE}; labels: {VADER_LICENCE}", _sentiment("fortunes", 0.5)),
    TaskSpec("gloss_sentiment", "sentiment", "Is this definition positive (VADER compound >= 0.4, 1) or negative (<= -0.4, 0)?",
             "wordnet gloss + vaderSentiment", f"{WORDNET_LICENCE}; labels: {VADER_LICENCE}", _sentiment("glosses", 0.4)),
    # --- topic of a quotation (fortune file) vs the other files
    TaskSpec("fortune_computers", "topic", "Is this fortune from the `computers` file (1) or a non-computing file (0)?",
             "fortunes", FORTUNES_LICENCE, _fortune_topic({"computers"}, {"linux", "linuxcookie", "perl", "debian", "knghtbrd"})),
    TaskSpec("fortune_politics", "topic", "Is this fortune from the `politics` file (1) or another file (0)?",
             "fortunes", FORTUNES_LICENCE, _fortune_topic({"politics"})),
    TaskSpec("fortune_science", "topic", "Is this fortune from the `science` file (1) or another file (0)?",
             "fortunes", FORTUNES_LICENCE, _fortune_topic({"science"})),
    TaskSpec("fortune_men_women", "topic", "Is this fortune from the `men-women` or `love` files (1) or another file (0)?",
             "fortunes", FORTUNES_LICENCE, _fortune_topic({"men-women", "love"})),
    # --- genre and surface form
    TaskSpec("fortune_vs_gloss", "genre", "Is this text a fortune quotation (1) or a WordNet definition (0)?",
             "fortunes + wordnet gloss", f"{FORTUNES_LICENCE}; {WORDNET_LICENCE}",
             lambda v: (_fortunes(v, lambda d: True), _glosses(v, lambda d: True))),
    TaskSpec("fortune_question", "surface", "Does this fortune end with a question mark (1) or a full stop (0)?",
             "fortunes", FORTUNES_LICENCE,
             lambda v: (_fortunes(v, lambda d: d["text"].endswith("?")), _fortunes(v, lambda d: d["text"].endswith(".")))),
    TaskSpec("fortune_attributed", "surface", "Does this fortune end with an attribution `-- Author` (1) or not (0)?",
             "fortunes", FORTUNES_LICENCE,
             lambda v: (_fortunes(v, lambda d: " -- " in d["text"][-60:]), _fortunes(v, lambda d: " -- " not in d["text"]))),
    TaskSpec("fortune_first_person", "surface", "Does this fortune use a first-person singular pronoun (1) or not (0)?",
             "fortunes", FORTUNES_LICENCE,
             lambda v: (_fortunes(v, lambda d: bool(_FIRST_PERSON.search(d["text"]))),
                        _fortunes(v, lambda d: not _FIRST_PERSON.search(d["text"])))),
    TaskSpec("gloss_has_digit", "surface", "Does this definition contain a digit (1) or not (0)?",
             "wordnet gloss", WORDNET_LICENCE,
             _gloss_task(lambda d: bool(_DIGIT.search(gloss_of(d))), lambda d: not _DIGIT.search(gloss_of(d)))),
    TaskSpec("gloss_long_vs_short", "surface", "Is this definition long (>= 20 words, 1) or short (<= 6 words, 0)?",
             "wordnet gloss", WORDNET_LICENCE,
             _gloss_task(lambda d: _n_words(gloss_of(d)) >= 20, lambda d: _n_words(gloss_of(d)) <= 6)),
]


# ---------------------------------------------------------------- sampling and split


def _task_rng(name: str, seed: int) -> np.random.Generator:
    # keyed by the task name, so adding a task does not reshuffle the others
    return np.random.default_rng([seed, int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)])


def balance_and_split(
    name: str, pos: list[tuple[str, str]], neg: list[tuple[str, str]], cfg: ProbeTasksConfig
) -> list[dict]:
    """Drop texts that occur in both classes, sample equal class sizes, split stratified train/test (seeded)."""
    pos_texts, neg_texts = {t for _, t in pos}, {t for _, t in neg}
    both = pos_texts & neg_texts
    classes = []
    for items in (neg, pos):
        seen: set[str] = set()
        kept = []
        for i, t in items:  # one example per distinct text
            if t not in both and t not in seen:
                seen.add(t)
                kept.append((i, t))
        classes.append(kept)
    per_class = min(len(classes[0]), len(classes[1]), cfg.max_examples // 2)
    if 2 * per_class < cfg.min_examples:
        raise ProbeTasksError(f"task {name}: only {2 * per_class} balanced examples "
                              f"({len(classes[1])} positive, {len(classes[0])} negative); need {cfg.min_examples}")
    n_train_class = min(cfg.max_train // 2, int(round(cfg.train_fraction * per_class)))
    rng = _task_rng(name, cfg.seed)
    rows = []
    for label, items in ((1, classes[1]), (0, classes[0])):
        pick = rng.permutation(len(items))[:per_class]
        for rank, j in enumerate(pick):
            i, t = items[int(j)]
            rows.append({"task": name, "id": i, "text": t, "label": label,
                         "split": "train" if rank < n_train_class else "test"})
    order = rng.permutation(len(rows))  # interleave the classes
    return [rows[int(j)] for j in order]


def build_tasks(corpus: Path, cfg: ProbeTasksConfig, specs: list[TaskSpec] = TASKS) -> tuple[list[dict], list[dict]]:
    """(task descriptions, example rows) for every spec, from the prepared corpus."""
    views = _corpus_views(corpus)
    tasks, rows = [], []
    for spec in specs:
        pos, neg = spec.build(views)
        task_rows = balance_and_split(spec.name, pos, neg, cfg)
        rows += task_rows
        n = {s: sum(r["split"] == s for r in task_rows) for s in ("train", "test")}
        tasks.append({"name": spec.name, "category": spec.category, "description": spec.description,
                      "source": spec.source, "licence": spec.licence, "n_examples": len(task_rows),
                      "n_train": n["train"], "n_test": n["test"],
                      "candidates": {"positive": len(pos), "negative": len(neg)}})
    return tasks, rows


def write_tasks(out: Path, tasks: list[dict], rows: list[dict], cfg: ProbeTasksConfig) -> dict:
    """Publish tasks.json, examples.jsonl and manifest.json atomically into `out`."""
    out = Path(out)
    tmp = fresh_temp_dir(out)
    (tmp / TASKS_FILE).write_text(json.dumps(tasks, indent=1, sort_keys=True) + "\n")
    with open(tmp / EXAMPLES_FILE, "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    files = {name: sha256_file(tmp / name) for name in (TASKS_FILE, EXAMPLES_FILE)}
    from importlib.metadata import version

    manifest = {"format": "glp-probe-tasks/1", "config": cfg.model_dump(mode="json", exclude={"path"}),
                "n_tasks": len(tasks), "n_examples": len(rows), "files": files,
                "packages": {"vaderSentiment": version("vaderSentiment")}}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    publish_dir(tmp, out)
    return manifest


# ---------------------------------------------------------------- reading


@dataclass
class ProbeTask:
    """One task, ready to probe: texts and labels of each split."""

    name: str
    info: dict
    train_text: list[str]
    train_y: np.ndarray  # (n_train,) int
    test_text: list[str]
    test_y: np.ndarray  # (n_test,) int


def load_tasks(path: Path) -> list[ProbeTask]:
    """Read the tasks dataset (in tasks.json order); raises a readable error when it is missing."""
    path = Path(path)
    if not (path / TASKS_FILE).is_file() or not (path / EXAMPLES_FILE).is_file():
        raise ProbeTasksError(f"no probing tasks at {path}: run `dvc pull` or `dvc repro probe_tasks`")
    infos = json.loads((path / TASKS_FILE).read_text())
    by_task: dict[str, dict[str, list]] = {t["name"]: {"train": [], "test": []} for t in infos}
    with open(path / EXAMPLES_FILE) as f:
        for line in f:
            r = json.loads(line)
            if r["task"] not in by_task:
                raise ProbeTasksError(f"{path / EXAMPLES_FILE}: example of unknown task {r['task']!r}")
            by_task[r["task"]][r["split"]].append((r["text"], int(r["label"])))
    out = []
    for info in infos:
        sp = by_task[info["name"]]
        out.append(ProbeTask(info["name"], info, [t for t, _ in sp["train"]], np.array([y for _, y in sp["train"]], int),
                             [t for t, _ in sp["test"]], np.array([y for _, y in sp["test"]], int)))
    return out


def tasks_hash(path: Path) -> str:
    """Content hash of the tasks dataset (the sha256 of its manifest, which hashes both data files)."""
    manifest = Path(path) / MANIFEST
    if not manifest.is_file():
        raise ProbeTasksError(f"no probing tasks at {path}: run `dvc pull` or `dvc repro probe_tasks`")
    return sha256_file(manifest)


def split_counts(task: ProbeTask) -> dict[str, int]:
    """Examples per (split, class), e.g. {"train_pos": 512, ...}: what the checks look at."""
    return {"train_pos": int(task.train_y.sum()), "train_neg": int((task.train_y == 0).sum()),
            "test_pos": int(task.test_y.sum()), "test_neg": int((task.test_y == 0).sum())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ProbeTasksConfig().path)
    p.add_argument("--corpus", type=Path, default=Path("assets/datasets/corpus"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-examples", type=int, default=ProbeTasksConfig().max_examples)
    p.add_argument("--max-train", type=int, default=ProbeTasksConfig().max_train)
    args = p.parse_args(argv)
    cfg = ProbeTasksConfig(path=args.out, seed=args.seed, max_examples=args.max_examples, max_train=args.max_train)
    tasks, rows = build_tasks(args.corpus, cfg)
    write_tasks(args.out, tasks, rows, cfg)
    for t in tasks:
        print(f"{t['name']:28s} {t['category']:9s} {t['n_train']:5d} train {t['n_test']:5d} test "
              f"(candidates +{t['candidates']['positive']} / -{t['candidates']['negative']})")
    print(f"{len(tasks)} tasks, {len(rows)} examples -> {args.out}")


if __name__ == "__main__":
    main()
