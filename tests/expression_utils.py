"""Shared helpers for the fn.biodali.expression tests: stores written by anndata, pipeline
runners (reader -> transforms, or hand-made batches through external_source) and the numpy
references the operators are checked against."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

import biodali  # noqa: F401  (loads the plugin)
from biodali.synth import make_expression
from nvidia.dali import fn, pipeline_def
from reader_utils import make_adata, write_zarr

BATCH = 32


@dataclass
class Store:
    """A store on disk and the matrix anndata wrote into it."""

    path: str
    X: sp.csr_matrix
    var_names: list

    @property
    def n_obs(self) -> int:
        return self.X.shape[0]

    @property
    def n_vars(self) -> int:
        return self.X.shape[1]

    def row(self, r):
        """(values, indices) of row r, ordered by column."""
        lo, hi = self.X.indptr[r], self.X.indptr[r + 1]
        order = np.argsort(self.X.indices[lo:hi], kind="stable")
        return self.X.data[lo:hi][order], self.X.indices[lo:hi][order].astype(np.int32)


def counts_store(directory, n_cells=240, n_genes=400, seed=3, zero_rows=(5, 100)) -> Store:
    """Realistic integer counts (biodali.synth, float32) with a few all-zero rows."""
    adata = make_expression(n_cells, n_genes, seed=seed)
    X = adata.X.tocsr().astype(np.float32)
    for r in zero_rows:
        X.data[X.indptr[r]:X.indptr[r + 1]] = 0
    X.eliminate_zeros()
    X.indices = X.indices.astype(np.int32)
    adata.X = X
    path = write_zarr(adata, directory / "counts.zarr")
    return Store(path, X, list(adata.var_names))


def int_store(directory) -> Store:
    """Counts written as an int32 matrix (anndata keeps the dtype)."""
    adata = make_adata(n_obs=70, n_vars=30, dtype=np.int32, with_dense=False, seed=5)
    path = write_zarr(adata, directory / "ints.zarr")
    return Store(path, adata.X.tocsr(), list(adata.var_names))


# --- running pipelines -------------------------------------------------------------------------

def to_numpy(outputs):
    """Pipeline outputs -> per output, a list of numpy arrays (one per sample); GPU outputs are
    copied to the host."""
    result = []
    for out in outputs:
        if hasattr(out, "as_cpu") and type(out).__name__.endswith("GPU"):
            out = out.as_cpu()
        result.append([np.array(t) for t in out])
    return result


def build(graph, *, batch_size=BATCH, device_id=None, checkpoint=None, enable_checkpointing=False,
          seed=None):
    """A built pipeline whose outputs are graph()'s."""
    kw = dict(batch_size=batch_size, num_threads=2, device_id=device_id,
              enable_checkpointing=enable_checkpointing, prefetch_queue_depth=2)
    if seed is not None:
        kw["seed"] = seed

    @pipeline_def(**kw)
    def pipe():
        outs = graph()
        return tuple(outs) if isinstance(outs, (list, tuple)) else outs

    p = pipe(checkpoint=checkpoint) if checkpoint is not None else pipe()
    p.build()
    return p


def run(graph, num_batches=1, **kw):
    """Runs `num_batches` batches of graph(); a list of batches as to_numpy gives them."""
    p = build(graph, **kw)
    return [to_numpy(p.run()) for _ in range(num_batches)]


def reader(store, **kw):
    """(values, indices, row index) of every cell of `store`, in order unless shuffled."""
    return fn.biodali.readers.anndata(path=store.path, return_row_index=True, name="reader", **kw)


def samples(batches):
    """Batches -> one tuple per sample (its outputs in order)."""
    return [tuple(out[s] for out in batch) for batch in batches for s in range(len(batch[0]))]


def read_through(store, transforms, *, epochs=1, batch_size=BATCH, reader_kw=None, **kw):
    """Reads `epochs` epochs of `store` and applies transforms(values, indices) (a tuple of
    outputs); returns one tuple (row, values, indices, *outputs) per sample."""

    def graph():
        values, indices, row = reader(store, **(reader_kw or {}))
        outs = transforms(values, indices)
        outs = tuple(outs) if isinstance(outs, (list, tuple)) else (outs,)
        return (row, values, indices) + outs

    num_batches = math.ceil(store.n_obs / batch_size) * epochs
    got = samples(run(graph, num_batches=num_batches, batch_size=batch_size, **kw))
    return [(int(s[0]),) + s[1:] for s in got]


def feed(batch):
    """An external_source yielding `batch` (a list of per-sample arrays) every iteration."""
    batch = [np.ascontiguousarray(a) for a in batch]
    return fn.external_source(source=lambda: batch, batch=True)


def run_on(op, *columns, num_batches=1, **kw):
    """op(*inputs) on hand-made batches: each column is a list of per-sample arrays (one batch),
    fed every iteration. Returns the outputs of the last batch as to_numpy gives them, or all
    batches if num_batches > 1."""
    batch_size = len(columns[0])

    def graph():
        return op(*[feed(c) for c in columns])

    batches = run(graph, num_batches=num_batches, batch_size=batch_size, **kw)
    return batches if num_batches > 1 else batches[0]


# --- inputs shared by the CPU and GPU tests ---------------------------------------------------

DENSE_DTYPES = ["float32", "float16", "bfloat16"]


def common_genes(store, k=12):
    """The k most often expressed columns, shuffled: most rows keep most of them."""
    nnz = np.bincount(store.X.indices, minlength=store.n_vars)
    return [int(g) for g in np.random.default_rng(1).permutation(np.argsort(-nnz, kind="stable")[:k])]


GENE_SETS = {
    "common": common_genes,
    "random_half": lambda s: [int(g) for g in np.random.default_rng(2).permutation(s.n_vars)[:s.n_vars // 2]],
    "all_reversed": lambda s: list(range(s.n_vars))[::-1],
    "one": lambda s: common_genes(s, 1),
}


def awkward_floats(n=6000, seed=0):
    """float32 values across the float16 range and beyond: subnormals, halfway cases, overflow."""
    rng = np.random.default_rng(seed)
    exponents = rng.integers(127 - 30, 127 + 20, n).astype(np.uint32)
    bits = (exponents << 23) | rng.integers(0, 1 << 23, n).astype(np.uint32)
    bits |= rng.integers(0, 2, n).astype(np.uint32) << 31
    special = np.array([65504, 65519.996, 65520, 1e6, 2.0 ** -24, 2.0 ** -25, 2.0 ** -25 * 1.0000001,
                        1.5 * 2.0 ** -24, 2.5 * 2.0 ** -24, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11,
                        6.1e-5, 6.097555e-05, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 3.4e38, np.inf, -np.inf,
                        -65520, -2.0 ** -25 * 1.5], np.float32)
    return np.concatenate([special, bits.view(np.float32)])


def awkward_rows(seed=0):
    """float64 rows for bin_values: empty, all zero, ties, huge and tiny ranges, near-equal values."""
    rng = np.random.default_rng(seed)
    rows = [
        np.zeros(0), np.zeros(5), np.array([0, 4.0, 0]), np.array([2.0, 2.0, 2.0]),  # empty, zeros, one, ties
        rng.lognormal(0, 3, 1000),  # wide range
        np.where(rng.random(500) < 0.5, 0, rng.integers(1, 6, 500)),  # zeros and heavy ties
        rng.random(7) * 1e-30 + 1e-30, rng.random(3000) * 1e30,
        np.array([1.0, 1 + 1e-15, 1 + 2e-15, 3.0]),  # nearly equal values
    ]
    return [r.astype(np.float64) for r in rows]


# --- numpy references --------------------------------------------------------------------------

def ref_gene_medians(X, target_sum=1e4):
    """Per column, the median of counts / cell total * target_sum over the cells expressing it."""
    dense = X.toarray().astype(np.float64)
    totals = dense.sum(axis=1)
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    normalized = dense * scale[:, None]
    out = np.zeros(dense.shape[1], dtype=np.float32)
    for g in range(dense.shape[1]):
        col = normalized[dense[:, g] != 0, g]
        if len(col):
            out[g] = np.median(col)
    return out


def ref_rank_tokens(values, indices, medians, max_length, pad_id=0, token_offset=0):
    """Geneformer's ranking: non-zero genes with a positive median by value / median (float64)
    descending, ties by column ascending; (tokens padded to max_length, number of real ones)."""
    values = np.asarray(values, dtype=np.float64)
    indices = np.asarray(indices, dtype=np.int64)
    medians = np.asarray(medians, dtype=np.float32).astype(np.float64)
    known = indices < len(medians)
    med = np.where(known, medians[np.minimum(indices, len(medians) - 1)], 0.0)
    keep = (values != 0) & (med > 0)
    keys, cols = values[keep] / med[keep], indices[keep]
    order = np.lexsort((cols, -keys))
    chosen = cols[order][:max_length] + token_offset
    tokens = np.full(max_length, pad_id, dtype=np.int32)
    tokens[:len(chosen)] = chosen
    return tokens, len(chosen)


def ref_bin_values(values, n_bins):
    """scGPT's binning: digitize against the per-cell quantiles of the non-zero values."""
    values = np.asarray(values)
    out = np.zeros(len(values), dtype=np.int32)
    nonzero = values != 0
    if nonzero.any():
        v = values[nonzero].astype(np.float64)
        edges = np.quantile(v, np.linspace(0, 1, n_bins - 1))
        out[nonzero] = np.digitize(v, edges)
    return out


def binomial_bounds(n, p, sigmas=6.0):
    """[low, high] for the number of successes of n Bernoulli(p) trials, `sigmas` wide."""
    half = sigmas * math.sqrt(max(n * p * (1 - p), 1e-12))
    return n * p - half, n * p + half
