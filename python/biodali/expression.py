"""Python side of fn.biodali.expression.*: gene names -> column ids through a store's var index,
and thin wrappers that fill in what the store knows (number of columns, gene positions).

The operators themselves are ``nvidia.dali.fn.biodali.expression.<name>`` and work in any DALI
graph; these wrappers only compute their arguments."""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import zarr

from .stores import expand_store_paths

GeneList = Sequence["str | int"]


def var_names(path, array: str = "X") -> list[str]:
    """The var index (gene names) of a store; for a collection or a list, of its first group."""
    group = expand_store_paths(path)[0]
    if array.startswith("obsm/"):
        raise ValueError(f"{group}: {array} has no var index; pass column ids instead of names")
    var = zarr.open_group(f"{group}/var", mode="r")
    index_name = var.attrs.get("_index", "_index")
    return [str(v) for v in var[index_name][:]]


def n_features(path, array: str = "X") -> int:
    """Number of columns of `array` in the first group of `path`."""
    group = expand_store_paths(path)[0]
    node = zarr.open(f"{group}/{array}", mode="r")
    shape = node.attrs["shape"] if isinstance(node, zarr.Group) else node.shape
    return int(shape[1])


def gene_columns(genes: GeneList, path=None, array: str = "X") -> list[int]:
    """Column ids for `genes` (names looked up in the var index of `path`, or ints kept as they
    are). Raises ValueError for an empty list, repeated genes and names not in the store."""
    genes = list(genes)
    if not genes:
        raise ValueError("the gene list is empty")
    if all(isinstance(g, (int, np.integer)) for g in genes):
        columns = [int(g) for g in genes]
    else:
        if path is None:
            raise ValueError("gene names need `path` (the store whose var index maps them)")
        names = var_names(path, array)
        position = {name: i for i, name in enumerate(names)}
        if len(position) != len(names):
            raise ValueError(f"{expand_store_paths(path)[0]}: the var index has repeated names; "
                             "make them unique (anndata: var_names_make_unique()) or pass column ids")
        missing = [g for g in genes if str(g) not in position]
        if missing:
            shown = ", ".join(map(repr, missing[:10])) + (" ..." if len(missing) > 10 else "")
            raise ValueError(f"{expand_store_paths(path)[0]}: {len(missing)} gene(s) not in the var "
                             f"index: {shown}")
        columns = [position[str(g)] for g in genes]
    seen: set[int] = set()
    repeated = [c for c in columns if c in seen or seen.add(c)]
    if repeated:
        raise ValueError(f"genes listed more than once (columns {repeated[:10]})")
    return columns


def _fn():
    from nvidia.dali import fn

    return fn.biodali.expression


def select_genes(values, indices, genes: GeneList, path=None, array: str = "X", **kwargs):
    """fn.biodali.expression.select_genes with gene names mapped through `path`'s var index."""
    return _fn().select_genes(values, indices, genes=gene_columns(genes, path, array), **kwargs)


def densify(values, indices, path=None, n_features: int | None = None, genes: GeneList | None = None,
            array: str = "X", dtype: str = "float32", **kwargs):
    """fn.biodali.expression.densify; `n_features` defaults to the store's column count and
    `genes` (names or ids) selects and orders the output columns."""
    if n_features is None and path is not None:
        n_features = globals()["n_features"](path, array)
    args = dict(dtype=dtype, **kwargs)
    if n_features is not None:
        args["n_features"] = int(n_features)
    if genes is not None:
        args["genes"] = gene_columns(genes, path, array)
    return _fn().densify(values, indices, **args)


def gene_medians(path, array: str = "X", target_sum: float = 1e4, max_cells: int | None = None,
                 seed: int = 0) -> np.ndarray:
    """Per-column median of the normalized non-zero values (counts / cell total * target_sum),
    the statistic Geneformer's rank_tokens divides by; 0 for columns never expressed. Reads
    up to `max_cells` random rows (all by default) with anndata, chunk by chunk."""
    import anndata as ad

    per_gene: list[list[np.ndarray]] = []
    for group in expand_store_paths(path):
        adata = ad.read_zarr(group) if array == "X" else None
        matrix = adata.X if adata is not None else ad.io.read_elem(zarr.open(f"{group}/{array}", mode="r"))
        rows = np.arange(matrix.shape[0])
        if max_cells is not None and max_cells < len(rows):
            rows = np.sort(np.random.default_rng(seed).choice(rows, max_cells, replace=False))
        sub = matrix[rows].tocsr()
        totals = np.asarray(sub.sum(axis=1)).ravel()
        scale = np.divide(target_sum, totals, out=np.zeros_like(totals, dtype=np.float64), where=totals > 0)
        normalized = sub.multiply(scale[:, None]).tocsc()
        if not per_gene:
            per_gene = [[] for _ in range(normalized.shape[1])]
        for g in range(normalized.shape[1]):
            col = normalized.data[normalized.indptr[g]:normalized.indptr[g + 1]]
            if len(col):
                per_gene[g].append(col)
    return np.array([np.median(np.concatenate(parts)) if parts else 0.0 for parts in per_gene],
                    dtype=np.float32)
