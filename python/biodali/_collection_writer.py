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


def shard_buffer_nbytes(shard_elems: int, value_itemsize: int, index_itemsize: int) -> int:
    """Memory a DatasetWriter holds: one shard of values and one of indices, plus what zarr
    holds while encoding a shard (its compressed inner chunks and the assembled shard: measured
    at up to ~1.2x the raw shard for incompressible values)."""
    return int(shard_elems * (value_itemsize + index_itemsize) + 1.25 * shard_elems * value_itemsize)


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


class DatasetWriter:
    """One ``dataset_k`` group: obs and var at once, X from rows appended in order."""

    def __init__(self, root, name: str, obs: pd.DataFrame, var: pd.DataFrame, nnz: int,
                 value_dtype, index_dtype, chunk_rows: int, shard_nbytes: int, codec: str):
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
        x = self.group.create_group("X", attributes={  # anndata's attribute order
            "shape": [self.n_rows, len(var)], "encoding-type": "csr_matrix",
            "encoding-version": "0.1.0"})
        self._arrays = {k: x.create_array(k, shape=(self.nnz,), dtype=dt, **self._kwargs)
                        for k, dt in (("data", self.value_dtype), ("indices", self.index_dtype))}
        self._x = x
        n_buf = min(shard, self.nnz)
        self._buffers = {"data": np.empty(n_buf, self.value_dtype),
                         "indices": np.empty(n_buf, self.index_dtype)}
        self._filled = 0  # elements in the buffers
        self._written = 0  # elements already in the arrays

    @property
    def shard_elems(self) -> int:
        return self._kwargs["shards"][0]

    def append(self, data: np.ndarray, indices: np.ndarray) -> None:
        """The next non-zeros of the dataset, in row order (any count)."""
        pos, n = 0, len(data)
        while pos < n:
            take = min(n - pos, len(self._buffers["data"]) - self._filled)
            self._buffers["data"][self._filled:self._filled + take] = data[pos:pos + take]
            self._buffers["indices"][self._filled:self._filled + take] = indices[pos:pos + take]
            self._filled += take
            pos += take
            if self._filled == len(self._buffers["data"]):
                self._flush()

    def _flush(self) -> None:
        start, stop = self._written, self._written + self._filled
        if stop > self.nnz:
            raise RuntimeError(f"dataset got {stop} non-zeros, expected {self.nnz}")
        for name, arr in self._arrays.items():
            arr[start:stop] = self._buffers[name][:self._filled]
        self._written, self._filled = stop, 0

    def finish(self, row_lengths: np.ndarray) -> None:
        """Writes what is buffered and X/indptr from the rows' lengths (in stored order)."""
        if self._filled:
            self._flush()
        self._buffers = {}
        if self._written != self.nnz or len(row_lengths) != self.n_rows:
            raise RuntimeError(f"dataset got {self._written} non-zeros in {len(row_lengths)} "
                               f"rows, expected {self.nnz} in {self.n_rows}")
        indptr = np.zeros(self.n_rows + 1, dtype=self.indptr_dtype)
        np.cumsum(row_lengths, out=indptr[1:])
        self._x.create_array("indptr", shape=indptr.shape, dtype=self.indptr_dtype,
                             **self._kwargs)[:] = indptr
