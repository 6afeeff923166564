"""Turning the reader's per-row outputs into batch arrays without a Python loop per row."""
from __future__ import annotations

import numpy as np


def row_lengths(lengths, num_rows: int) -> np.ndarray:
    """The per-row lengths of a batch as int64 numpy: `lengths` is the output of
    `values.shape()` in the pipeline (a TensorList of one-element shapes) or an array."""
    if hasattr(lengths, "as_tensor"):
        lengths = lengths.as_tensor()
    out = np.asarray(lengths).reshape(-1)
    if out.shape[0] != num_rows:
        raise ValueError(f"lengths holds {out.shape[0]} values for {num_rows} rows; pass the "
                         "output of values.shape() from the same pipeline")
    return out.astype(np.int64, copy=False)


def ragged_offsets(tensor_list, lengths=None) -> np.ndarray:
    """Row offsets (len(batch) + 1, int64) of a CPU TensorList of 1-D samples.

    lengths: optionally the batch's `values.shape()` output from the pipeline, which saves
    asking the TensorList for its shapes (a Python list per sample: ~1 ms at batch 4096)."""
    if lengths is not None:
        lengths = row_lengths(lengths, len(tensor_list))
    else:
        lengths = np.fromiter((s[0] for s in tensor_list.shape()), dtype=np.int64, count=len(tensor_list))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets


def flat_samples(tensor_list, total: int) -> np.ndarray:
    """The `total` elements of a CPU TensorList of 1-D samples as one array (zero-copy when
    the list is contiguous, as the reader's outputs are)."""
    if tensor_list.is_dense_tensor() or total == 0:
        return np.array(tensor_list.as_tensor()).reshape(-1) if total else np.empty(0, np.float32)
    return np.asarray(tensor_list.as_reshaped_tensor([total]))


def ragged_to_flat(tensor_list) -> tuple[np.ndarray, np.ndarray]:
    """A CPU TensorList of 1-D samples -> (concatenated values, offsets with len(batch)+1).

    Zero-copy when the list is contiguous (the reader's outputs are)."""
    offsets = ragged_offsets(tensor_list)
    return flat_samples(tensor_list, int(offsets[-1])), offsets


def csr_arrays(values, indices, lengths=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The reader's sparse outputs of one batch -> CSR (data, indices, indptr), zero-copy.

    values and indices have the same per-row lengths, so the offsets are read once. Pass
    `lengths` (a third pipeline output, `values.shape(dtype=types.INT64)`) at large batch
    sizes: the offsets then come from one array instead of a Python object per row."""
    indptr = ragged_offsets(values, lengths)
    total = int(indptr[-1])
    if len(indices) != len(values):
        raise ValueError(f"values has {len(values)} rows but indices has {len(indices)}")
    cols = flat_samples(indices, total)
    if cols.size != total:
        raise ValueError(f"indices holds {cols.size} elements but values {total}; not the same rows")
    return flat_samples(values, total), cols, indptr


def csr_batch(values, indices, n_cols: int):
    """values/indices TensorLists of one batch -> scipy.sparse.csr_matrix [batch, n_cols]."""
    import scipy.sparse as sp

    data, idx, indptr = csr_arrays(values, indices)
    return sp.csr_matrix((data, idx, indptr), shape=(len(indptr) - 1, n_cols))


def uniform_to_array(tensor_list) -> np.ndarray:
    """A CPU TensorList of same-shape samples -> one numpy array [batch, ...] (zero-copy)."""
    return np.asarray(tensor_list.as_tensor())
