import numpy as np
import pytest

from glp.config import StoreConfig
from glp.data.activations import extract_activations
from glp.data.loader import iter_shuffled_batches, n_batches
from glp.data.store import ActivationStore, StoreError, StoreWriter
from tests.conftest import TEXTS


def _write(path, rows, chunk_rows=16, docs_per_commit=10):
    w = StoreWriter(path, rows.shape[1], chunk_rows, {"model": "m"})
    for i in range(0, len(rows), docs_per_commit):
        part = rows[i : i + docs_per_commit]
        ids = np.arange(i, i + len(part))
        w.append(part, ids, np.ones(len(part), np.int32), np.zeros(len(part), np.int32))
        w.commit(i + len(part))
    return w.close()


def test_store_round_trips_rows_and_provenance(tmp_path):
    rows = np.random.default_rng(0).normal(size=(100, 8)).astype(np.float32)
    store = ActivationStore(_write(tmp_path / "a.zarr", rows))
    np.testing.assert_array_equal(store.acts[:], rows)
    np.testing.assert_array_equal(store.provenance("doc_id"), np.arange(100))
    assert store.attrs["complete"] and store.attrs["n_rows"] == 100 and store.n_chunks == 7
    assert not (tmp_path / "a.zarr.partial").exists()


def test_nan_rows_are_rejected_with_a_clear_message(tmp_path):
    w = StoreWriter(tmp_path / "a.zarr", 4, 16, {})
    bad = np.ones((3, 4), np.float32)
    bad[1, 2] = np.nan
    with pytest.raises(StoreError, match="NaN/Inf"):
        w.append(bad, np.zeros(3, np.int64), np.zeros(3, np.int32), np.zeros(3, np.int32))


def test_a_crashed_writer_never_replaces_the_published_store(tmp_path):
    rows = np.ones((40, 4), np.float32)
    path = _write(tmp_path / "a.zarr", rows)
    w = StoreWriter(path, 4, 16, {"model": "other"})
    w.append(np.zeros((20, 4), np.float32), np.zeros(20, np.int64), np.zeros(20, np.int32), np.zeros(20, np.int32))
    del w  # the process "dies" before close()
    np.testing.assert_array_equal(ActivationStore(path).acts[:], rows)


def test_incomplete_or_missing_store_errors_name_the_fix(tmp_path):
    with pytest.raises(StoreError, match="materialize the `activations` asset"):
        ActivationStore(tmp_path / "nope.zarr")


def test_shuffled_batches_cover_every_row_once_and_resume_exactly(tmp_path):
    rows = np.arange(203 * 2, dtype=np.float32).reshape(203, 2)
    store = ActivationStore(_write(tmp_path / "a.zarr", rows, chunk_rows=16))
    batches = list(iter_shuffled_batches(store, 10, seed=3, epoch=0, group_chunks=3))
    assert len(batches) == n_batches(203, 10) == 20
    seen = np.concatenate(batches)[:, 0]
    assert len(np.unique(seen)) == 200 and not np.array_equal(seen, np.sort(seen))
    resumed = list(iter_shuffled_batches(store, 10, seed=3, epoch=0, start_batch=7, group_chunks=3))
    for a, b in zip(batches[7:], resumed, strict=True):
        np.testing.assert_array_equal(a, b)
    other_epoch = np.concatenate(list(iter_shuffled_batches(store, 10, seed=3, epoch=1, group_chunks=3)))
    assert not np.array_equal(other_epoch, np.concatenate(batches))


def test_extraction_excludes_bos_and_padding_and_matches_the_model(tiny_lm, tmp_path):
    import torch

    cfg = StoreConfig(chunk_rows=64, batch_size=4, max_seq_len=64)  # long enough: no truncation
    texts = TEXTS[:12]
    res = extract_activations(tiny_lm, 1, texts, tmp_path / "s.zarr", cfg, None, {"model": "tiny"})
    store = ActivationStore(res.path)
    pos, doc, tok = (store.provenance(k) for k in ("position", "doc_id", "token_id"))
    assert (pos > 0).all()  # BOS (position 0) never stored
    n_tokens = sum(len(tiny_lm.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    assert store.n_rows == res.n_rows == n_tokens  # one row per real token, no padding
    # rows of doc 5 equal an unpadded forward of that doc alone
    ids = [tiny_lm.bos_id, *tiny_lm.tokenizer(texts[5], add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        ref = tiny_lm.model(torch.tensor([ids]), output_hidden_states=True).hidden_states[2][0, 1:]
    sel = doc == 5
    order = np.argsort(pos[sel])
    np.testing.assert_allclose(store.acts[:][sel][order], ref.numpy(), atol=1e-5)
    np.testing.assert_array_equal(tok[sel][order], ids[1:])


def test_extraction_respects_the_token_cap_at_a_document_boundary(tiny_lm, tmp_path):
    cfg = StoreConfig(chunk_rows=64, batch_size=4, max_seq_len=32)
    res = extract_activations(tiny_lm, 0, TEXTS, tmp_path / "s.zarr", cfg, 50, {})
    assert 50 <= res.n_rows < 50 + 32


def test_resumed_extraction_equals_an_uninterrupted_one(tiny_lm, tmp_path):
    from glp.data.store import StoreWriter as W

    cfg = StoreConfig(chunk_rows=64, batch_size=4, max_seq_len=32)
    full = ActivationStore(extract_activations(tiny_lm, 1, TEXTS, tmp_path / "full.zarr", cfg, None, {}, window_docs=8).path)
    # simulate a run killed after two committed windows plus some uncommitted rows
    out = tmp_path / "res.zarr"
    commits = []
    orig = W.commit

    def dying_commit(self, n_docs):
        orig(self, n_docs)
        commits.append(n_docs)
        if len(commits) == 2:
            self.append(np.zeros((5, self.d_model), np.float32), np.zeros(5, np.int64), np.zeros(5, np.int32), np.zeros(5, np.int32))
            self._write_buffer()
            raise KeyboardInterrupt

    W.commit = dying_commit
    try:
        with pytest.raises(KeyboardInterrupt):
            extract_activations(tiny_lm, 1, TEXTS, out, cfg, None, {}, window_docs=8)
    finally:
        W.commit = orig
    assert (tmp_path / "res.zarr.partial").exists() and not out.exists()
    resumed = ActivationStore(extract_activations(tiny_lm, 1, TEXTS, out, cfg, None, {}, window_docs=8).path)
    np.testing.assert_array_equal(resumed.acts[:], full.acts[:])
    np.testing.assert_array_equal(resumed.provenance("doc_id"), full.provenance("doc_id"))


def test_wrong_layer_fails_before_any_work(tiny_lm, tmp_path):
    from glp.data.lm import SourceModelError

    with pytest.raises(SourceModelError, match="choose 0..2"):
        extract_activations(tiny_lm, 9, TEXTS, tmp_path / "s.zarr", StoreConfig(), None, {})
    assert not list(tmp_path.iterdir())


def test_extraction_streams_documents_from_a_generator(tiny_lm, tmp_path):
    cfg = StoreConfig(chunk_rows=64, batch_size=4, max_seq_len=32)
    from_list = ActivationStore(extract_activations(tiny_lm, 1, TEXTS, tmp_path / "a.zarr", cfg, None, {}, window_docs=8).path)
    pulled = []

    def stream():
        for t in TEXTS:
            pulled.append(t)
            yield t

    from_gen = ActivationStore(extract_activations(tiny_lm, 1, stream(), tmp_path / "b.zarr", cfg, None, {}, window_docs=8).path)
    np.testing.assert_array_equal(from_gen.acts[:], from_list.acts[:])
    assert len(pulled) == len(TEXTS)
    # with a cap, the stream is read only as far as needed
    pulled.clear()
    extract_activations(tiny_lm, 1, stream(), tmp_path / "c.zarr", cfg, 50, {}, window_docs=8)
    assert len(pulled) < len(TEXTS)


@pytest.mark.parametrize("row_dtype", ["float32", "bfloat16"])
def test_device_resident_batches_are_the_loaders_batches_in_the_same_order(tmp_path, row_dtype):
    import torch

    from glp.data.loader import ResidentRows, epoch_row_order

    rows = np.random.default_rng(1).standard_normal((203, 6), dtype=np.float32)  # 12 full chunks and a ragged one
    if row_dtype == "bfloat16":
        rows = (rows.view(np.uint32) & 0xFFFF0000).view(np.float32)  # exactly representable in bf16
        w = StoreWriter(tmp_path / "a.zarr", 6, 16, {"model": "m"}, row_dtype="bfloat16", codec="raw")
        w.append((rows.view(np.uint32) >> 16).astype(np.uint16), np.arange(203), np.ones(203, np.int32),
                 np.zeros(203, np.int32))
        w.commit(203)
        store = ActivationStore(w.close())
    else:
        store = ActivationStore(_write(tmp_path / "a.zarr", rows, chunk_rows=16))
    resident = ResidentRows(store, "cpu")
    assert resident.rows.dtype == (torch.bfloat16 if row_dtype == "bfloat16" else torch.float32)
    for seed, epoch, start in [(3, 0, 0), (3, 1, 0), (5, 2, 7)]:
        loader = list(iter_shuffled_batches(store, 10, seed, epoch, start_batch=start, group_chunks=3))
        on_device = list(resident.batches(10, seed, epoch, start_batch=start, group_chunks=3))
        assert len(loader) == len(on_device) == n_batches(203, 10) - start
        for a, b in zip(loader, on_device, strict=True):
            np.testing.assert_array_equal(a, b.numpy())
        order = epoch_row_order(store, seed, epoch, group_chunks=3)
        np.testing.assert_array_equal(np.concatenate(loader), rows[order[start * 10 : n_batches(203, 10) * 10]])


def test_checksums_taken_while_writing_equal_a_full_read_back(tmp_path):
    from glp.data.store import _chunk_checksums

    rows = np.random.default_rng(2).standard_normal((1000, 4), dtype=np.float32)
    w = StoreWriter(tmp_path / "a.zarr", 4, 16, {"model": "m"})
    for i in range(0, 1000, 37):  # appends and commits that cut chunks anywhere
        w.append(rows[i : i + 37], np.arange(i, min(i + 37, 1000)), np.ones(len(rows[i : i + 37]), np.int32),
                 np.zeros(len(rows[i : i + 37]), np.int32))
        if i % 111 == 0:
            w.commit(i)
    w.commit(1000)
    assert sum(len(v) for v in w._sums.values()) > 0  # most chunks were summed as written
    store = ActivationStore(w.close())
    assert store.attrs["checksums"] == _chunk_checksums(store.group, 16)
    assert store.verify() == []
