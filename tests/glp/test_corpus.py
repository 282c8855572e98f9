"""The corpus: parsers on real-format snippets, the seeded split, atomic deterministic writes, reader errors."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from glp.config import CorpusConfig
from glp.corpus import (
    CorpusError,
    corpus_hash,
    load_documents,
    parse_fortune_file,
    parse_fortunes,
    parse_lexnames,
    parse_wordnet,
    parse_wordnet_data,
    prepare_corpus,
    split_of,
    split_value,
    write_corpus,
)

# Verbatim lines from WordNet 3.0 (wordnet-base 1:3.0-37): a licence header line, then synsets.
WORDNET_NOUN = """\
  1 This software and database is being provided to you, the LICENSEE, by  
00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04431553 n 0000 | that which is perceived or known or inferred to have its own distinct existence (living or nonliving)  
00002137 03 n 02 abstraction 0 abstract_entity 0 010 @ 00001740 n 0000 + 00695226 v 0101 ~ 00023280 n 0000 ~ 00024444 n 0000 ~ 00031921 n 0000 ~ 00033615 n 0000 ~ 05854150 n 0000 ~ 06160564 n 0000 ~ 13809207 n 0000 ~ 14546297 n 0000 | a general concept formed by extracting common features from specific examples  
"""
WORDNET_VERB = """\
00001740 29 v 04 breathe 0 take_a_breath 0 respire 0 suspire 3 021 * 00005041 v 0000 * 00004227 v 0000 + 03110323 a 0301 + 00831191 n 0303 + 04080833 n 0301 + 04250850 n 0105 + 00831191 n 0101 ^ 00004227 v 0103 ^ 00005041 v 0103 $ 00002325 v 0000 $ 00002573 v 0000 ~ 00002573 v 0000 ~ 00002724 v 0000 ~ 00002942 v 0000 ~ 00003826 v 0000 ~ 00004032 v 0000 ~ 00004227 v 0000 ~ 00005041 v 0000 ~ 00006697 v 0000 ~ 00007328 v 0000 ~ 00017031 v 0000 02 + 02 00 + 08 00 | draw air into, and expel out of, the lungs; "I can breathe better when the air is clean"; "The patient is respiring"  
"""
WORDNET_ADJ = """\
00001740 00 a 01 able 0 005 = 05200169 n 0000 = 05616246 n 0000 + 05616246 n 0101 + 05200169 n 0101 ! 00002098 a 0101 | (usually followed by `to') having the necessary means or skill or know-how or authority to do something; "able to swim"; "she was able to program her computer"; "we were at last able to buy a car"; "able to get a grant for the project"  
01810946 00 s 02 beautiful(a) 0 lovely(a) 0 001 & 00217728 a 0000 | (of persons) pleasing to look at  
"""
WORDNET_ADV = """\
00001740 02 r 01 a_cappella 0 001 \\ 02716523 a 0101 | without musical accompaniment; "they performed a cappella"  
"""
# The lexnames(5WN) man page table, as shipped in the package (rows: number TAB name TAB description).
LEXNAMES_MAN = """\
.SS Lexicographer Files
.TS
00	adj.all	all adjective clusters
02	adv.all	all adverbs
03	noun.Tops	unique beginner for nouns
18	noun.person  	nouns denoting people
29	verb.body	verbs of grooming, dressing and bodily care
.TE
"""
FORTUNES = """\
A day for firm decisions!!!!!  Or is it?
%
A few hours grace before the madness begins again.
%
%
"The trouble with doing something right the first time is that nobody
appreciates how difficult it was."
		-- Walt West
"""


def _wordnet_root(tmp_path: Path) -> Path:
    root = tmp_path / "wordnet-base"
    data = root / "usr/share/wordnet"
    data.mkdir(parents=True)
    for pos, text in {"noun": WORDNET_NOUN, "verb": WORDNET_VERB, "adj": WORDNET_ADJ, "adv": WORDNET_ADV}.items():
        (data / f"data.{pos}").write_text(text)
    man = root / "usr/share/man/man5"
    man.mkdir(parents=True)
    (man / "lexnames.5WN.gz").write_bytes(gzip.compress(LEXNAMES_MAN.encode()))
    return root


def _fortunes_root(tmp_path: Path) -> Path:
    root = tmp_path / "fortunes"
    folder = root / "usr/share/games/fortunes"
    folder.mkdir(parents=True)
    (folder / "wisdom").write_text(FORTUNES)
    (folder / "wisdom.dat").write_bytes(b"\x00\x00\x00\x02binary index")
    (folder / "wisdom.u8").symlink_to("wisdom")
    (folder / "ascii-art").write_text("  /\\_/\\\n ( o.o )\n%\n")
    return root


def _docs(n: int = 200) -> list[dict]:
    return [{"id": f"doc-{i:04d}", "text": f"document number {i} says hello", "source": "test"} for i in range(n)]


def test_lexnames_are_read_from_the_man_page_table(tmp_path):
    path = tmp_path / "lexnames.5WN.gz"
    path.write_bytes(gzip.compress(LEXNAMES_MAN.encode()))
    assert parse_lexnames(path) == {0: "adj.all", 2: "adv.all", 3: "noun.Tops", 18: "noun.person", 29: "verb.body"}


def test_wordnet_synsets_become_documents_with_pos_and_lexname(tmp_path):
    docs = {d["id"]: d for d in parse_wordnet(_wordnet_root(tmp_path))}
    assert sorted(docs) == ["wn-a-00001740", "wn-a-01810946", "wn-n-00001740", "wn-n-00002137", "wn-r-00001740", "wn-v-00001740"]
    entity = docs["wn-n-00001740"]
    assert entity["text"] == (
        "entity (noun): that which is perceived or known or inferred to have its own distinct existence "
        "(living or nonliving)"
    )
    assert (entity["source"], entity["pos"], entity["lexname"]) == ("wordnet", "noun", "noun.Tops")
    assert docs["wn-n-00002137"]["text"].startswith("abstraction, abstract entity (noun): a general concept")
    breathe = docs["wn-v-00001740"]
    assert breathe["lemmas"] == ["breathe", "take a breath", "respire", "suspire"]
    assert breathe["lexname"] == "verb.body"
    assert breathe["text"].endswith('"I can breathe better when the air is clean"; "The patient is respiring"')
    lovely = docs["wn-a-01810946"]  # satellite adjective: the (a) syntactic markers are dropped
    assert lovely["text"] == "beautiful, lovely (adj): (of persons) pleasing to look at"
    assert (lovely["pos"], lovely["ss_type"]) == ("adj", "s")
    assert docs["wn-r-00001740"]["text"] == 'a cappella (adv): without musical accompaniment; "they performed a cappella"'


def test_a_malformed_wordnet_line_names_file_and_line(tmp_path):
    path = tmp_path / "data.noun"
    path.write_text(WORDNET_NOUN + "00009999 03 n zz entity 0 000 | broken\n")
    with pytest.raises(CorpusError, match=r"data\.noun:4: not a WordNet data line"):
        list(parse_wordnet_data(path, "noun", {3: "noun.Tops"}))


def test_fortunes_split_on_percent_lines_with_whitespace_normalized(tmp_path):
    path = tmp_path / "wisdom"
    path.write_text(FORTUNES)
    docs = list(parse_fortune_file(path))
    assert [d["id"] for d in docs] == ["fortune-wisdom-00000", "fortune-wisdom-00001", "fortune-wisdom-00002"]
    assert docs[0]["text"] == "A day for firm decisions!!!!! Or is it?"
    assert docs[2]["text"] == (
        '"The trouble with doing something right the first time is that nobody appreciates how difficult it '
        'was." -- Walt West'
    )
    assert {d["source"] for d in docs} == {"fortunes"} and {d["file"] for d in docs} == {"wisdom"}


def test_fortune_folder_skips_indexes_links_and_ascii_art(tmp_path):
    docs = parse_fortunes(_fortunes_root(tmp_path))
    assert {d["file"] for d in docs} == {"wisdom"} and len(docs) == 3


def test_split_is_a_seeded_hash_of_the_id():
    cfg = CorpusConfig(heldout_fraction=0.2, seed=3)
    ids = [f"doc-{i}" for i in range(5000)]
    splits = [split_of(i, cfg) for i in ids]
    assert splits == [split_of(i, cfg) for i in ids]
    assert 0.17 < splits.count("heldout") / len(ids) < 0.23
    other = [split_of(i, CorpusConfig(heldout_fraction=0.2, seed=4)) for i in ids]
    assert other != splits
    assert all(0.0 <= split_value(i, 3) < 1.0 for i in ids[:100])


def test_written_corpus_is_byte_deterministic_and_round_trips(tmp_path):
    cfg = CorpusConfig(heldout_fraction=0.1, seed=0)
    docs = _docs()
    manifest = write_corpus(docs, tmp_path / "a", cfg)
    write_corpus(list(reversed(docs)), tmp_path / "b", cfg)
    for name in ("train.jsonl", "heldout.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert corpus_hash(tmp_path / "a") == corpus_hash(tmp_path / "b")
    train, heldout = load_documents(tmp_path / "a", "train"), load_documents(tmp_path / "a", "heldout")
    assert sorted(d["id"] for d in train + heldout) == sorted(d["id"] for d in docs)
    assert all(split_of(d["id"], cfg) == "heldout" for d in heldout)
    assert manifest["counts"]["train"]["docs"] == len(train) and manifest["counts"]["heldout"]["docs"] == len(heldout)
    assert manifest["counts"]["train"]["by_source"]["test"]["chars"] == sum(len(d["text"]) for d in train)


def test_exact_duplicate_texts_are_kept_once(tmp_path):
    docs = _docs(50) + [{"id": "doc-zzzz", "text": "document number 7 says hello", "source": "test"}]
    manifest = write_corpus(docs, tmp_path / "c", CorpusConfig(heldout_fraction=0.2))
    ids = {d["id"] for s in ("train", "heldout") for d in load_documents(tmp_path / "c", s)}
    assert "doc-0007" in ids and "doc-zzzz" not in ids and manifest["dedup"]["dropped"] == 1


def test_rewriting_replaces_the_folder_atomically_and_leaves_no_temp(tmp_path):
    out = tmp_path / "corpus"
    write_corpus(_docs(), out, CorpusConfig(heldout_fraction=0.1))
    (out / "stale.txt").write_text("from an older version")
    old_hash = corpus_hash(out)
    write_corpus(_docs(300), out, CorpusConfig(heldout_fraction=0.1))
    assert not (out / "stale.txt").exists()
    assert corpus_hash(out) != old_hash
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_a_failed_write_keeps_the_old_corpus(tmp_path):
    out = tmp_path / "corpus"
    write_corpus(_docs(), out, CorpusConfig(heldout_fraction=0.1))
    before = corpus_hash(out)
    with pytest.raises(CorpusError, match="has no text"):
        write_corpus(_docs() + [{"id": "x", "text": "  ", "source": "test"}], out, CorpusConfig(heldout_fraction=0.1))
    assert corpus_hash(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]


def test_missing_folder_says_dvc_pull(tmp_path):
    with pytest.raises(CorpusError, match=r"does not exist: fetch it with `dvc pull`"):
        load_documents(tmp_path / "nowhere", "train")
    with pytest.raises(CorpusError, match="dvc pull"):
        corpus_hash(tmp_path / "nowhere")


def test_missing_or_empty_split_file_is_named(tmp_path):
    (tmp_path / "c").mkdir()
    with pytest.raises(CorpusError, match=r"heldout\.jsonl is missing"):
        load_documents(tmp_path / "c", "heldout")
    (tmp_path / "c" / "train.jsonl").write_text("")
    with pytest.raises(CorpusError, match=r"train\.jsonl is empty"):
        load_documents(tmp_path / "c", "train")


def test_malformed_json_line_is_named_with_its_line_number(tmp_path):
    (tmp_path / "c").mkdir()
    good = json.dumps({"id": "a", "text": "fine", "source": "t"})
    (tmp_path / "c" / "train.jsonl").write_text(f"{good}\n{good}\n{{not json\n")
    with pytest.raises(CorpusError, match=r"train\.jsonl:3: malformed JSON"):
        load_documents(tmp_path / "c", "train")


@pytest.mark.parametrize("record", [{"id": "a", "source": "t"}, {"id": "a", "text": "  ", "source": "t"}, ["text"]])
def test_record_without_text_is_named_with_its_line_number(tmp_path, record):
    (tmp_path / "c").mkdir()
    good = json.dumps({"id": "b", "text": "fine", "source": "t"})
    (tmp_path / "c" / "heldout.jsonl").write_text(f"{good}\n{json.dumps(record)}\n")
    with pytest.raises(CorpusError, match=r'heldout\.jsonl:2: record has no non-empty "text"'):
        load_documents(tmp_path / "c", "heldout")


def test_an_empty_split_is_refused(tmp_path):
    with pytest.raises(CorpusError, match="heldout split of 3 documents is empty"):
        write_corpus(_docs(3), tmp_path / "c", CorpusConfig(heldout_fraction=0.01))


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs Debian apt-get")
def test_the_real_corpus_is_built_from_the_pinned_debian_packages(tmp_path):
    manifest = prepare_corpus(tmp_path / "corpus", CorpusConfig())
    counts = manifest["counts"]
    assert counts["train"]["by_source"]["wordnet"]["docs"] > 100_000
    assert counts["train"]["by_source"]["fortunes"]["docs"] > 10_000
    assert counts["train"]["chars"] + counts["heldout"]["chars"] > 10_000_000
    assert set(manifest["files"]) == {
        "train.jsonl", "heldout.jsonl", "licenses/fortunes.copyright", "licenses/wordnet-base.copyright"
    }
    lexnames = {d.get("lexname") for d in load_documents(tmp_path / "corpus", "train")}
    assert len(lexnames - {None}) == 45  # every WordNet lexicographer file is represented
    again = prepare_corpus(tmp_path / "again", CorpusConfig())
    assert again == manifest
