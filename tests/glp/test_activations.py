"""Tokenizing a document for extraction: `[BOS] + ids[:max_seq_len - 1]`, in memory bounded by max_seq_len."""

import pytest

from glp.data.activations import tokenize_doc
from glp.data.lm import SourceLM
from glp.data.source_lm import train_tokenizer

WORDS = ("the cat sat on the mat while a dog ran in the park; lorem ipsum dolor sit amet, 1,234 things! "
         "naïve café résumé — über straße\n")


@pytest.fixture(scope="module")
def lm() -> SourceLM:
    tok = train_tokenizer([WORDS * 3, "short text", "    spaced     out    ", "=" * 40 + " rule"], 400, 64)
    return SourceLM(None, tok, "tiny-bpe", None)


class _Seen:
    """The real tokenizer, recording the length of each text it is given."""

    def __init__(self, tok):
        self.tok, self.lengths = tok, []

    def __call__(self, text, **kw):
        self.lengths.append(len(text))
        return self.tok(text, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def _whole(lm: SourceLM, text: str, max_seq_len: int) -> list[int]:
    return [lm.bos_id, *lm.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"][: max_seq_len - 1]]


@pytest.mark.parametrize("max_seq_len", [8, 64, 128])
def test_tokenizing_a_prefix_gives_the_ids_of_the_whole_document(lm, max_seq_len):
    texts = [WORDS[:n] for n in (0, 1, 5, 50)] + [WORDS * k for k in (1, 10, 60)] + [
        " " * 5000 + WORDS * 20,  # a long run of spaces: many characters per token
        "=" * 20_000 + " end",  # one long "word" with no whitespace to cut at
        "x" * 9000,  # no whitespace at all
        "\n\n".join(WORDS * 3 for _ in range(40)),
    ]
    for text in texts:
        assert tokenize_doc(lm, text, max_seq_len) == _whole(lm, text, max_seq_len), text[:40]


def test_a_20_mb_line_is_never_handed_whole_to_the_tokenizer(lm):
    """The tokenizer took 3.5 GB for a 20 MB line; now it sees a prefix of about 16 characters per kept token."""
    seen = SourceLM(None, _Seen(lm.tokenizer), "tiny-bpe", None)
    line = (WORDS.replace("\n", " ") * 200_000)[:20_000_000]
    ids = tokenize_doc(seen, line, 128)
    assert ids == _whole(lm, line[:100_000], 128) and len(ids) == 128
    assert seen.tokenizer.lengths and max(seen.tokenizer.lengths) <= 16 * 127 + 64
