import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from glp.ci import auc_ci
from glp.uses.judges import continuation_nll, continuation_nll_sets, distinct_n, fit_sentiment_judge, judge_training_data, vader_compound
from glp.uses.generate import encode, generate
from tests.glp_dagster.conftest import write_tiny_labelled


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return write_tiny_labelled(tmp_path_factory.mktemp("labelled"), n=120)


def test_judge_data_is_amazon_and_tweets_without_weak_neutral_or_duplicate_rows(labelled):
    texts, y, src = judge_training_data(labelled)
    amazon = [json.loads(line) for line in open(labelled / "amazon_reviews.jsonl")]
    tweets = [json.loads(line) for line in open(labelled / "tweets.jsonl")]
    strong = [r for r in amazon if abs(r["rating"]) > 0.5]
    polar = [r for r in tweets if r["label"] != "neutral"]
    assert len(texts) == len(set(texts)) <= len(strong) + len(polar) and (src == 0).sum() <= len(strong)
    by_text = {r["text"]: int(r["rating"] > 0) for r in strong}
    by_text |= {r["text"]: int(r["label"] == "positive") for r in polar}
    assert all(by_text[t] == label for t, label in zip(texts, y))


def test_judge_never_reads_the_movie_snippets(labelled, tmp_path):
    only = tmp_path / "no_movies"
    only.mkdir()
    for name in ("amazon_reviews.jsonl", "tweets.jsonl"):
        (only / name).write_text((labelled / name).read_text())
    a, b = fit_sentiment_judge(only, seed=3, n_boot=50), fit_sentiment_judge(labelled, seed=3, n_boot=50)
    a.report.pop("seconds"), b.report.pop("seconds")
    assert a.report == b.report


def test_judge_learns_sentiment_and_reports_heldout_accuracy_with_cis(labelled):
    judge = fit_sentiment_judge(labelled, seed=0, n_boot=100)
    rep = judge.report
    assert rep["accuracy"] > 0.9 and rep["auc"] > 0.9 and rep["n_test"] > 10
    assert rep["accuracy_ci"][0] <= rep["accuracy"] <= rep["accuracy_ci"][1]
    assert rep["auc_ci"][0] <= rep["auc"] <= rep["auc_ci"][1] and set(rep["by_source"]) == {"amazon_reviews", "tweets"}
    pos, neg = judge.p_positive(["The music was wonderful and lovely", "The plot was awful and boring"])
    assert 0 <= neg < 0.5 < pos <= 1
    again = fit_sentiment_judge(labelled, seed=0, n_boot=100)  # seeded: same split, same model
    assert again.report["accuracy"] == rep["accuracy"] and np.array_equal(
        again.p_positive(["a good day", "a sad end"]), judge.p_positive(["a good day", "a sad end"]))


def test_missing_labelled_data_says_how_to_build_it(tmp_path):
    from glp.data.corpus import CorpusError

    with pytest.raises(CorpusError, match="dvc repro labelled"):
        fit_sentiment_judge(tmp_path)


def test_auc_ci_brackets_the_auc():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 100)
    s = y + rng.normal(0, 1, 200)
    lo, hi = auc_ci(y, s, 300, 0)
    assert 0.6 < lo < 0.76 < hi < 0.9  # true AUC of N(1,1) vs N(0,1): Phi(1/sqrt 2) = 0.76


def test_vader_second_opinion_and_distinct_n():
    pos, neg, neutral = vader_compound(["What a wonderful, happy, lovely day!", "This is terrible, awful and sad.",
                                        "The table has four legs."])
    assert pos > 0.5 and neg < -0.5 and neutral == 0.0
    assert distinct_n([1, 2, 3, 4]) == 1.0 and distinct_n([7, 7, 7, 7, 7]) == 0.25 and distinct_n([7, 7, 7], 1) == 1 / 3


def reference_nll(lm, prompt, cont):
    """Unbatched, uncached: one full forward of prompt + continuation."""
    ids = torch.tensor([prompt + cont])
    with torch.inference_mode():
        logits = lm.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
    return float(F.cross_entropy(logits.float(), ids[0, len(prompt) :]))


def test_cached_batched_nll_equals_one_full_forward_per_example(tiny_lm):
    prompts = [encode(tiny_lm, t) for t in ["The cat sat", "A happy child plays in the", "Rain"]]
    conts = [[5, 9, 200], [17, 3, 44, 8, 2], [61]]  # ragged: right-padded inside
    got = continuation_nll(tiny_lm, prompts, conts, batch_size=2)
    want = [reference_nll(tiny_lm, p, c) for p, c in zip(prompts, conts)]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_nll_sets_share_one_prefill_and_equal_separate_calls(tiny_lm):
    prompts = [encode(tiny_lm, t) for t in ["The cat sat", "A happy child plays in the", "Rain"]]
    own = generate(tiny_lm, prompts, 6, "greedy")
    other = [[5, 9, 200, 17, 3, 44]] * 3
    sets = continuation_nll_sets(tiny_lm, prompts, [own, other, own])
    np.testing.assert_allclose(sets[0], continuation_nll(tiny_lm, prompts, own), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sets[2], sets[0], rtol=1e-5, atol=1e-5)  # the cache was rewound between sets
    assert sets[0].shape == (3,) and (sets[0] < sets[1]).all()  # the model prefers its own greedy continuation


def test_nll_refuses_a_prompt_with_only_bos(tiny_lm):
    with pytest.raises(ValueError, match="after BOS"):
        continuation_nll(tiny_lm, [[tiny_lm.bos_id]], [[5, 6]])
