"""Writes datasets of an annbatch 0.3.1 DatasetCollection (zarr v3, sharded), as annbatch's
``write_sharded`` lays them out, from CSR rows that arrive in their final order.

X/data and X/indices are buffered up to one whole shard and written a shard at a time, so zarr
never reads a shard back and memory stays at one shard of each array whatever the dataset size.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd

ANNBATCH_ENCODING = {"encoding-type": "annbatch-preshuffled", "encoding-version": "0.1.0"}
CODECS = ("blosc-lz4", "zstd")

# zarr/anndata notes about zarr v3 features chosen on purpose
EXPECTED_WARNINGS = ("Consolidated metadata is currently not part",
                     "Automatic shard shape inference is experimental",
                     "Observation names are not unique",
                     "Variable names are not unique")

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_nbytes(text) -> int:
    """'4GB', '512MiB', '1.5g', 1000 -> bytes. Like annbatch (humanfriendly, binary=True):
    KB/MB/GB count in powers of 1024."""
    if isinstance(text, (int, np.integer)):
        return int(text)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kmgt]?)(i?b)?\s*", str(text).lower())
    if not m:
        raise ValueError(f"not a size: {text!r} (expected e.g. 4GB, 512MB, 1000000)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def format_nbytes(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def min_uint_dtype(n_vars: int) -> np.dtype:
    """anndata's write_csr_csc_indices_with_min_possible_dtype rule (which annbatch turns on)."""
    for t in (np.uint8, np.uint16, np.uint32):
        if n_vars <= np.iinfo(t).max:
            return np.dtype(t)
    return np.dtype(np.uint64)


def indptr_dtype(nnz: int, n_rows: int, n_vars: int) -> np.dtype:
    """scipy's choice for an in-memory CSR, which annbatch writes as is."""
    return np.dtype(np.int32 if max(nnz, n_rows, n_vars) <= np.iinfo(np.int32).max else np.int64)


def x_chunking(n_rows: int, nnz: int, chunk_rows: int, shard_nbytes: int,
               value_itemsize: int, index_itemsize: int) -> tuple[int, int]:
    """(inner chunk, shard) in elements, as annbatch 0.3.1 write_sharded computes them: chunk =
    chunk_rows x the mean row length; shard = the rows whose in-memory CSR (values + scipy's
    indices + indptr) fills shard_nbytes, x the mean row length, rounded down to whole chunks."""
    avg = nnz / n_rows
    chunk = max(1, int(chunk_rows * avg))
    chunk = min(chunk, nnz) if nnz else chunk
    bytes_per_row = (nnz * (value_itemsize + index_itemsize) + (n_rows + 1) * index_itemsize) / n_rows
    shard = max(1, int(max(1, int(shard_nbytes / bytes_per_row)) * avg))
    shard = min(shard, nnz) if nnz else shard
    return chunk, max(chunk, shard - shard % chunk)


def inner_compressors(codec: str):
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "blosc-lz4":  # annbatch's default
        return (BloscCodec(cname="lz4", clevel=3, shuffle="shuffle"),)
    if codec == "zstd":  # nvCOMP decodes zstd on the GPU
        return (ZstdCodec(level=0),)
    raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")


MAX_CHUNKS_IN_FLIGHT = 8  # inner chunks per array handed to the encoder threads at a time


def writer_nbytes(chunk_elems: int, value_itemsize: int, index_itemsize: int) -> int:
    """Memory a DatasetWriter holds: per array, the inner chunks being filled or encoded and
    their encoded bytes (at most the raw size plus blosc's header)."""
    return int(2 * (MAX_CHUNKS_IN_FLIGHT + 2) * chunk_elems * (value_itemsize + index_itemsize))


def _encoder(codec: str):
    """The numcodecs codec zarr's BloscCodec / ZstdCodec run on each inner chunk: blosc takes
    the typesize from the chunk's dtype, as zarr sets it."""
    from numcodecs import Blosc, Zstd

    if codec == "blosc-lz4":
        return Blosc(cname="lz4", clevel=3, shuffle=Blosc.SHUFFLE, blocksize=0)
    return Zstd(level=0)


def create_collection(path):
    import zarr

    return zarr.open_group(str(path), mode="w", zarr_format=3)


def finish_collection(path, root) -> None:
    root.update_attributes(ANNBATCH_ENCODING)
    consolidate(path)


def consolidate(path) -> None:
    """Consolidated metadata at the root, as annbatch writes it (zarr warns that v3 lacks it)."""
    import zarr

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=EXPECTED_WARNINGS[0])
        zarr.consolidate_metadata(str(path))


class _ShardWriter:
    """Writes the shard files of a 1-D zarr v3 array with sharding_indexed, as zarr-python lays
    them out by default: the encoded inner chunks in order, then the index (offset and length of
    every inner chunk, uint64 little-endian; absent chunks 2^64-1) and its crc32c. Inner chunks
    are encoded on a thread pool as they fill (numcodecs releases the GIL); zarr itself encodes
    ~3x slower here, one shard at a time in memory."""

    def __init__(self, array_dir, n_elems: int, chunk: int, shard: int, dtype, codec: str,
                 pool):
        from pathlib import Path

        self.dir = Path(array_dir) / "c"
        self.n_elems, self.chunk, self.per_shard = n_elems, chunk, shard // chunk
        self.dtype = np.dtype(dtype).newbyteorder("<")
        self._encode = _encoder(codec).encode
        self._pool = pool
        self._buf = np.empty(chunk, self.dtype)
        self._free = []  # buffers whose chunk was encoded
        self._filled = 0
        self._n_chunks = 0  # inner chunks handed to the pool
        self._in_flight = []  # futures of encoded chunks, in chunk order
        self._file = None
        self._index = None
        self._offset = 0
        self._received = 0

    def append_rows(self, values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
        """Appends the rows values[start:start + length], in order. Each inner chunk is filled by
        one concatenation of row slices straight into its buffer (no intermediate copy)."""
        n = int(lengths.sum())
        self._received += n
        if self._received > self.n_elems:
            raise RuntimeError(f"got {self._received} elements for an array of {self.n_elems}")
        ends = np.cumsum(lengths)  # element offsets of the rows' ends in this call's stream
        pos = 0
        while pos < n:
            take = min(n - pos, self.chunk - self._filled)
            first = int(np.searchsorted(ends, pos, side="right"))
            last = int(np.searchsorted(ends, pos + take, side="left"))
            # stream offsets [pos, pos + take) -> slices of the rows first..last
            row_starts = (ends[first:last + 1] - lengths[first:last + 1]).tolist()
            src = starts[first:last + 1].tolist()
            row_ends = ends[first:last + 1].tolist()
            pieces = []
            for r0, r1, s0 in zip(row_starts, row_ends, src):
                a, b = max(r0, pos), min(r1, pos + take)
                if b > a:
                    pieces.append(values[s0 + a - r0:s0 + b - r0])
            out = self._buf[self._filled:self._filled + take]
            if len(pieces) == 1:
                out[:] = pieces[0]
            else:
                np.concatenate(pieces, out=out, casting="unsafe")
            self._filled += take
            pos += take
            if self._filled == self.chunk:
                self._submit()

    def _submit(self) -> None:
        if self._filled < self.chunk:
            self._buf[self._filled:] = 0  # the last chunk is padded with the fill value
        self._in_flight.append((self._pool.submit(self._encode, self._buf), self._buf))
        self._n_chunks += 1
        self._buf = self._free.pop() if self._free else np.empty(self.chunk, self.dtype)
        self._filled = 0
        while len(self._in_flight) > MAX_CHUNKS_IN_FLIGHT:
            self._write_next()

    def _write_next(self) -> None:
        future, buf = self._in_flight.pop(0)
        encoded = future.result()
        self._free.append(buf)  # encoded: the buffer can take the next chunk
        number = self._n_chunks - len(self._in_flight) - 1  # of the chunk just popped
        local = number % self.per_shard
        if local == 0:
            self._close_shard()
            self.dir.mkdir(exist_ok=True)
            self._file = open(self.dir / str(number // self.per_shard), "wb")
            self._index = np.full((self.per_shard, 2), np.iinfo(np.uint64).max, dtype="<u8")
            self._offset = 0
        self._file.write(encoded)
        self._index[local] = (self._offset, len(encoded))
        self._offset += len(encoded)

    def _close_shard(self) -> None:
        if self._file is None:
            return
        from crc32c import crc32c

        index_bytes = self._index.tobytes()
        self._file.write(index_bytes + np.uint32(crc32c(index_bytes)).astype("<u4").tobytes())
        self._file.close()
        self._file = None

    def finish(self) -> None:
        if self._received != self.n_elems:
            raise RuntimeError(f"got {self._received} elements for an array of {self.n_elems}")
        if self._filled:
            self._submit()
        while self._in_flight:
            self._write_next()
        self._close_shard()

    def abort(self) -> None:
        for future, _ in self._in_flight:
            future.cancel()
        if self._file is not None:
            self._file.close()


class DatasetWriter:
    """One ``dataset_k`` group: obs and var at once, X from rows appended in order."""

    def __init__(self, root, name: str, obs: pd.DataFrame, var: pd.DataFrame, nnz: int,
                 value_dtype, index_dtype, chunk_rows: int, shard_nbytes: int, codec: str,
                 pool):
        import anndata as ad

        self.n_rows, self.nnz = len(obs), int(nnz)
        self.value_dtype, self.index_dtype = np.dtype(value_dtype), np.dtype(index_dtype)
        self.indptr_dtype = indptr_dtype(self.nnz, self.n_rows, len(var))
        chunk, shard = x_chunking(self.n_rows, self.nnz, chunk_rows, shard_nbytes,
                                  self.value_dtype.itemsize, self.indptr_dtype.itemsize)
        self._kwargs = {"chunks": (chunk,), "shards": (shard,),
                        "compressors": inner_compressors(codec)}
        with warnings.catch_warnings():
            for message in EXPECTED_WARNINGS:
                warnings.filterwarnings("ignore", message=message)
            adata = ad.AnnData(obs=obs, var=var)
            with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=True,
                                      remove_unused_categories=False):
                ad.io.write_elem(root, name, adata)
        self.group = root[name]
        self._x = self.group.create_group("X", attributes={  # anndata's attribute order
            "shape": [self.n_rows, len(var)], "encoding-type": "csr_matrix",
            "encoding-version": "0.1.0"})
        x_dir = _local_dir(root) / name / "X"
        self._writers = {}
        for key, dtype in (("data", self.value_dtype), ("indices", self.index_dtype)):
            self._x.create_array(key, shape=(self.nnz,), dtype=dtype, **self._kwargs)  # metadata
            self._writers[key] = _ShardWriter(x_dir / key, self.nnz, chunk, shard, dtype, codec,
                                              pool)

    @property
    def shard_elems(self) -> int:
        return self._kwargs["shards"][0]

    def append_rows(self, data: np.ndarray, indices: np.ndarray, starts: np.ndarray,
                    lengths: np.ndarray) -> None:
        """The next rows of the dataset: data/indices[start:start + length] for each row."""
        self._writers["data"].append_rows(data, starts, lengths)
        self._writers["indices"].append_rows(indices, starts, lengths)

    def finish(self, row_lengths: np.ndarray) -> None:
        """Completes X/data and X/indices and writes X/indptr from the rows' lengths."""
        for w in self._writers.values():
            w.finish()
        if len(row_lengths) != self.n_rows:
            raise RuntimeError(f"dataset got {len(row_lengths)} rows, expected {self.n_rows}")
        indptr = np.zeros(self.n_rows + 1, dtype=self.indptr_dtype)
        np.cumsum(row_lengths, out=indptr[1:])
        if indptr[-1] != self.nnz:
            raise RuntimeError(f"rows hold {indptr[-1]} non-zeros, expected {self.nnz}")
        self._x.create_array("indptr", shape=indptr.shape, dtype=self.indptr_dtype,
                             **self._kwargs)[:] = indptr

    def abort(self) -> None:
        for w in self._writers.values():
            w.abort()


def _local_dir(group):
    """The directory of a zarr group on a local store."""
    from pathlib import Path

    return Path(group.store.root) / group.path
