"""Shared pieces of the biodali.torch tests: small synthetic stores written by anndata (and an
annbatch collection written by biodali.synth), the scanpy reference, and a way to collect what
an ExpressionLoader yields."""
from __future__ import annotations

import anndata as ad
import numpy as np
import scanpy as sc
import scipy.sparse as sp
import torch

from biodali.stores import expand_store_paths
from biodali.synth import make_expression, write_expression
from reader_utils import write_zarr

N_CELLS = 301  # odd on purpose: shards and batches never divide it
N_GENES = 200


def write_anndata_store(directory, n_cells=N_CELLS, n_genes=N_GENES, seed=5) -> str:
    adata = make_expression(n_cells, n_genes, seed=seed)
    adata.X = sp.csr_matrix(adata.X, dtype=np.float32)
    return write_zarr(adata, directory / "cells.zarr")


def write_collection(directory, n_cells=2500, n_genes=N_GENES, seed=6) -> str:
    """An annbatch DatasetCollection of two dataset_k groups (biodali.synth's annbatch layout)."""
    return str(write_expression(directory / "collection.zarr", n_cells, n_genes=n_genes, seed=seed,
                                layout="annbatch", n_datasets=2, progress=False))


def read_oracle(path) -> ad.AnnData:
    """What anndata reads: the groups of `path` concatenated in the reader's order."""
    groups = [ad.read_zarr(g) for g in expand_store_paths(path)]
    return groups[0] if len(groups) == 1 else ad.concat(groups, index_unique="-")


def scanpy_log1p(X, target_sum=1e4) -> np.ndarray:
    """Dense normalize_total + log1p of X (float32, as anndata holds it)."""
    adata = ad.AnnData(sp.csr_matrix(X, dtype=np.float32))
    sc.pp.normalize_total(adata, target_sum=target_sum)
    sc.pp.log1p(adata)
    return adata.X.toarray()


def to_host(batch: dict) -> dict:
    """A batch with every tensor copied to host memory (dense), owned by the caller."""
    out = {}
    for key, value in batch.items():
        if value.layout != torch.strided:
            value = value.to_dense()
        out[key] = value.detach().cpu().clone()
    return out


def collect(loader, epochs=1) -> list[list[dict]]:
    """`epochs` passes over the loader: per epoch, its batches (host copies)."""
    return [[to_host(b) for b in loader] for _ in range(epochs)]


def rows_of(batches) -> list[int]:
    return [int(r) for b in batches for r in b["row_index"]]


def assert_same_stream(a, b):
    """Two lists of batches hold the same keys and tensors, batch by batch."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key].dtype == y[key].dtype
            assert (x[key] == y[key]).all(), key
