"""Zarr v3 activation store: one row per token, row-chunked, compressed, with provenance arrays.

Layout of `<name>.zarr`:
    acts      (n, d)  float32   residual-stream rows, chunks of `chunk_rows` rows, Blosc lz4 + shuffle (codec
                                `blosc-lz4`) or raw bytes (codec `raw`); bfloat16 rows (row dtype `bfloat16`,
                                attrs["acts_dtype"]) are stored as their uint16 bit patterns (numpy has no bfloat16)
    doc_id    (n,)    int64     index of the document in its corpus split
    position  (n,)    int32     token position in the document (BOS = 0 is never stored)
    token_id  (n,)    int32     the token at that position
    attrs: model, layer, d_model, dtype, corpus_hash, split, n_rows, n_docs, complete, checksums, ...

Every chunk of every array has a CRC-32 of its decoded values in `attrs["checksums"]`, recorded when the store
is published: computed from the values of each chunk written whole (most of them, as they are written), the others
(a chunk finished across a commit or a resume, the last one) read back from the partial store just before the rename.
Reads through `ActivationStore.chunk` / `rows` verify them, so a flipped bit that still decodes, a truncated chunk
file or two swapped chunk files fail with the array, chunk index and row range named, instead of flowing silently into training;
`ActivationStore.verify()` checks a whole store without raising (the blocking asset check).

Writing goes to `<name>.zarr.partial` and is renamed into place only when complete, so a reader never sees
a half-written store and a good store is never replaced by a broken one. The partial store records how
many documents it holds after each flush; `StoreWriter(resume=True)` continues from there, and because
extraction is deterministic the resumed store equals an uninterrupted one.

A store may also live at an fsspec URL (`s3://bucket/prefix/train.zarr`, `gs://...`, `file:///...`,
`memory://...`; Zarr v3's FsspecStore). Object stores cannot rename a folder atomically (S3 "renames" copy every
object), so there the store is written in place and published by its completion marker: the group's `zarr.json`
carries `complete: false` from the first write and is rewritten with `complete: true` (and the checksums) as the
very last write, a single-object PUT, which S3 and GCS make atomic. Readers refuse a store without the marker, and
a partial one resumes in place. What changes: re-extracting a store of another version deletes the old one first
(a run that dies then leaves a resumable partial, never a half-written "complete" store, but not the old store).
"""

from __future__ import annotations

import shutil
import zlib
from collections.abc import Iterator
from os import PathLike
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np

from glp.artifacts import publish_dir
from glp.progress import StageClock, stage

if TYPE_CHECKING:
    from upath import UPath

PROVENANCE = {"doc_id": "int64", "position": "int32", "token_id": "int32"}


class StoreError(RuntimeError):
    """The activation store is missing, incomplete or inconsistent."""


class StoreCorrupt(StoreError):
    """A stored chunk does not decode, or decodes to values whose checksum differs from the recorded one."""


CHECKSUM_ALGORITHM = "crc32"

Location = Union[Path, "UPath"]
"""Where a store lives: a local folder (Path) or an fsspec URL (UPath, universal_pathlib: the same path API)."""


def is_url(location: str | PathLike[str]) -> bool:
    """An fsspec URL (`protocol://...`), not a local path (pathlib collapses `//`, so a Path never matches)."""
    return "://" in str(location)


def _storage_options(url: str) -> dict[str, Any]:
    # local files through fsspec: create parent folders as object stores do implicitly
    return {"auto_mkdir": True} if url.startswith(("file://", "local://")) else {}


def as_location(location: str | PathLike[str]) -> Location:
    """A local path as a Path, an fsspec URL as a UPath (raises StoreError when its filesystem is not installed)."""
    if not is_url(location):
        return Path(location)
    from upath import UPath

    url = str(location)
    try:
        loc = UPath(url, **_storage_options(url))
        loc.fs  # noqa: B018 (instantiates the filesystem: a missing backend fails here, not mid-extraction)
    except (ImportError, ValueError) as e:
        protocol = url.split("://", 1)[0]
        raise StoreError(f"cannot open store location {url} ({type(e).__name__}: {e}): install the fsspec backend "
                         f"for {protocol}:// (s3fs for s3://, gcsfs for gs://) in the same environment") from e
    return loc


def _open_group(location: Location, mode: str, **kwargs: Any) -> Any:
    import zarr

    if is_url(location):
        url = str(location)
        return zarr.open_group(url, mode=mode, storage_options=_storage_options(url) or None, **kwargs)
    return zarr.open_group(location, mode=mode, **kwargs)


def remove_store(location: Location) -> None:
    """Delete a store (a local folder or an fsspec URL), if there is one."""
    if not location.exists():
        return
    if is_url(location):
        location.fs.rm(location.path, recursive=True)
    else:
        shutil.rmtree(location)


def chunk_checksum(values: np.ndarray) -> int:
    """CRC-32 of an array's decoded values (C order, its own dtype): what `attrs["checksums"]` records per chunk."""
    return zlib.crc32(memoryview(np.ascontiguousarray(values)).cast("B"))


def _chunk_checksums(group: Any, chunk_rows: int, known: dict[str, dict[int, int]] | None = None) -> dict[str, Any]:
    """Every chunk's checksum: taken from `known` (computed from the values as they were written) or read back."""
    arrays = {}
    for name in ("acts", *PROVENANCE):
        arr, n, have = group[name], group[name].shape[0], (known or {}).get(name, {})
        arrays[name] = [have[i // chunk_rows] if i // chunk_rows in have else chunk_checksum(arr[i : i + chunk_rows])
                        for i in range(0, n, chunk_rows)]
    return {"algorithm": CHECKSUM_ALGORITHM, "chunk_rows": chunk_rows, "arrays": arrays}


WRITE_CHUNKS = 8
"""Whole chunks the writer buffers before writing them in one call (Zarr writes them concurrently, and each call's
fixed cost, a resize and a write per array, is paid once for all): 0.70 s vs 0.81 s with a call per chunk for
192k bf16 rows of width 576 here; most of the rest is Zarr's own chunk encoding and file writes."""

CODECS = ("blosc-lz4", "raw")
ROW_DTYPES = ("float32", "bfloat16")


def _compressors(codec: str) -> Any:
    if codec == "raw":  # uncompressed chunks: the CRC in attrs still catches every flipped bit
        return None
    from zarr.codecs import BloscCodec, BloscShuffle

    # lz4 + byte shuffle measured fastest of the compressors here (STACK.md gotcha 6).
    return BloscCodec(cname="lz4", clevel=5, shuffle=BloscShuffle.shuffle)


def bf16_bits_to_float32(bits: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) -> the same values as float32 (exact: bf16 is float32's top half)."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _nonfinite(acts: np.ndarray) -> np.ndarray:
    """(n, d) bool: the values that are NaN or Inf (float32 values or bfloat16 bit patterns)."""
    if acts.dtype == np.uint16:
        return (acts & 0x7F80) == 0x7F80  # exponent all ones: Inf or NaN
    return ~np.isfinite(acts)


def _nonfinite_rows(acts: np.ndarray) -> np.ndarray:
    """(n,) bool: rows holding NaN or Inf (float32 values or bfloat16 bit patterns)."""
    return _nonfinite(acts).any(axis=1)


class StoreWriter:
    """Append token rows to a new store; `close()` publishes it atomically (a local path: rename of the partial
    folder; an fsspec URL: the completion marker, written last)."""

    def __init__(
        self,
        path: str | PathLike[str],
        d_model: int,
        chunk_rows: int,
        attrs: dict[str, Any],
        resume: bool = True,
        row_dtype: str = "float32",
        codec: str = "blosc-lz4",
    ) -> None:
        if row_dtype not in ROW_DTYPES or codec not in CODECS:
            raise StoreError(f"row dtype {row_dtype!r} / codec {codec!r}: choose a row dtype of {ROW_DTYPES} and a "
                             f"codec of {CODECS}")
        if row_dtype != "float32":  # recorded (and so part of the fingerprint) only when not the float32 default
            attrs = {**attrs, "acts_dtype": row_dtype}
        self.row_dtype = row_dtype
        self._acts_np = np.uint16 if row_dtype == "bfloat16" else np.float32
        self.path = as_location(path)
        self.in_place = is_url(self.path)  # object stores: no atomic rename, publish by the completion marker
        self.tmp = self.path if self.in_place else self.path.with_name(self.path.name + ".partial")
        self.chunk_rows = chunk_rows
        self.d_model = d_model
        self._buf: list[dict[str, np.ndarray]] = []
        self._buf_rows = 0
        self._sums: dict[str, dict[int, int]] = {name: {} for name in ("acts", *PROVENANCE)}  # chunk -> checksum
        fingerprint = {k: attrs[k] for k in sorted(attrs)}
        if self.tmp.exists() and resume:
            group = _open_group(self.tmp, "r+")
            if group.attrs.get("fingerprint") != fingerprint or group.attrs.get("complete"):
                remove_store(self.tmp)  # a partial from another config, or a published store being replaced: start over
            else:
                self.group = group
                self.n_rows = int(group.attrs["n_rows"])
                self.n_docs = int(group.attrs["n_docs"])
                for name in ("acts", *PROVENANCE):  # drop rows written after the last recorded flush
                    arr = group[name]
                    arr.resize((self.n_rows, *arr.shape[1:]))
                self.written = self.n_rows
                return
        elif self.tmp.exists():
            remove_store(self.tmp)
        if not self.in_place:
            self.tmp.parent.mkdir(parents=True, exist_ok=True)
        self.group = _open_group(self.tmp, "w", zarr_format=3)
        self.group.create_array(
            "acts", shape=(0, d_model), chunks=(chunk_rows, d_model), dtype=np.dtype(self._acts_np).name,
            compressors=_compressors(codec),
        )
        for name, dtype in PROVENANCE.items():
            self.group.create_array(name, shape=(0,), chunks=(chunk_rows,), dtype=dtype, compressors=_compressors(codec))
        self.n_rows = self.n_docs = self.written = 0
        self.group.attrs.update({**attrs, "fingerprint": fingerprint, "n_rows": 0, "n_docs": 0, "complete": False})

    def append(self, acts: np.ndarray, doc_id: np.ndarray, position: np.ndarray, token_id: np.ndarray) -> None:
        """Buffer rows (acts (n, d): float32, or uint16 bfloat16 bit patterns in a bfloat16 store; the others (n,));
        full chunks are written, WRITE_CHUNKS at a time, as they fill."""
        if acts.ndim != 2 or acts.shape[1] != self.d_model:
            raise StoreError(f"rows of shape {acts.shape} do not match store width {self.d_model}")
        if self.row_dtype == "bfloat16" and acts.dtype != np.uint16:
            raise StoreError(f"a bfloat16 store takes rows as uint16 bit patterns, got {acts.dtype}: pass "
                             "`tensor.view(torch.uint16).numpy()` of the bfloat16 rows")
        bad = int(_nonfinite_rows(acts).sum())
        if bad:
            raise StoreError(
                f"{bad} activation rows contain NaN/Inf (documents {int(doc_id.min())}..{int(doc_id.max())}); "
                "the model is numerically unstable at this layer/dtype: try dtype float32 or another layer"
            )
        self._buf.append({"acts": acts.astype(self._acts_np, copy=False), "doc_id": doc_id, "position": position, "token_id": token_id})
        self._buf_rows += len(acts)
        if self._buf_rows >= self.chunk_rows * WRITE_CHUNKS:
            self._write_buffer(whole_chunks=True)

    def _write_buffer(self, whole_chunks: bool = False) -> None:
        """Write the buffered rows; `whole_chunks`: only up to the last chunk boundary they reach, keeping the rest
        buffered, so no chunk is written twice (a partial chunk is read, decoded and re-encoded on its next write)."""
        if not self._buf:
            return
        cols = {k: np.concatenate([b[k] for b in self._buf]) for k in self._buf[0]}
        n = len(cols["acts"])
        if whole_chunks:
            n = (self.written + n) // self.chunk_rows * self.chunk_rows - self.written
        lo, cr = self.written, self.chunk_rows
        for name, values in cols.items():
            arr = self.group[name]
            out = values[:n].astype(arr.dtype, copy=False)
            arr.resize((lo + n, *arr.shape[1:]))
            arr[lo : lo + n] = out
            for c in range(-(-lo // cr), (lo + n) // cr):  # chunks written whole here: their checksum, with no read-back
                self._sums[name][c] = chunk_checksum(out[c * cr - lo : (c + 1) * cr - lo])
        self.written += n
        rest = {k: v[n:] for k, v in cols.items()}
        self._buf, self._buf_rows = ([rest] if len(rest["acts"]) else []), len(rest["acts"])

    def commit(self, n_docs: int) -> None:
        """Write all buffered rows and record that the first `n_docs` documents are done (the resume point)."""
        self._write_buffer()
        self.n_rows, self.n_docs = self.written, n_docs
        self.group.attrs.update({"n_rows": self.n_rows, "n_docs": self.n_docs})

    def close(self, extra_attrs: dict[str, Any] | None = None) -> Location:
        """Mark the committed store complete and publish it atomically. Returns the final location."""
        if self._buf or self.written != self.n_rows:
            raise StoreError("uncommitted rows at close: call commit(n_docs) first")
        if self.n_rows == 0:
            raise StoreError(f"no activation rows were written to {self.path}: is the corpus empty?")
        checksums = _chunk_checksums(self.group, self.chunk_rows, self._sums)  # read back: chunks finished over commits
        # one write of the group's zarr.json: the completion marker of an in-place (object store) store
        self.group.attrs.update({**(extra_attrs or {}), "checksums": checksums, "complete": True})
        if not self.in_place:
            publish_dir(self.tmp, self.path)
        return self.path


class ActivationStore:
    """Read side of a complete store. `verify=True` checks each chunk read through `chunk` / `rows` against its
    recorded checksum (stores written before checksums existed are read unverified; `verify()` flags them)."""

    def __init__(self, path: str | PathLike[str], verify: bool = True) -> None:
        self.path = as_location(path)
        if not self.path.exists():
            partial = not is_url(self.path) and self.path.with_name(self.path.name + ".partial").exists()
            hint = " (a partial store exists: re-run to resume)" if partial else ""
            raise StoreError(f"no activation store at {self.path}{hint}: materialize the `activations` asset first")
        try:
            self.group = _open_group(self.path, "r")
            complete = self.group.attrs.get("complete")
            self.acts = self.group["acts"]
        except Exception as e:  # unreadable metadata (zarr.json) or a missing array
            raise StoreCorrupt(f"activation store {self.path} cannot be opened ({type(e).__name__}: {e}): delete it "
                               "and re-materialize `activations`") from e
        if not complete:
            raise StoreError(f"activation store {self.path} is incomplete (no completion marker: being written, or its "
                             "writer died): re-materialize `activations` to resume it")
        self.row_dtype = str(self.group.attrs.get("acts_dtype", "float32"))
        sums = self.group.attrs.get("checksums")
        self.checksums: dict[str, list[int]] | None = sums["arrays"] if sums else None
        self.verify_reads = verify and self.checksums is not None

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def n_rows(self) -> int:
        return int(self.acts.shape[0])

    @property
    def d_model(self) -> int:
        return int(self.acts.shape[1])

    @property
    def chunk_rows(self) -> int:
        return int(self.acts.chunks[0])

    @property
    def n_chunks(self) -> int:
        return -(-self.n_rows // self.chunk_rows)

    def _where(self, name: str, i: int) -> str:
        lo = i * self.chunk_rows
        return f"{self.path}/{name} chunk {i} (rows {lo}..{min(lo + self.chunk_rows, self.n_rows) - 1})"

    def chunk_path(self, name: str, i: int) -> Location:
        """The file holding chunk i of array `name` (zarr's chunk-key encoding: `acts/c/<i>/0`, `doc_id/c/<i>`)."""
        arr = self.group[name]
        return self.path / name / arr.metadata.encode_chunk_key((i,) + (0,) * (arr.ndim - 1))

    def read_chunk(self, name: str, i: int, verify: bool | None = None, clock: StageClock | None = None) -> np.ndarray:
        """Chunk i of array `name` ("acts" or a provenance array), decoded and (by default) verified. `clock`
        (benchmarks) gets the seconds of the "read" and the "verify" stages."""
        lo = i * self.chunk_rows
        try:
            with stage(clock, "read"):
                values = self.group[name][lo : lo + self.chunk_rows]
        except Exception as e:  # codec errors (e.g. blosc decompression) name nothing: say where and what to do
            raise StoreCorrupt(f"{self._where(name, i)} cannot be decoded ({type(e).__name__}: {e}): the store is "
                               "corrupt; delete it and re-materialize `activations`") from e
        with stage(clock, "verify"):
            self._check(name, i, values, verify)
        return values

    def _check(self, name: str, i: int, values: np.ndarray, verify: bool | None) -> None:
        if (self.verify_reads if verify is None else verify and self.checksums is not None):
            expected = self.checksums[name][i] if i < len(self.checksums.get(name, [])) else None
            if expected is None or chunk_checksum(values) != expected:
                raise StoreCorrupt(f"{self._where(name, i)} does not match its recorded checksum: the store is "
                                   "corrupt; delete it and re-materialize `activations`")
            if name == "acts":
                self._check_finite(values, i)

    def _check_finite(self, values: np.ndarray, i: int) -> None:
        """Refuse a chunk holding NaN or Inf (float32 values or bfloat16 bit patterns), naming its first bad row and
        dimension: the writer never stores one, so it was put there after the checksum was recorded (or with it)."""
        bad = _nonfinite(values)
        if bad.any():
            r, d = (int(k) for k in np.argwhere(bad)[0])
            value = bf16_bits_to_float32(values[r : r + 1, d])[0] if values.dtype == np.uint16 else values[r, d]
            raise StoreCorrupt(f"{self.path}/acts chunk {i}: row {i * self.chunk_rows + r} dimension {d} is {value} "
                               f"({int(bad.any(axis=1).sum())} non-finite row(s) in the chunk) although the writer "
                               "never stores one: the store is corrupt; delete it and re-materialize `activations`")

    @property
    def codec(self) -> str:
        return "raw" if not self.acts.compressors else "blosc-lz4"

    def chunk(self, i: int, clock: StageClock | None = None) -> np.ndarray:
        """Rows of chunk i, (≤chunk_rows, d) float32 whatever the stored row dtype (verified unless the store was
        opened with verify=False). `read_chunk("acts", i)` gives the stored values (bfloat16 as uint16 bits)."""
        values = self.read_chunk("acts", i, clock=clock)
        return bf16_bits_to_float32(values) if self.row_dtype == "bfloat16" else values

    def rows(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Activation rows [start, stop) (n, d) float32, read chunk by chunk (so verified like `chunk`)."""
        stop = self.n_rows if stop is None else min(stop, self.n_rows)
        if stop <= start:
            return np.empty((0, self.d_model), np.float32)
        first, last = start // self.chunk_rows, (stop - 1) // self.chunk_rows
        block = np.concatenate([self.chunk(i) for i in range(first, last + 1)])
        off = first * self.chunk_rows
        return block[start - off : stop - off]

    def verify(self) -> list[dict[str, Any]]:
        """Decode every chunk of every array and compare it with its checksum; the problems found (empty = sound).

        Never raises for a bad chunk: each problem names the array, the chunk index, the row range and what is
        wrong (undecodable, checksum mismatch, or no checksums recorded at all)."""
        if self.checksums is None:
            return [{"array": "*", "chunk": None, "rows": None,
                     "problem": "no checksums recorded (a store written before checksums existed): re-materialize "
                                "`activations` to record them"}]
        problems = []
        for name in ("acts", *PROVENANCE):
            n = self.group[name].shape[0]
            if n != self.n_rows:
                problems.append({"array": name, "chunk": None, "rows": None,
                                 "problem": f"{n} rows where acts has {self.n_rows}"})
            for i in range(-(-n // self.chunk_rows)):
                try:
                    self.read_chunk(name, i, verify=True)
                except StoreCorrupt as e:
                    lo = i * self.chunk_rows
                    problems.append({"array": name, "chunk": i, "rows": [lo, min(lo + self.chunk_rows, n) - 1],
                                     "problem": str(e)})
        return problems

    def iter_chunks(self) -> Iterator[np.ndarray]:
        for i in range(self.n_chunks):
            yield self.chunk(i)

    def provenance(self, name: str) -> np.ndarray:
        """A provenance array (n,), read chunk by chunk and verified like the activations."""
        parts = [self.read_chunk(name, i) for i in range(-(-self.group[name].shape[0] // self.chunk_rows))]
        return np.concatenate(parts) if parts else np.empty(0, PROVENANCE[name])

    @property
    def nbytes_rows(self) -> int:
        """Bytes of the activation rows in their stored dtype (what holding them in memory takes)."""
        return self.n_rows * self.d_model * (2 if self.row_dtype == "bfloat16" else 4)

    def nbytes_stored(self) -> int:
        if is_url(self.path):
            return int(self.path.fs.du(self.path.path))
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
