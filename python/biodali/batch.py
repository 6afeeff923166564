"""Turning the reader's per-row outputs into batch arrays without a Python loop per row."""
from __future__ import annotations

import numpy as np


def ragged_to_flat(tensor_list) -> tuple[np.ndarray, np.ndarray]:
    """A CPU TensorList of 1-D samples -> (concatenated values, offsets with len(batch)+1).

    Zero-copy when the list is contiguous (the reader's outputs are)."""
    lengths = np.fromiter((s[0] for s in tensor_list.shape()), dtype=np.int64, count=len(tensor_list))
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    if tensor_list.is_dense_tensor() or total == 0:
        flat = np.array(tensor_list.as_tensor()).reshape(-1) if total else np.empty(0, np.float32)
    else:
        flat = np.asarray(tensor_list.as_reshaped_tensor([total]))
    return flat, offsets


def csr_batch(values, indices, n_cols: int):
    """values/indices TensorLists of one batch -> scipy.sparse.csr_matrix [batch, n_cols]."""
    import scipy.sparse as sp

    data, indptr = ragged_to_flat(values)
    idx, _ = ragged_to_flat(indices)
    return sp.csr_matrix((data, idx, indptr), shape=(len(indptr) - 1, n_cols))


def uniform_to_array(tensor_list) -> np.ndarray:
    """A CPU TensorList of same-shape samples -> one numpy array [batch, ...] (zero-copy)."""
    return np.asarray(tensor_list.as_tensor())
