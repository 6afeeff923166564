"""Deterministic synthetic single-cell expression data with the statistics of 10x Chromium data.

``make_expression`` builds a small AnnData in memory; ``write_expression`` streams any number of
cells to zarr (v2/v3, optionally sharded), h5ad, or an annbatch DatasetCollection, in row blocks
with bounded memory. Only numpy/scipy/pandas/anndata/zarr/h5py are used (no DALI).

The model (parameters derive from ``seed`` and ``n_genes``; see ``_build_model``):

- Gene popularity is a power law with an exponential cut-off: the gene of popularity rank r
  (ranks: a random permutation of the genes) has base weight (r + 2)^-1 * exp(-r / (0.3 G)).
  With G = 36,601 the top 1% of genes hold ~60% of the counts, ~200 genes are in > 90% of the
  cells and ~60% of the genes in < 2% of them.
- Depth (expected UMIs per cell) is log-normal, sigma 0.45, times a per-batch factor
  exp(N(0, 0.2)); its median is calibrated so that a median-depth cell would have
  ``TARGET_NNZ_PER_CELL * G / 36601`` non-zeros under the base profile (at most 0.6 G). Realized at
  G = 36,601: median ~2,750 non-zero genes (5-95%: ~1,700-4,500), median ~10,800 UMIs.
- "Head" genes (the top ranks, expected count >= 0.5 in a median cell, at most 1,024) are drawn
  densely as negative binomial (gamma-Poisson, per-gene theta in {1, 2, 4, 8}); the other genes are
  Poisson, sampled sparsely as multinomial draws then counted (the gamma noise hardly matters at
  their rates). Values are integers stored as float32.
- 50 cell types, frequencies proportional to k^-0.5, each with a log-fold-change N(0, 0.7) on a
  random 30% of the head genes and 300 marker genes (drawn from the ranks after the head) raised
  by exp(U(1.5, 3)), drawn densely as NB on top of their base rate; 6 batches, each with a
  log-fold-change N(0, 0.15) on the head genes. A nearest-centroid classifier on the log-normalized
  first 2,000 genes tells the 50 types apart with > 95% accuracy.

Determinism: cells are generated in blocks of ``BLOCK_ROWS``; block b draws from
``Generator(PCG64(SeedSequence([seed, 1, b])))`` and always generates a full block (the last is
truncated), so a cell depends only on (seed, n_genes, its index): the first n cells of a larger
dataset equal a dataset of n cells, and neither the write path nor ``jobs`` changes any byte (for a
given numpy/scipy/zarr/anndata version).
"""
from __future__ import annotations

import math
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.special

DEFAULT_N_GENES = 36601
BLOCK_ROWS = 1000  # RNG block and annbatch shuffle slice (annbatch's shuffle_chunk_size)
N_CELL_TYPES = 50
N_BATCHES = 6
TARGET_NNZ_PER_CELL = 3200  # at DEFAULT_N_GENES; proportional to n_genes otherwise
IN_MEMORY_MAX_CELLS = 200_000  # anndata layout: below this, anndata itself writes the store
ANNBATCH_ROWS_PER_DATASET = 181_000
ANNBATCH_WINDOW_SLICES = 16  # rows are permuted within windows of this many slices
ANNBATCH_SHARD_NBYTES = 1 << 30  # annbatch's shard_size="1GB" (humanfriendly, binary)

_DEPTH_SIGMA = 0.45
_HEAD_MIN_MEAN = 0.5  # a gene whose median-cell mean reaches this is sampled as NB, densely
_HEAD_MAX = 1024
_N_MARKERS = 300
_THETAS = np.array([1.0, 2.0, 4.0, 8.0])
_GAMMA_QUANTILES = 4096
_STREAM_MODEL, _STREAM_BLOCK, _STREAM_SHUFFLE = 0, 1, 2


@dataclass(frozen=True)
class _Model:
    n_genes: int
    seed: int
    type_freq: np.ndarray  # (T,) float64
    dense_genes: np.ndarray  # (T, D) int32 sorted gene ids: head genes + the type's markers
    dense_prob: np.ndarray  # (T * B, D) float32 normalized probability of each dense column
    dense_gamma_row: np.ndarray  # (T, D) int32 offset of the column's theta row in gamma_table
    gamma_table: np.ndarray  # (len(_THETAS) * _GAMMA_QUANTILES,) float32, mean-1 gamma quantiles
    tail_alias_prob: np.ndarray  # (R,) float32 alias table over the genes outside the head
    tail_key: np.ndarray  # (R,) uint32 gene << 1 | 1 (a tail draw's key bits), kept when the
    tail_alias_key: np.ndarray  # draw passes tail_alias_prob, else the alias's
    tail_mass: np.ndarray  # (T * B,) float64 probability of the tail under each profile
    batch_depth: np.ndarray  # (B,) float64 depth factor
    median_depth: float

    @property
    def n_types(self) -> int:
        return len(self.type_freq)


def _rng(seed: int, *stream: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, *stream])))


def _alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias method: draw j uniformly, keep j with prob[j], else take alias[j]."""
    n = len(weights)
    scaled = weights * (n / weights.sum())
    prob = np.ones(n)
    alias = np.arange(n, dtype=np.int32)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return prob.astype(np.float32), alias


def _expected_nnz(depth: float, p: np.ndarray, theta: np.ndarray, head: np.ndarray) -> float:
    mean = depth * p
    nb = 1.0 - (1.0 + mean[head] / theta[head]) ** -theta[head]
    return float(nb.sum() + (-np.expm1(-np.delete(mean, head))).sum())


def _calibrate_depth(target: float, p, theta, head) -> float:
    lo, hi = 1e-3, 1e9
    for _ in range(60):
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if _expected_nnz(mid, p, theta, head) < target else (lo, mid)
    return math.sqrt(lo * hi)


def _build_model(n_genes: int, seed: int) -> _Model:
    if n_genes < 1:
        raise ValueError(f"n_genes must be >= 1, got {n_genes}")
    rng = _rng(seed, _STREAM_MODEL)
    n_types, n_batches = N_CELL_TYPES, N_BATCHES
    rank_of_gene = rng.permutation(n_genes)
    gene_of_rank = np.argsort(rank_of_gene).astype(np.int32)
    ranks = np.arange(n_genes, dtype=np.float64)
    weight = (ranks + 2.0) ** -1.0 * np.exp(-ranks / (0.3 * n_genes))
    p_rank = weight / weight.sum()
    theta_class = rng.integers(0, len(_THETAS), n_genes)  # indexed by gene
    theta_rank = _THETAS[theta_class[gene_of_rank]]

    # Median depth: first with every gene NB, then with the head/tail split it defines.
    target = min(TARGET_NNZ_PER_CELL * n_genes / DEFAULT_N_GENES, 0.6 * n_genes)
    all_ranks = np.arange(n_genes)
    depth = _calibrate_depth(target, p_rank, theta_rank, all_ranks)
    n_head = int(np.clip(np.count_nonzero(depth * p_rank >= _HEAD_MIN_MEAN), min(n_genes, 16),
                         min(n_genes, _HEAD_MAX)))
    depth = _calibrate_depth(target, p_rank, theta_rank, all_ranks[:n_head])

    type_freq = np.arange(1, n_types + 1, dtype=np.float64) ** -0.5
    type_freq = rng.permutation(type_freq / type_freq.sum())
    n_rest = n_genes - n_head
    n_markers = min(_N_MARKERS, n_rest // 4)
    pool = n_head + np.arange(min(n_rest, max(20 * n_markers, n_rest // 6)))  # marker ranks
    dense_rank = np.empty((n_types, n_head + n_markers), dtype=np.int64)
    type_lfc = np.zeros((n_types, n_head + n_markers))
    for t in range(n_types):
        dense_rank[t, :n_head] = np.arange(n_head)
        dense_rank[t, n_head:] = rng.choice(pool, n_markers, replace=False) if n_markers else []
        affected = rng.random(n_head) < 0.3
        type_lfc[t, :n_head] = np.where(affected, rng.normal(0.0, 0.7, n_head), 0.0)
        type_lfc[t, n_head:] = rng.uniform(1.5, 3.0, n_markers)
    batch_depth = np.exp(rng.normal(0.0, 0.2, n_batches))
    batch_lfc = rng.normal(0.0, 0.15, (n_batches, n_head))

    tail_total = p_rank[n_head:].sum()
    dense_prob = np.empty((n_types * n_batches, n_head + n_markers), dtype=np.float32)
    tail_mass = np.empty(n_types * n_batches)
    for t in range(n_types):
        for b in range(n_batches):
            # Markers keep their base rate in the tail; the dense NB adds the up-regulation.
            w = p_rank[dense_rank[t]] * np.exp(type_lfc[t])
            w[:n_head] *= np.exp(batch_lfc[b])
            w[n_head:] -= p_rank[dense_rank[t, n_head:]]
            z = w.sum() + tail_total
            dense_prob[t * n_batches + b] = w / z
            tail_mass[t * n_batches + b] = tail_total / z
    # Dense columns sorted by gene id, so the dense non-zeros of a block come out sorted.
    dense_gene = gene_of_rank[dense_rank]
    order = np.argsort(dense_gene, axis=1)
    dense_gene = np.take_along_axis(dense_gene, order, axis=1).astype(np.int32)
    dense_prob = np.take_along_axis(dense_prob, np.repeat(order, n_batches, axis=0), axis=1)
    dense_gamma_row = (theta_class[dense_gene] * _GAMMA_QUANTILES).astype(np.int32)

    q = (np.arange(_GAMMA_QUANTILES) + 0.5) / _GAMMA_QUANTILES
    gamma_table = np.concatenate([scipy.special.gammaincinv(th, q) / th for th in _THETAS])
    gamma_table = (gamma_table / gamma_table.reshape(len(_THETAS), -1).mean(1).repeat(
        _GAMMA_QUANTILES)).astype(np.float32)

    tail_p = p_rank[n_head:]
    if n_rest:
        alias_prob, alias = _alias_table(tail_p)
    else:
        alias_prob, alias = np.ones(0, np.float32), np.zeros(0, np.int64)
    tail_key = (gene_of_rank[n_head:].astype(np.uint32) << 1) | 1
    return _Model(
        n_genes=n_genes, seed=seed, type_freq=type_freq, dense_genes=dense_gene,
        dense_prob=dense_prob, dense_gamma_row=dense_gamma_row,
        gamma_table=gamma_table, tail_alias_prob=alias_prob, tail_key=tail_key,
        tail_alias_key=tail_key[alias], tail_mass=tail_mass, batch_depth=batch_depth,
        median_depth=depth)


@dataclass
class _Block:
    """CSR rows of consecutive cells plus their obs columns."""

    indptr: np.ndarray  # int64, starts at 0
    indices: np.ndarray  # int32
    data: np.ndarray  # float32
    cell_type: np.ndarray  # int8 codes
    batch: np.ndarray  # int8 codes
    n_counts: np.ndarray  # float32

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    def head(self, n: int) -> "_Block":
        end = self.indptr[n]
        return _Block(self.indptr[:n + 1], self.indices[:end], self.data[:end],
                      self.cell_type[:n], self.batch[:n], self.n_counts[:n])

    def take(self, rows: np.ndarray) -> "_Block":
        lengths = np.diff(self.indptr)[rows]
        indptr = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        src = np.repeat(self.indptr[rows] - indptr[:-1], lengths) + np.arange(indptr[-1])
        return _Block(indptr, self.indices[src], self.data[src], self.cell_type[rows],
                      self.batch[rows], self.n_counts[rows])

    @staticmethod
    def concat(blocks: list["_Block"]) -> "_Block":
        if len(blocks) == 1:
            return blocks[0]
        offsets = np.cumsum([0] + [b.indptr[-1] for b in blocks[:-1]])
        indptr = np.concatenate([[0]] + [b.indptr[1:] + o for b, o in zip(blocks, offsets)])
        return _Block(indptr.astype(np.int64), *(
            np.concatenate([getattr(b, f) for b in blocks])
            for f in ("indices", "data", "cell_type", "batch", "n_counts")))


def _generate_block(model: _Model, block_index: int) -> _Block:
    """BLOCK_ROWS cells: dense NB draws over the type's head+marker genes, Poisson tail draws."""
    rng = _rng(model.seed, _STREAM_BLOCK, block_index)
    n, n_genes = BLOCK_ROWS, model.n_genes
    cell_type = rng.choice(model.n_types, n, p=model.type_freq).astype(np.int8)
    batch = rng.integers(0, N_BATCHES, n).astype(np.int8)
    profile = cell_type.astype(np.int64) * N_BATCHES + batch
    depth = model.median_depth * model.batch_depth[batch] * np.exp(rng.normal(0, _DEPTH_SIGMA, n))

    # Dense part: gamma-Poisson with per-gene theta (gamma from a quantile table).
    mean = model.dense_prob[profile] * depth[:, None].astype(np.float32)
    n_dense = mean.shape[1]
    gamma_idx = rng.integers(0, _GAMMA_QUANTILES, mean.shape, dtype=np.int32)
    gamma_idx += model.dense_gamma_row[cell_type]
    mean *= model.gamma_table[gamma_idx]
    del gamma_idx
    counts = rng.poisson(mean).ravel()
    del mean
    # Sort keys (row, gene, origin) of every non-zero: origin 0 for the dense counts (already in
    # key order: row-major, columns sorted by gene), 1 for each tail draw.
    gene_bits = max(1, (n_genes - 1).bit_length()) + 1
    key_type = np.uint32 if gene_bits + (n - 1).bit_length() <= 32 else np.uint64
    flat = np.flatnonzero(counts)
    dense_counts = counts[flat]
    del counts
    rows = (flat // n_dense).astype(key_type)
    keys = [(rows << gene_bits) | (model.dense_genes.ravel()[
        cell_type[rows].astype(np.int64) * n_dense + flat % n_dense].astype(key_type) << 1)]
    del flat, rows

    # Tail: multinomial draws over the genes outside the head (alias method), counted below.
    if len(model.tail_key):
        n_draws = rng.poisson(depth * model.tail_mass[profile])
        j = rng.integers(0, len(model.tail_key), int(n_draws.sum()), dtype=np.int32)
        u = rng.random(len(j), dtype=np.float32)
        gene_keys = np.where(u < model.tail_alias_prob[j], model.tail_key[j], model.tail_alias_key[j])
        del j, u
        keys.append(np.repeat(np.arange(n, dtype=key_type) << gene_bits, n_draws)
                    | gene_keys.astype(key_type, copy=False))
        del gene_keys
    keys = np.sort(np.concatenate(keys))
    first = np.empty(len(keys), dtype=bool)
    first[:1] = True
    np.not_equal(keys[1:] >> 1, keys[:-1] >> 1, out=first[1:])
    starts = np.flatnonzero(first)
    values = np.diff(starts, append=len(keys))  # draws (+1 for a dense entry, sorted first)
    keys = keys[starts]
    values[np.flatnonzero((keys & 1) == 0)] += dense_counts - 1
    rows = keys >> gene_bits
    genes = ((keys >> 1) & ((1 << (gene_bits - 1)) - 1)).astype(np.int32)
    indptr = np.searchsorted(rows, np.arange(n + 1)).astype(np.int64)
    csum = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=csum[1:])
    n_counts = (csum[indptr[1:]] - csum[indptr[:-1]]).astype(np.float32)
    return _Block(indptr, genes, values.astype(np.float32), cell_type, batch, n_counts)


# ---------------------------------------------------------------------------------------------
# Block generation, optionally in worker processes, with bounded look-ahead.

_worker_model: _Model | None = None  # set once per worker process by _init_worker


def _init_worker(model: _Model) -> None:
    global _worker_model
    _worker_model = model


def _worker_block(block_index: int) -> _Block:
    return _generate_block(_worker_model, block_index)


class _BlockSource:
    """Yields generated blocks in the order asked, from ``jobs`` processes (1: this process)."""

    def __init__(self, model: _Model, jobs: int = 1):
        self.model = model
        self.jobs = max(1, int(jobs))
        self._pool = None
        if self.jobs > 1:
            import multiprocessing

            # Forked before any zarr/IO thread exists; workers only run numpy.
            ctx = multiprocessing.get_context("fork")
            self._pool = ctx.Pool(self.jobs, initializer=_init_worker, initargs=(model,))

    def blocks(self, block_ids):
        """Iterator over the blocks of block_ids; workers stay at most 2 * jobs blocks ahead."""
        if self._pool is None:
            for b in block_ids:
                yield _generate_block(self.model, int(b))
            return
        pending = []
        for b in block_ids:
            pending.append(self._pool.apply_async(_worker_block, (int(b),)))
            if len(pending) >= 2 * self.jobs:
                yield pending.pop(0).get()
        for p in pending:
            yield p.get()

    def close(self):
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()
            self._pool = None


def _cells_block(blocks_it, block_ids, n_cells: int):
    """Concatenates the next blocks of blocks_it, which are block_ids (cells >= n_cells dropped),
    and returns them with their cell indices."""
    blocks, cell_ids = [], []
    for b in block_ids:
        blk = next(blocks_it)
        keep = min(BLOCK_ROWS, n_cells - int(b) * BLOCK_ROWS)
        blocks.append(blk if keep == BLOCK_ROWS else blk.head(keep))
        cell_ids.append(np.arange(int(b) * BLOCK_ROWS, int(b) * BLOCK_ROWS + keep))
    return _Block.concat(blocks), np.concatenate(cell_ids)


def _check_n_datasets(n_cells: int, n_datasets: int | None) -> None:
    n_blocks = -(-n_cells // BLOCK_ROWS)
    if n_datasets is not None and not 1 <= n_datasets <= n_blocks:
        raise ValueError(f"n_datasets must be in [1, {n_blocks}] for {n_cells} cells "
                         f"(slices of {BLOCK_ROWS} cells), got {n_datasets}")


def _annbatch_plan(n_cells: int, seed: int, n_datasets: int | None):
    """Per dataset, a list of windows (block ids, row permutation of the window's cells).

    Like annbatch's DatasetCollection.add_adatas: slices of BLOCK_ROWS consecutive cells are
    shuffled, then cut into datasets (ANNBATCH_ROWS_PER_DATASET rows each, or n_datasets
    near-equal parts); annbatch then permutes each dataset's rows in memory, here each window of
    ANNBATCH_WINDOW_SLICES slices is permuted, which keeps memory bounded."""
    n_blocks = -(-n_cells // BLOCK_ROWS)
    slices = _rng(seed, _STREAM_SHUFFLE).permutation(n_blocks)
    if n_datasets is None:
        per = max(1, ANNBATCH_ROWS_PER_DATASET // BLOCK_ROWS)
        groups = [slices[i:i + per] for i in range(0, n_blocks, per)]
    else:
        _check_n_datasets(n_cells, n_datasets)
        groups = np.array_split(slices, n_datasets)
    plan = []
    for d, group in enumerate(groups):
        windows = []
        for w, start in enumerate(range(0, len(group), ANNBATCH_WINDOW_SLICES)):
            ids = group[start:start + ANNBATCH_WINDOW_SLICES]
            n_rows = sum(min(BLOCK_ROWS, n_cells - int(b) * BLOCK_ROWS) for b in ids)
            windows.append((ids, _rng(seed, _STREAM_SHUFFLE, d, w).permutation(n_rows)))
        plan.append(windows)
    return plan


def annbatch_order(n_cells: int, seed: int = 0, n_datasets: int | None = None) -> list[np.ndarray]:
    """The cells (row numbers of ``make_expression(n_cells, ..., seed)``) of each ``dataset_k``
    of ``write_expression(..., layout="annbatch")``, in stored order."""
    out = []
    for windows in _annbatch_plan(n_cells, seed, n_datasets):
        parts = []
        for ids, perm in windows:
            cells = np.concatenate([np.arange(int(b) * BLOCK_ROWS,
                                              min((int(b) + 1) * BLOCK_ROWS, n_cells)) for b in ids])
            parts.append(cells[perm])
        out.append(np.concatenate(parts))
    return out


# ---------------------------------------------------------------------------------------------
# AnnData pieces

def _names(prefix: str, n: int, width: int) -> list[str]:
    return [f"{prefix}{i:0{width}d}" for i in range(n)]


def _cell_names(cell_ids: np.ndarray, n_cells: int) -> np.ndarray:
    width = max(6, len(str(n_cells - 1)))
    return np.char.add("cell_", np.char.zfill(cell_ids.astype(str), width)).astype(object)


def _var_frame(n_genes: int) -> pd.DataFrame:
    width = max(5, len(str(n_genes)))
    return pd.DataFrame(index=pd.Index([f"GENE{i:0{width}d}" for i in range(1, n_genes + 1)]))


def _obs_frame(cell_ids, cell_type, batch, n_counts, n_cells, src_path=None) -> pd.DataFrame:
    cols = {
        "cell_type": pd.Categorical.from_codes(cell_type, _names("celltype_", N_CELL_TYPES, 2)),
        "batch": pd.Categorical.from_codes(batch, _names("batch_", N_BATCHES, 1)),
        "n_counts": np.asarray(n_counts, dtype=np.float32),
    }
    if src_path is not None:
        cols["src_path"] = pd.Categorical.from_codes(batch, src_path)
    return pd.DataFrame(cols, index=pd.Index(_cell_names(cell_ids, n_cells)))


def _index_dtype(max_value: int, n_genes: int) -> np.dtype:
    """scipy's choice for indptr (int32 while everything fits)."""
    return np.dtype(np.int32 if max(max_value, n_genes) <= np.iinfo(np.int32).max else np.int64)


def _min_uint(n: int) -> np.dtype:
    """anndata's write_csr_csc_indices_with_min_possible_dtype rule for the minor axis size n."""
    from ._collection_writer import min_uint_dtype

    return min_uint_dtype(n)


def make_expression(n_cells: int, n_genes: int = DEFAULT_N_GENES, seed: int = 0):
    """An in-memory AnnData of n_cells synthetic cells (CSR float32 X, int32 indices)."""
    import anndata as ad

    if n_cells < 1:
        raise ValueError(f"n_cells must be >= 1, got {n_cells}")
    model = _build_model(n_genes, seed)
    ids = range(-(-n_cells // BLOCK_ROWS))
    blk, cell_ids = _cells_block(_BlockSource(model).blocks(ids), ids, n_cells)
    idx = _index_dtype(int(blk.indptr[-1]), max(n_cells, n_genes))
    X = sp.csr_matrix((blk.data, blk.indices, blk.indptr.astype(idx)), shape=(n_cells, n_genes))
    obs = _obs_frame(cell_ids, blk.cell_type, blk.batch, blk.n_counts, n_cells)
    return ad.AnnData(X=X, obs=obs, var=_var_frame(n_genes))


# ---------------------------------------------------------------------------------------------
# Streaming writers: rows go to raw temp files first (the chunk shapes depend on the final nnz),
# then each array is written in whole shards/chunks, so zarr never rewrites a shard.

class _Spill:
    """Raw CSR rows of one AnnData group, appended block by block, read back in slices."""

    def __init__(self, directory: Path, indices_dtype):
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.dtypes = {"data": np.dtype(np.float32), "indices": np.dtype(indices_dtype)}
        self._files = {k: open(directory / k, "wb") for k in self.dtypes}
        self._parts = {k: [] for k in ("lengths", "cell_ids", "cell_type", "batch", "n_counts")}

    def append(self, blk: _Block, cell_ids: np.ndarray) -> None:
        blk.data.tofile(self._files["data"])
        blk.indices.astype(self.dtypes["indices"]).tofile(self._files["indices"])
        for k, v in (("lengths", np.diff(blk.indptr)), ("cell_ids", cell_ids),
                     ("cell_type", blk.cell_type), ("batch", blk.batch),
                     ("n_counts", blk.n_counts)):
            self._parts[k].append(v)

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        cols = {k: np.concatenate(v) for k, v in self._parts.items()}
        self.indptr = np.zeros(len(cols["lengths"]) + 1, dtype=np.int64)
        np.cumsum(cols.pop("lengths"), out=self.indptr[1:])
        self.cols = cols

    @property
    def n_rows(self) -> int:
        return len(self.indptr) - 1

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1])

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        dt = self.dtypes[name]
        return np.fromfile(self.dir / name, dtype=dt, count=stop - start, offset=start * dt.itemsize)

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _piece_elems(arr) -> int:
    """Elements per write: whole shards (or chunks), about 64 Mi elements or one shard."""
    unit = (getattr(arr, "shards", None) or arr.chunks)[0]
    return unit * max(1, (1 << 26) // unit)


def _annbatch_x_kwargs(spill: _Spill, chunk_rows: int, indptr_dtype) -> dict:
    """annbatch 0.3.1 write_sharded: inner chunk = chunk_rows x mean row length, shard ~1 GiB of
    the in-memory CSR (float32 data + scipy's indices + indptr per row), a multiple of the chunk
    (the rule biodali convert writes with too)."""
    from ._collection_writer import inner_compressors, x_chunking

    chunk, shard = x_chunking(spill.n_rows, spill.nnz, chunk_rows, ANNBATCH_SHARD_NBYTES, 4,
                              np.dtype(indptr_dtype).itemsize)
    return {"chunks": (chunk,), "shards": (shard,), "compressors": inner_compressors("blosc-lz4")}


def _write_x_zarr(group, spill: _Spill, n_genes: int, kwargs: dict, indptr_dtype) -> None:
    import zarr

    x = group.create_group("X", attributes={  # anndata's attribute order
        "shape": [spill.n_rows, n_genes], "encoding-type": "csr_matrix", "encoding-version": "0.1.0"})
    auto_shard = kwargs.get("shards") == "auto"  # anndata's auto sharding: ~1 GB shards
    with zarr.config.set({"array.target_shard_size_bytes": 1_000_000_000} if auto_shard else {}):
        for name in ("data", "indices"):
            arr = x.create_array(name, shape=(spill.nnz,), dtype=spill.dtypes[name], **kwargs)
            step = _piece_elems(arr)
            for start in range(0, spill.nnz, step):
                stop = min(start + step, spill.nnz)
                arr[start:stop] = spill.read(name, start, stop)
        arr = x.create_array("indptr", shape=(spill.n_rows + 1,), dtype=indptr_dtype, **kwargs)
        arr[:] = spill.indptr.astype(indptr_dtype)


def _write_x_h5(f, spill: _Spill, n_genes: int, indptr_dtype) -> None:
    x = f.create_group("X")
    x.attrs.update({"shape": (spill.n_rows, n_genes), "encoding-type": "csr_matrix",
                    "encoding-version": "0.1.0"})
    for name in ("data", "indices"):
        ds = x.create_dataset(name, shape=(spill.nnz,), dtype=spill.dtypes[name], maxshape=(None,))
        for start in range(0, spill.nnz, 1 << 26):
            stop = min(start + (1 << 26), spill.nnz)
            ds[start:stop] = spill.read(name, start, stop)
    x.create_dataset("indptr", data=spill.indptr.astype(indptr_dtype), maxshape=(None,))


def _spill_obs(spill: _Spill, n_cells: int, src_path=None) -> pd.DataFrame:
    c = spill.cols
    return _obs_frame(c["cell_ids"], c["cell_type"], c["batch"], c["n_counts"], n_cells, src_path)


class _BackgroundWriter:
    """Runs one write at a time in a thread (overlapping the next generation); a failure is kept
    and re-raised by the next submit() or wait()."""

    def __init__(self):
        self._thread = None
        self._error = None

    def _run(self, fn, args):
        try:
            fn(*args)
        except BaseException as exc:  # noqa: BLE001  (re-raised in the caller's thread)
            self._error = exc

    def submit(self, fn, *args) -> None:
        import threading

        self.wait()
        self._thread = threading.Thread(target=self._run, args=(fn, args), daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err


def _progress(n_cells: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=n_cells, unit="cell", unit_scale=True, desc=desc, file=sys.stderr,
                disable=not enabled, mininterval=1.0)


def _write_anndata_streaming(path: Path, model: _Model, n_cells: int, source: _BlockSource,
                             tmp: Path, fmt: str, zarr_format: int, sharded: bool, bar) -> None:
    import anndata as ad

    n_blocks = -(-n_cells // BLOCK_ROWS)
    spill = _Spill(tmp / "root", np.int32)
    blocks_it = source.blocks(range(n_blocks))
    for start in range(0, n_blocks, ANNBATCH_WINDOW_SLICES):
        ids = range(start, min(start + ANNBATCH_WINDOW_SLICES, n_blocks))
        blk, cell_ids = _cells_block(blocks_it, ids, n_cells)
        spill.append(blk, cell_ids)
        bar.update(len(cell_ids))
    spill.close()
    source.close()
    bar.set_postfix_str("writing X")
    adata = ad.AnnData(obs=_spill_obs(spill, n_cells), var=_var_frame(model.n_genes))
    indptr_dtype = _index_dtype(spill.nnz, max(n_cells, model.n_genes))
    if fmt == "h5ad":
        import h5py

        adata.write_h5ad(path)
        with h5py.File(path, "r+") as f:
            _write_x_h5(f, spill, model.n_genes, indptr_dtype)
        return
    import zarr

    with ad.settings.override(zarr_write_format=zarr_format, auto_shard_zarr_v3=sharded):
        adata.write_zarr(path)
    group = zarr.open_group(path, mode="r+", use_consolidated=False)
    _write_x_zarr(group, spill, model.n_genes, {"shards": "auto"} if sharded else {}, indptr_dtype)
    zarr.consolidate_metadata(str(path))


def _write_annbatch_dataset(root, d: int, spill: _Spill, n_cells: int, n_genes: int,
                            chunk_rows: int, src_path: list[str]) -> None:
    import anndata as ad

    adata = ad.AnnData(obs=_spill_obs(spill, n_cells, src_path), var=_var_frame(n_genes))
    with ad.settings.override(zarr_write_format=3, auto_shard_zarr_v3=True,
                              remove_unused_categories=False):
        ad.io.write_elem(root, f"dataset_{d}", adata)
    indptr_dtype = _index_dtype(spill.nnz, max(spill.n_rows, n_genes))
    _write_x_zarr(root[f"dataset_{d}"], spill, n_genes,
                  _annbatch_x_kwargs(spill, chunk_rows, indptr_dtype), indptr_dtype)
    spill.remove()


def _write_annbatch(path: Path, model: _Model, n_cells: int, source: _BlockSource, tmp: Path,
                    chunk_rows: int, n_datasets: int | None, bar) -> None:
    import zarr

    plan = _annbatch_plan(n_cells, model.seed, n_datasets)
    src_path = [f"synthetic/seed_{model.seed}/batch_{b}.h5ad" for b in range(N_BATCHES)]
    blocks_it = source.blocks([b for windows in plan for ids, _ in windows for b in ids])
    root = zarr.open_group(path, mode="w", zarr_format=3)
    writer = _BackgroundWriter()
    try:
        for d, windows in enumerate(plan):
            spill = _Spill(tmp / f"dataset_{d}", _min_uint(model.n_genes))
            for ids, perm in windows:
                blk, cell_ids = _cells_block(blocks_it, ids, n_cells)
                spill.append(blk.take(perm), cell_ids[perm])
                bar.update(len(perm))
            spill.close()
            writer.submit(_write_annbatch_dataset, root, d, spill, n_cells, model.n_genes,
                          chunk_rows, src_path)
            bar.set_postfix_str(f"writing dataset_{d}")
    finally:
        writer.wait()
    root.update_attributes({"encoding-type": "annbatch-preshuffled", "encoding-version": "0.1.0"})
    zarr.consolidate_metadata(str(path))


def write_expression(path, n_cells: int, n_genes: int = DEFAULT_N_GENES, seed: int = 0, *,
                     format: str = "zarr", zarr_format: int = 3, sharded: bool = False,
                     layout: str = "anndata", chunk_rows: int = 64, n_datasets: int | None = None,
                     jobs: int = 1, overwrite: bool = False, progress: bool = True) -> Path:
    """Writes n_cells synthetic cells (same cells as ``make_expression``) and returns the path.

    format: "zarr" or "h5ad"; zarr_format 2 or 3; sharded: zarr v3 shards for every array
    (anndata's auto sharding, ~1 GB shards). layout "annbatch": an annbatch 0.3.1
    DatasetCollection (zarr v3 only; see ``annbatch_order`` for which cells land where) with
    inner chunks of chunk_rows x the mean row length; n_datasets overrides the number of
    datasets (default: one per ANNBATCH_ROWS_PER_DATASET cells). jobs: generator processes.
    Up to IN_MEMORY_MAX_CELLS cells the anndata layout is written by anndata itself; larger
    outputs, and every annbatch layout, are streamed through temp files next to ``path``."""
    import anndata as ad

    path = Path(path)
    if n_cells < 1 or n_genes < 1:
        raise ValueError(f"n_cells and n_genes must be >= 1, got {n_cells}, {n_genes}")
    if format not in ("zarr", "h5ad"):
        raise ValueError(f"format must be 'zarr' or 'h5ad', got {format!r}")
    if zarr_format not in (2, 3):
        raise ValueError(f"zarr_format must be 2 or 3, got {zarr_format!r}")
    if layout not in ("anndata", "annbatch"):
        raise ValueError(f"layout must be 'anndata' or 'annbatch', got {layout!r}")
    if layout == "annbatch" and (format != "zarr" or zarr_format != 3):
        raise ValueError("layout='annbatch' writes zarr v3 (format='zarr', zarr_format=3)")
    if sharded and (format != "zarr" or zarr_format != 3):
        raise ValueError("sharded=True needs format='zarr' and zarr_format=3")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    _check_n_datasets(n_cells, n_datasets)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists (pass overwrite=True / --overwrite)")
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)

    with warnings.catch_warnings():  # zarr/anndata notes about v3 features we chose on purpose
        for message in _EXPECTED_WARNINGS:
            warnings.filterwarnings("ignore", message=message)
        if layout == "anndata" and n_cells <= IN_MEMORY_MAX_CELLS:
            adata = make_expression(n_cells, n_genes, seed)
            if format == "h5ad":
                adata.write_h5ad(path)
            else:
                with ad.settings.override(zarr_write_format=zarr_format,
                                          auto_shard_zarr_v3=sharded):
                    adata.write_zarr(path)
            return path
        model = _build_model(n_genes, seed)
        source = _BlockSource(model, jobs)
        tmp = path.parent / f".{path.name}.synth-tmp-{os.getpid()}"
        bar = _progress(n_cells, progress, f"synth {path.name}")
        try:
            if layout == "annbatch":
                _write_annbatch(path, model, n_cells, source, tmp, chunk_rows, n_datasets, bar)
            else:
                _write_anndata_streaming(path, model, n_cells, source, tmp, format,
                                         zarr_format, sharded, bar)
        finally:
            source.close()
            bar.close()
            shutil.rmtree(tmp, ignore_errors=True)
    return path


_EXPECTED_WARNINGS = ("Consolidated metadata is currently not part",
                      "Automatic shard shape inference is experimental",
                      "Writing zarr v2 data will no longer be the default")
