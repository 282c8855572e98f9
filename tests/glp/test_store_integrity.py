"""Silent corruption of an activation store is detected: bit flips, truncations and swapped chunk files (≥ 50
injected into real Zarr stores on disk), each named by array, chunk and rows; nothing is trained on them."""

import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks.store_integrity import flip_silently, inject
from glp.data.loader import iter_shuffled_batches
from glp.data.store import PROVENANCE, ActivationStore, StoreCorrupt, StoreWriter, chunk_checksum

CHUNK = 32


def _store(path: Path, n: int = 320, d: int = 8) -> Path:
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(n, d)).astype(np.float32)
    w = StoreWriter(path, d, CHUNK, {"model": "m"})
    for i in range(0, n, 40):
        k = min(40, n - i)
        w.append(rows[i : i + k], np.arange(i, i + k), np.arange(i + 1, i + k + 1, dtype=np.int32),  # no two chunks alike: every swap changes values
                 rng.integers(0, 300, k).astype(np.int32))
        w.commit(i + k)
    return w.close()


def _decoded(store: Path) -> dict[str, np.ndarray]:
    s = ActivationStore(store, verify=False)
    return {name: s.group[name][:] for name in ("acts", *PROVENANCE)}


def test_a_published_store_records_one_checksum_per_chunk_and_verifies_clean(tmp_path):
    store = ActivationStore(_store(tmp_path / "a.zarr"))
    sums = store.attrs["checksums"]
    assert sums["algorithm"] == "crc32" and sums["chunk_rows"] == CHUNK
    assert {k: len(v) for k, v in sums["arrays"].items()} == dict.fromkeys(("acts", *PROVENANCE), 10)
    assert sums["arrays"]["acts"][3] == chunk_checksum(store.acts[96:128])
    assert store.chunk_path("acts", 3) == store.path / "acts" / "c" / "3" / "0"
    assert store.chunk_path("doc_id", 3) == store.path / "doc_id" / "c" / "3"
    assert store.verify() == []
    np.testing.assert_array_equal(store.rows(50, 170), store.acts[50:170])


@pytest.mark.parametrize("kind", ["bitflip", "truncate", "swap"])
def test_injected_corruptions_are_detected_and_named(tmp_path, kind):
    """20 injections per kind (60 in all) over every array; each one that changes a decoded value is caught, and
    the problem names the array and the chunk. A flip in bytes the codec ignores changes nothing and is counted."""
    clean = _store(tmp_path / "clean.zarr")
    truth = _decoded(clean)
    rng = np.random.default_rng({"bitflip": 1, "truncate": 2, "swap": 3}[kind])
    detected = harmless = 0
    for trial in range(20):
        name = ("acts", *PROVENANCE)[trial % 4]
        i = int(rng.integers(0, 10))
        bad = tmp_path / f"{kind}{trial}.zarr"
        shutil.copytree(clean, bad)
        inject(kind, bad, name, i, rng)
        problems = ActivationStore(bad).verify()
        if problems:
            detected += 1
            assert any(p["array"] == name and p["chunk"] == i for p in problems), problems
            assert all(str(bad) in p["problem"] and "re-materialize `activations`" in p["problem"] for p in problems)
        else:  # undetected: only acceptable if every decoded value is intact
            after = _decoded(bad)
            assert all(np.array_equal(after[k], truth[k]) for k in truth), f"{kind} {name}[{i}] went unnoticed"
            harmless += 1
        shutil.rmtree(bad)
    assert detected + harmless == 20 and detected >= (15 if kind == "bitflip" else 20)


def test_the_training_loader_stops_on_a_corrupt_chunk_naming_it(tmp_path):
    path = _store(tmp_path / "a.zarr")
    flip_silently(path, 4)  # still decodes, to other values: the silent case the checksum is for
    with pytest.raises(StoreCorrupt, match=r"acts chunk 4 \(rows 128\.\.159\) does not match its recorded checksum"):
        for _ in iter_shuffled_batches(ActivationStore(path), 16, seed=0):
            pass
    with pytest.raises(StoreCorrupt, match="chunk 4"):
        ActivationStore(path).rows(100, 140)


def test_an_undecodable_chunk_names_the_place_instead_of_the_codec_error(tmp_path):
    path = _store(tmp_path / "a.zarr")
    ActivationStore(path).chunk_path("doc_id", 2).write_bytes(b"\x00garbage")
    with pytest.raises(StoreCorrupt, match=r"doc_id chunk 2 \(rows 64\.\.95\) cannot be decoded .* re-materialize"):
        ActivationStore(path).provenance("doc_id")


def test_a_store_without_checksums_is_flagged_not_trusted(tmp_path):
    import zarr

    path = _store(tmp_path / "a.zarr")
    group = zarr.open_group(path, mode="r+")
    del group.attrs["checksums"]
    store = ActivationStore(path)
    assert not store.verify_reads and store.chunk(0).shape == (CHUNK, 8)  # readable, but
    assert "no checksums recorded" in store.verify()[0]["problem"]


def test_unreadable_metadata_is_named(tmp_path):
    path = _store(tmp_path / "a.zarr")
    (path / "zarr.json").write_text("{ not json")
    with pytest.raises(StoreCorrupt, match="cannot be opened .* re-materialize `activations`"):
        ActivationStore(path)
