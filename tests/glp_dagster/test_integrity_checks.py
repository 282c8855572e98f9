"""The blocking integrity checks, on a real materialized chain: a flipped bit that still decodes fails
`activations_checksums` naming the chunk; a one-dimension std blow-up fails `norm_stats_no_outlier_dims` while the
great-expectations suite stays green; a clean chain passes both."""

from __future__ import annotations

from benchmarks.store_integrity import flip_silently
from glp.data.stats import NormStats
from tests.glp_dagster.test_checks_never_error import chain, materialized, run_checks_only  # noqa: F401 (fixtures)


def _evaluations(res) -> dict:
    return {e.asset_check_key.name: e for e in res.get_asset_check_evaluations()}


def test_a_clean_chain_passes_the_integrity_checks(chain):  # noqa: F811
    s, _ = chain
    ev = _evaluations(run_checks_only(s, "activations", "norm_stats"))
    assert ev["activations_checksums"].passed and ev["norm_stats_no_outlier_dims"].passed


def test_a_silent_bit_flip_fails_the_checksum_check_naming_the_chunk(chain):  # noqa: F811
    s, paths = chain
    flip_silently(paths.store("train"), 1)
    ev = _evaluations(run_checks_only(s, "activations"))["activations_checksums"]
    assert not ev.passed
    meta = {k: v.value for k, v in ev.metadata.items()}
    assert meta["problems_train"] >= 1 and meta["problems_heldout"] == 0
    first = meta["first_problems"][0]
    assert first["split"] == "train" and first["array"] == "acts" and first["chunk"] == 1
    assert "does not match its recorded checksum" in first["problem"]


def test_one_dimension_blown_up_fails_the_outlier_check_but_not_the_suite(chain):  # noqa: F811
    s, paths = chain
    stats = NormStats.load(paths.norm_stats)
    var = stats.var.copy()
    var[3] *= 250_000.0  # std x500: what one corrupted value did in the issue
    NormStats(stats.n, stats.mean, var, stats.cov_normalized).save(paths.norm_stats)  # a consistent, checksummed file
    ev = _evaluations(run_checks_only(s, "norm_stats"))
    assert ev["norm_stats_expectations"].passed  # finite, std > 0, row count: all still true
    out = ev["norm_stats_no_outlier_dims"]
    assert not out.passed and out.metadata["outlier_dims"].value == 1
    assert out.metadata["worst"].value[0]["dim"] == 3 and "dimension 3" in out.description
