"""Per-gene statistics of log-normalized expression, read through fn.biodali.readers.anndata:
the mean/std that ``biodali.torch``'s "log1p+scale" transform centres and scales by, and a cheap
highly-variable-gene selection (the genes whose log-normalized expression varies most).

Values are ``log1p(counts / cell total * target_sum)`` (scanpy's ``normalize_total`` + ``log1p``),
zeros included. Sums are accumulated in float64 from the sparse rows (``np.bincount`` over the
column ids), so the cost is one pass over the non-zeros of the cells read, not cells x genes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .expression import n_features as store_n_features


@dataclass(frozen=True)
class GeneStats:
    """Per-column mean and variance (ddof=1, scanpy's ``scale``) over `num_cells` cells."""

    mean: np.ndarray  # float64 [n_features]
    var: np.ndarray  # float64 [n_features]
    num_cells: int

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    def scaling(self, genes=None) -> tuple[np.ndarray, np.ndarray]:
        """(mean, std) as float32 for `genes` (column ids, all by default), std 0 -> 1 as in
        scanpy's ``scale`` (a constant gene becomes 0 instead of nan)."""
        mean, std = self.mean, self.std
        if genes is not None:
            mean, std = mean[np.asarray(genes)], std[np.asarray(genes)]
        return mean.astype(np.float32), np.where(std > 0, std, 1.0).astype(np.float32)


def log1p_gene_stats(path, target_sum: float = 1e4, max_cells: int | None = None, seed: int = 0,
                     array: str = "X", batch_size: int = 1024) -> GeneStats:
    """Mean and variance of every column's log-normalized expression.

    max_cells=None reads every cell in stored order; otherwise the first `max_cells` cells of a
    block-shuffled pass (blocks of 64 rows, so that a sample of a store sorted by cell type still
    spans it), the same cells for the same `seed`."""
    import biodali  # noqa: F401  (loads the plugin)
    from nvidia.dali import fn, pipeline_def

    from .batch import csr_arrays

    num_features = store_n_features(path, array)
    shuffle = max_cells is not None

    @pipeline_def(batch_size=batch_size, num_threads=_cpus(), device_id=None, prefetch_queue_depth=1)
    def pipe():
        values, indices = fn.biodali.readers.anndata(
            path=path, array=array, random_shuffle=shuffle, seed=seed, chunk_size=64,
            preload_chunks=64, pad_last_batch=True, name="reader")
        return fn.biodali.expression.normalize(values, target_sum=target_sum, log1p=True), indices

    p = pipe()
    p.build()
    try:
        num_rows = p.reader_meta("reader")["epoch_size"]
        wanted = num_rows if max_cells is None else min(int(max_cells), num_rows)
        total = np.zeros(num_features)
        total_sq = np.zeros(num_features)
        seen = 0
        while seen < wanted:
            values, indices = p.run()
            data, cols, offsets = csr_arrays(values, indices)
            take = min(len(offsets) - 1, wanted - seen)  # the last batch repeats its last row
            end = int(offsets[take])
            data = data[:end].astype(np.float64)
            total += np.bincount(cols[:end], weights=data, minlength=num_features)
            total_sq += np.bincount(cols[:end], weights=data * data, minlength=num_features)
            seen += take
    finally:
        p._shutdown()
    mean = total / seen
    # Var with ddof=1 from the sums (the cancellation is harmless: values are log1p, < ~15).
    var = np.maximum(total_sq - seen * mean * mean, 0.0) / max(seen - 1, 1)
    return GeneStats(mean, var, seen)


def highly_variable_genes(path, n_top: int, target_sum: float = 1e4, max_cells: int | None = 20_000,
                          seed: int = 0, array: str = "X", stats: GeneStats | None = None) -> list[int]:
    """Column ids (ascending) of the `n_top` genes with the largest variance of log-normalized
    expression: a cheap stand-in for scanpy's dispersion-based ``highly_variable_genes`` that
    needs one pass over a sample of cells."""
    stats = stats or log1p_gene_stats(path, target_sum, max_cells, seed, array)
    if not 1 <= n_top <= len(stats.var):
        raise ValueError(f"n_top must be in [1, {len(stats.var)}], got {n_top}")
    top = np.argsort(-stats.var, kind="stable")[:n_top]
    return sorted(int(g) for g in top)


def _cpus() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
