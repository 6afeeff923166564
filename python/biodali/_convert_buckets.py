"""Buckets of ``biodali convert``'s out-of-core shuffle: raw files of CSR non-zeros on disk.

Rows are appended to their bucket in increasing global row number (inputs are read in order),
so a bucket's file order is known from the plan alone and no per-row header is stored: the rows
of bucket b are the global rows whose output positions fall in b, sorted."""
from __future__ import annotations

import mmap
import os
import shutil
from pathlib import Path

import numpy as np



def _exclusive_cumsum(values: np.ndarray) -> np.ndarray:
    out = np.zeros(len(values), dtype=np.int64)
    if len(values) > 1:
        np.cumsum(values[:-1], out=out[1:])
    return out


def take_rows(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """The rows (start, length) of values, concatenated in the given order. One slice per row:
    cheaper than a fancy-index gather, whose int64 index outweighs 4-6 bytes of payload."""
    if len(starts) == 0:
        return values[:0]
    stops = (starts + lengths).tolist()
    return np.concatenate([values[a:b] for a, b in zip(starts.tolist(), stops)])


class BucketFiles:
    """Per bucket two append-only files: values and column indices, in the output dtypes."""

    def __init__(self, directory: Path, n_buckets: int, value_dtype, index_dtype):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n_buckets = n_buckets
        self.value_dtype, self.index_dtype = np.dtype(value_dtype), np.dtype(index_dtype)

    def _path(self, bucket: int, kind: str) -> Path:
        return self.dir / f"{bucket}.{kind}"

    def scatter(self, row_bucket: np.ndarray, data: np.ndarray, indices: np.ndarray,
                lengths: np.ndarray) -> None:
        """Appends each row (data/indices split by lengths) to the bucket row_bucket names."""
        if len(lengths) == 0:
            return
        order = np.argsort(row_bucket, kind="stable")  # stable: rows stay in global order
        sorted_bucket = row_bucket[order]
        starts = _exclusive_cumsum(lengths)
        run_ends = np.append(np.flatnonzero(np.diff(sorted_bucket)) + 1, len(order))
        first_row = 0
        for last_row in run_ends:
            rows = order[first_row:last_row]
            bucket = int(sorted_bucket[first_row])
            if rows[-1] - rows[0] == len(rows) - 1:  # consecutive rows (always without shuffle)
                e0, e1 = int(starts[rows[0]]), int(starts[rows[-1]] + lengths[rows[-1]])
                values, columns = data[e0:e1], indices[e0:e1]
            else:
                values = take_rows(data, starts[rows], lengths[rows])
                columns = take_rows(indices, starts[rows], lengths[rows])
            with open(self._path(bucket, "data"), "ab") as f:
                values.astype(self.value_dtype, copy=False).tofile(f)
            with open(self._path(bucket, "indices"), "ab") as f:
                columns.astype(self.index_dtype, copy=False).tofile(f)
            first_row = last_row

    def read(self, bucket: int, nnz: int) -> tuple[np.ndarray, np.ndarray]:
        """The bucket's non-zeros, in file order (read-only, mapped from the files)."""
        out = []
        for kind, dtype in (("data", self.value_dtype), ("indices", self.index_dtype)):
            path = self._path(bucket, kind)
            # mapped, not read: rows are copied once, from the page cache into inner chunks
            size = path.stat().st_size if path.exists() else 0
            arr = np.memmap(path, dtype=dtype, mode="r") if size else np.empty(0, dtype)
            if size:  # rows are taken in random order: have the kernel read the file ahead
                arr._mmap.madvise(mmap.MADV_WILLNEED)
            if len(arr) != nnz:
                raise RuntimeError(f"bucket file {path} holds {len(arr)} elements, expected {nnz}")
            out.append(arr)
        return out[0], out[1]

    def remove(self, bucket: int) -> None:
        for kind in ("data", "indices"):
            try:
                os.unlink(self._path(bucket, kind))
            except FileNotFoundError:
                pass

    def remove_all(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def in_position_order(rows: np.ndarray, row_nnz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For a bucket's global rows listed in output order: each row's start in the bucket's
    arrays (which hold the rows in increasing global row number) and its length."""
    rows_in_file = np.sort(rows)
    lengths_in_file = row_nnz[rows_in_file]
    file_row = np.searchsorted(rows_in_file, rows)
    return _exclusive_cumsum(lengths_in_file)[file_row], lengths_in_file[file_row]
