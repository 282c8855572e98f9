"""The offline English corpus: WordNet 3.0 glosses and fortune-mod quotations from two Debian packages.

`python -m glp.corpus --out assets/datasets/corpus` (the DVC stage `corpus`) downloads the pinned `.deb`s with
`apt-get download`, unpacks them with `dpkg -x` (no root install), parses one document per WordNet synset and
per fortune, splits by a seeded hash of the document id and publishes `train.jsonl`, `heldout.jsonl`,
`manifest.json` and the packages' copyright files atomically. The output is byte-deterministic.
Everything downstream reads it through `load_documents` and identifies it by `corpus_hash`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from glp.config import CorpusConfig
from glp.artifacts import fresh_temp_dir, publish_dir, sha256_file

Split = Literal["train", "heldout"]
SPLITS: tuple[Split, ...] = ("train", "heldout")
MANIFEST = "manifest.json"

# Pinned so the corpus is reproducible; apt verifies the archive signature, we verify the bytes.
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

WORDNET_DIR = "usr/share/wordnet"
FORTUNES_DIR = "usr/share/games/fortunes"
WORDNET_POS = {"noun": "noun", "verb": "verb", "adj": "adj", "adv": "adv"}  # data.<file> -> pos label
FORTUNES_EXCLUDED = ("ascii-art",)  # pictures, not English text; whitespace normalization destroys them anyway

_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # syntactic marker on adjective lemmas, e.g. `beautiful(a)`
_LEXNAME_ROW = re.compile(r"^(\d{2})\t\s*([a-z]+\.[A-Za-z]+)")


class CorpusError(RuntimeError):
    """The corpus cannot be built or read; the message says what to do."""


# ---------------------------------------------------------------- parsing (takes extracted package folders)


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
            gloss = " ".join(gloss.replace("_", " ").split())
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
        text = " ".join(" ".join(chunk).split())
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


# ---------------------------------------------------------------- split and write


def split_value(doc_id: str, seed: int) -> float:
    """Uniform in [0, 1), a fixed function of (seed, id): decides the split and the order within a split."""
    digest = hashlib.sha256(f"{seed}:{doc_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_of(doc_id: str, cfg: CorpusConfig) -> Split:
    return "heldout" if split_value(doc_id, cfg.seed) < cfg.heldout_fraction else "train"


def _dedupe(docs: list[dict]) -> tuple[list[dict], int]:
    """Drop exact-text repeats (the fortune files repeat some quotes), keeping the smallest id, so that no
    held-out text also appears in train."""
    seen: set[str] = set()
    kept = []
    for doc in sorted(docs, key=lambda d: d["id"]):
        if doc["text"] not in seen:
            seen.add(doc["text"])
            kept.append(doc)
    return kept, len(docs) - len(kept)


def write_corpus(
    docs: list[dict], out: Path, cfg: CorpusConfig, packages: dict | None = None, licenses: dict[str, Path] | None = None
) -> dict:
    """Split `docs` by seeded id hash and publish `out` atomically; return the manifest.

    Within a split, documents are ordered by their hash value (a seeded shuffle), so any prefix mixes sources.
    `licenses` maps a file name to a copyright file copied to `out/licenses/`.
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_temp_dir(out)
    try:
        files: dict[str, str] = {}
        counts: dict[str, dict] = {}
        for split, split_docs in by_split.items():
            split_docs.sort(key=lambda d: (split_value(d["id"], cfg.seed), d["id"]))
            path = tmp / f"{split}.jsonl"
            with path.open("w", encoding="utf-8", newline="\n") as f:
                for d in split_docs:
                    f.write(json.dumps(d, ensure_ascii=False, sort_keys=True) + "\n")
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
        for name, src in sorted((licenses or {}).items()):
            (tmp / "licenses").mkdir(exist_ok=True)
            shutil.copyfile(src, tmp / "licenses" / name)
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            files[path.relative_to(tmp).as_posix()] = sha256_file(path)
        manifest = {
            "format": "glp-corpus/1",
            "packages": packages or {},
            "split": {
                "rule": "heldout iff int(sha256(f'{seed}:{id}')[:8 bytes], big-endian) / 2**64 < heldout_fraction; "
                "within a split, documents are sorted by that value (then id)",
                "seed": cfg.seed,
                "heldout_fraction": cfg.heldout_fraction,
            },
            "dedup": {"rule": "exact text repeats dropped, smallest id kept", "dropped": n_duplicates},
            "counts": counts,
            "files": files,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        publish_dir(tmp, out)  # fsyncs, then renames
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


# ---------------------------------------------------------------- download and build


def fetch_packages(dest: Path) -> dict[str, dict]:
    """`apt-get download` the pinned packages into `dest`, check their sha256 and `dpkg -x` each into
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


def build_documents(wordnet_root: Path, fortunes_root: Path) -> list[dict]:
    """All documents from the two extracted packages."""
    return parse_wordnet(wordnet_root) + parse_fortunes(fortunes_root)


def prepare_corpus(out: Path, cfg: CorpusConfig) -> dict:
    """Download, parse, split and publish the corpus at `out`; return its manifest."""
    with tempfile.TemporaryDirectory(prefix="glp-corpus-") as tmp:
        pkgs = fetch_packages(Path(tmp))
        docs = build_documents(pkgs["wordnet-base"]["root"], pkgs["fortunes"]["root"])
        licenses = {f"{name}.copyright": p["root"] / f"usr/share/doc/{name}/copyright" for name, p in pkgs.items()}
        packages = {name: {k: v for k, v in p.items() if k != "root"} for name, p in pkgs.items()}
        packages["fortunes"]["excluded_files"] = list(FORTUNES_EXCLUDED)
        return write_corpus(docs, out, cfg, packages=packages, licenses=licenses)


# ---------------------------------------------------------------- reading


def _missing_hint(path: Path) -> str:
    return f"fetch it with `dvc pull` (or build it with `dvc repro corpus` / `python -m glp.corpus --out {path}`)"


def iter_documents(path: Path, split: Split) -> Iterator[dict]:
    """Stream the documents of one split in file order (constant memory); same checks as `load_documents`."""
    path = Path(path)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: choose one of {SPLITS}")
    if not path.is_dir():
        raise CorpusError(f"corpus folder {path} does not exist: {_missing_hint(path)}")
    file = path / f"{split}.jsonl"
    if not file.is_file():
        raise CorpusError(f"corpus file {file} is missing: {_missing_hint(path)}")
    n = 0
    with file.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                doc = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{file}:{lineno}: malformed JSON ({e.msg}); rebuild the corpus: {_missing_hint(path)}") from None
            if not isinstance(doc, dict) or not isinstance(doc.get("text"), str) or not doc["text"].strip():
                raise CorpusError(f"{file}:{lineno}: record has no non-empty \"text\"; rebuild the corpus: {_missing_hint(path)}")
            n += 1
            yield doc
    if not n:
        raise CorpusError(f"corpus file {file} is empty: {_missing_hint(path)}")


def load_documents(path: Path, split: Split) -> list[dict]:
    """The documents of one split, in file order; each has at least `id`, `text` and `source`."""
    return list(iter_documents(path, split))


def corpus_hash(path: Path) -> str:
    """Content hash of a prepared corpus (sha256 over its manifest's file hashes), for provenance."""
    manifest_path = Path(path) / MANIFEST
    if not manifest_path.is_file():
        raise CorpusError(f"{manifest_path} is missing: {_missing_hint(Path(path))}")
    files = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
    blob = json.dumps(files, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def main(argv: list[str] | None = None) -> None:
    from glp.config import load_settings

    cfg = load_settings().corpus
    parser = argparse.ArgumentParser(prog="python -m glp.corpus", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=cfg.path, help=f"output folder (default {cfg.path})")
    parser.add_argument("--seed", type=int, default=cfg.seed, help="seed of the train/held-out split (DVC param)")
    parser.add_argument("--heldout-fraction", type=float, default=cfg.heldout_fraction,
                        help="share of documents held out (DVC param)")
    args = parser.parse_args(argv)
    cfg = cfg.model_copy(update={"seed": args.seed, "heldout_fraction": args.heldout_fraction})
    manifest = prepare_corpus(args.out, type(cfg).model_validate(cfg.model_dump()))
    for split, c in manifest["counts"].items():
        print(f"{split}: {c['docs']} docs, {c['chars']} chars  {c['by_source']}")
    print(f"corpus {corpus_hash(args.out)} written to {args.out}")


if __name__ == "__main__":
    main()
