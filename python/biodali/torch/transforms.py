"""What ExpressionLoader puts between the reader and the batch: the DALI graph for a transform and
an output layout, and the little torch work left after DALIGenericIterator (ragged rows arrive
padded; "csr" compacts them into a torch.sparse_csr_tensor).

Rule shared by every recipe: normalization totals use every gene of the cell; `genes` selects
(and orders) the output columns afterwards, as scanpy's normalize_total -> log1p -> subset does.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

OUTPUTS = ("dense", "csr", "padded")
DENSE_DTYPES = ("float32", "float16", "bfloat16")
RESERVED_KEYS = ("X", "values", "indices", "lengths", "tokens", "row_index")


@dataclass(frozen=True)
class Log1pScale:
    """log1p-normalized expression, then per gene ``(x - mean) / std`` (scanpy's ``scale``
    without clipping), done by DALI's ``fn.normalize`` on the dense rows.

    mean/std: one value per output gene (``genes`` order, or every column); when left out they
    are computed from the first `max_cells` cells of a shuffled pass over the store
    (``biodali.gene_stats.log1p_gene_stats``; std with ddof=1, 0 -> 1)."""

    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    max_cells: int | None = 100_000
    seed: int = 0


@dataclass(frozen=True)
class RankTokens:
    """Geneformer's rank-value encoding (``fn.biodali.expression.rank_tokens``): batch keys
    ``tokens`` (int32 [B, max_length]: column ids, or positions in ``genes``, + token_offset,
    padded with pad_id) and ``lengths`` (int32 [B]).

    gene_medians: one per store column; when left out, ``biodali.expression.gene_medians(path,
    max_cells=max_cells)`` (which reads the store with anndata: pass them for large stores)."""

    max_length: int = 2048
    gene_medians: Sequence[float] | None = None
    token_offset: int = 0
    pad_id: int = 0
    max_cells: int | None = 20_000
    seed: int = 0


GraphTransform = Callable[..., object]


@dataclass
class Plan:
    """Everything the graph needs, resolved against the store (gene ids, sizes, statistics)."""

    transform: object  # None, "log1p", Log1pScale, RankTokens or a callable
    output: str
    n_features: int
    genes: list[int] | None
    target_sum: float
    dtype: str
    scale: tuple[np.ndarray, np.ndarray] | None = None  # Log1pScale's (mean, std) per output gene
    medians: list[float] | None = None  # RankTokens' medians per output gene

    @property
    def n_columns(self) -> int:
        return len(self.genes) if self.genes is not None else self.n_features


def resolve(transform, output: str, dtype: str, genes: list[int] | None, n_features: int,
            target_sum: float, path, array: str) -> Plan:
    """Checks the combination and computes what the recipe needs from the store."""
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    if dtype not in DENSE_DTYPES:
        raise ValueError(f"dtype must be one of {DENSE_DTYPES}, got {dtype!r}")
    if transform == "log1p+scale":
        transform = Log1pScale()
    elif transform == "rank_tokens":
        transform = RankTokens()
    elif isinstance(transform, str) and transform != "log1p":
        raise ValueError(f"transform must be None, 'log1p', 'log1p+scale', 'rank_tokens', a "
                         f"Log1pScale / RankTokens, or a callable; got {transform!r}")
    elif not (transform is None or isinstance(transform, (str, Log1pScale, RankTokens))
              or callable(transform)):
        raise TypeError(f"transform must be a name, a Log1pScale / RankTokens or a callable, "
                        f"got {type(transform).__name__}")
    plan = Plan(transform, output, n_features, genes, target_sum, dtype)
    if isinstance(transform, Log1pScale):
        if output != "dense":
            raise ValueError("'log1p+scale' centres every gene, so its rows are dense: use output='dense'")
        if dtype == "bfloat16":
            raise ValueError("'log1p+scale' gives float32 or float16 (DALI's normalize has no bfloat16)")
        plan.scale = _scaling(transform, plan, path, array)
    elif isinstance(transform, RankTokens):
        if output == "csr":
            raise ValueError("'rank_tokens' gives padded token rows (tokens + lengths), not csr")
        medians = transform.gene_medians
        if medians is None:
            from biodali.expression import gene_medians

            medians = gene_medians(path, array, target_sum, transform.max_cells, transform.seed)
        medians = np.asarray(medians, dtype=np.float32)
        if len(medians) != n_features:
            raise ValueError(f"gene_medians has {len(medians)} values; the store has {n_features} columns")
        plan.medians = [float(m) for m in (medians[genes] if genes is not None else medians)]
    return plan


def _scaling(spec: Log1pScale, plan: Plan, path, array: str):
    if (spec.mean is None) != (spec.std is None):
        raise ValueError("Log1pScale takes both mean and std, or neither")
    if spec.mean is not None:
        mean = np.asarray(spec.mean, dtype=np.float32)
        std = np.asarray(spec.std, dtype=np.float32)
        if mean.shape != (plan.n_columns,) or std.shape != (plan.n_columns,):
            raise ValueError(f"mean and std need one value per output gene ({plan.n_columns}), got "
                             f"{mean.shape} and {std.shape}")
        if not (std > 0).all():
            raise ValueError("std must be > 0 for every gene")
        return mean, std
    from biodali.gene_stats import log1p_gene_stats

    stats = log1p_gene_stats(path, plan.target_sum, spec.max_cells, spec.seed, array)
    return stats.scaling(plan.genes)


# --- the DALI graph ----------------------------------------------------------------------------

def graph_outputs(plan: Plan, values, indices, on_gpu: bool) -> dict:
    """DataNodes named by batch key. For output="csr", "values"/"indices" are ragged rows (see
    ragged_keys); every other output is uniform per batch, as DALIGenericIterator needs, and
    output="padded" pads the rows in DALI and adds their "lengths"."""
    from nvidia.dali import fn

    E = fn.biodali.expression
    t = plan.transform
    gpu = (lambda node: node.gpu()) if on_gpu else (lambda node: node)
    if callable(t) and not isinstance(t, (Log1pScale, RankTokens)):
        return _callable_outputs(plan, t(values, indices), on_gpu)
    if isinstance(t, RankTokens):
        v, i = values, indices
        if plan.genes is not None:  # select_genes keeps its indices input on the CPU
            v, i = E.select_genes(gpu(v), i, genes=plan.genes)
        tokens, lengths = E.rank_tokens(gpu(v), gpu(i), gene_medians=plan.medians,
                                        max_length=t.max_length, pad_id=t.pad_id,
                                        token_offset=t.token_offset)
        return {"tokens": tokens, "lengths": lengths}
    if plan.output == "dense":
        dense_args = dict(n_features=plan.n_features, dtype=plan.dtype)
        if plan.genes is not None:
            dense_args["genes"] = plan.genes
        if t is None:
            return {"X": E.densify(gpu(values), gpu(indices), **dense_args)}
        x = E.normalize_densify(gpu(values), gpu(indices), target_sum=plan.target_sum, log1p=True,
                                **{**dense_args, "dtype": "float32" if plan.scale else plan.dtype})
        if plan.scale is not None:
            from nvidia.dali import types

            mean, std = plan.scale
            x = fn.normalize(x, mean=types.Constant(mean), stddev=types.Constant(std),
                             dtype=types.FLOAT16 if plan.dtype == "float16" else types.FLOAT)
        return {"X": x}
    v = gpu(values)
    if t == "log1p":
        v = E.normalize(v, target_sum=plan.target_sum, log1p=True)
    return sparse_rows(plan, v, indices, on_gpu)


def ragged_keys(plan: Plan) -> tuple[str, ...]:
    """Batch keys whose rows differ in length (RaggedIterator hands them over flat)."""
    return ("values", "indices") if plan.output == "csr" and not isinstance(plan.transform, RankTokens) \
        else ()


def sparse_rows(plan: Plan, values, indices, on_gpu: bool) -> dict:
    """(values, indices) rows -> the selected genes, then laid out for output "csr" or "padded"."""
    from nvidia.dali import fn, types

    if plan.genes is not None:  # select_genes keeps its indices input on the CPU
        values, indices = fn.biodali.expression.select_genes(values, indices, genes=plan.genes)
    if on_gpu:
        indices = indices.gpu()
    if plan.output == "csr":
        return {"values": values, "indices": indices}
    return {"values": fn.pad(values, fill_value=0), "indices": fn.pad(indices, fill_value=0),
            "lengths": values.shape(dtype=types.INT32, device="gpu" if on_gpu else "cpu")[0]}


def _callable_outputs(plan: Plan, result, on_gpu: bool) -> dict:
    """A user graph function returns one DataNode (dense rows -> X), a (values, indices) pair
    (sparse rows, laid out as `output` says) or a dict of named uniform DataNodes."""
    from nvidia.dali import fn
    from nvidia.dali.data_node import DataNode

    if isinstance(result, DataNode):
        return {"X": result}
    if isinstance(result, dict):
        if "row_index" in result or not all(isinstance(v, DataNode) for v in result.values()):
            raise TypeError("a transform's dict maps batch keys (not 'row_index') to DataNodes")
        return dict(result)
    if isinstance(result, (tuple, list)) and len(result) == 2 and all(isinstance(r, DataNode) for r in result):
        values, indices = result
        if plan.output != "dense":
            return sparse_rows(plan, values, indices, on_gpu)
        args = dict(n_features=plan.n_features, dtype=plan.dtype)
        if plan.genes is not None:
            args["genes"] = plan.genes
        return {"X": fn.biodali.expression.densify(values, indices, **args)}
    raise TypeError("a transform callable must return a DataNode, a (values, indices) pair of "
                    f"DataNodes or a dict of DataNodes; got {type(result).__name__}")


# --- after DALIGenericIterator -----------------------------------------------------------------

def finish_batch(plan: Plan, batch: dict) -> dict:
    """Torch-side touches: bfloat16 bit patterns viewed as bfloat16, and for output="csr" the
    flat rows (values, offsets) + (indices, offsets) made into one torch.sparse_csr_tensor."""
    x = batch.get("X")
    if x is not None and x.dtype == torch.uint16 and plan.dtype == "bfloat16":
        batch["X"] = x.view(torch.bfloat16)
    if plan.output == "csr" and isinstance(batch.get("values"), tuple):
        (values, offsets), (indices, _) = batch.pop("values"), batch.pop("indices")
        batch["X"] = csr_tensor(values, indices, offsets, plan.n_columns)
    return batch


def csr_tensor(values: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor,
               n_columns: int) -> torch.Tensor:
    """Flat CSR rows -> torch.sparse_csr_tensor [len(offsets) - 1, n_columns], sharing `values`
    and `indices` (int32 column ids: the offsets become int32 too, torch wants one index type)."""
    if indices.dtype == torch.int32 and len(values) < 2 ** 31:
        offsets = offsets.to(torch.int32)
    else:
        indices, offsets = indices.to(torch.int64), offsets.to(torch.int64)
    with warnings.catch_warnings():  # torch notes once that sparse CSR is "beta"
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        # The reader's rows are the stored CSR rows (select_genes keeps them canonical):
        # checking the invariants again would cost a pass over the batch.
        return torch.sparse_csr_tensor(offsets, indices, values, size=(len(offsets) - 1, n_columns),
                                       check_invariants=False)
