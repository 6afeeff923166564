"""biodali.torch.ExpressionLoader: what it delivers, against anndata/scanpy reading the same
stores (every row of an epoch once, values equal after the same transform), the output layouts,
obs columns, transforms, shards, bad arguments and devices."""
import math

import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp
import torch
from nvidia.dali import fn

import biodali.torch as bt
from biodali.gene_stats import highly_variable_genes, log1p_gene_stats
from conftest import HAS_GPU
from expression_utils import ref_gene_medians, ref_rank_tokens
from loader_utils import (N_CELLS, collect, read_oracle, rows_of, scanpy_log1p, write_anndata_store,
                          write_collection)

BATCH = 32


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_anndata_store(tmp_path_factory.mktemp("torch"))


@pytest.fixture(scope="module")
def oracle(store):
    return read_oracle(store)


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return write_collection(tmp_path_factory.mktemp("torch_collection"))


def gene_names(adata, step=7):
    """Every step-th gene, in reverse: output order must follow the list, not the store."""
    return list(adata.var_names[::step][::-1])


def loader(path, **kw):
    kw.setdefault("batch_size", BATCH)
    kw.setdefault("return_row_index", True)
    return bt.ExpressionLoader(path, **kw)


@pytest.mark.parametrize("kind", ["anndata", "collection"])
def test_log1p_dense_epochs_equal_scanpy(kind, store, oracle, collection):
    path = store if kind == "anndata" else collection
    adata = oracle if kind == "anndata" else read_oracle(collection)
    genes = gene_names(adata)
    columns = [adata.var_names.get_loc(g) for g in genes]
    ref = scanpy_log1p(adata.X)[:, columns]
    codes = adata.obs["cell_type"].cat.codes.to_numpy()
    with loader(path, genes=genes, obs_columns=["cell_type", "n_counts"]) as data:
        assert data.device == torch.device("cpu")  # device="auto" without a GPU
        epochs = collect(data, epochs=2)
    orders = []
    for batches in epochs:
        rows = rows_of(batches)
        assert sorted(rows) == list(range(adata.n_obs))  # every row once per epoch
        X = torch.cat([b["X"] for b in batches]).numpy()
        assert X.dtype == np.float32 and X.shape == (adata.n_obs, len(genes))
        np.testing.assert_allclose(X, ref[rows], rtol=1e-6, atol=0)
        cell_type = torch.cat([b["cell_type"] for b in batches]).numpy()
        assert cell_type.dtype == np.int32
        np.testing.assert_array_equal(cell_type, codes[rows])
        n_counts = torch.cat([b["n_counts"] for b in batches]).numpy()
        np.testing.assert_array_equal(n_counts, adata.obs["n_counts"].to_numpy()[rows])
        orders.append(rows)
    assert orders[0] != orders[1] and orders[0] != sorted(orders[0])  # reshuffled every epoch


def test_unshuffled_raw_counts_in_store_order(store, oracle):
    with loader(store, transform=None, shuffle=False) as data:
        batches = collect(data)[0]
    assert rows_of(batches) == list(range(N_CELLS))
    np.testing.assert_array_equal(torch.cat([b["X"] for b in batches]).numpy(), oracle.X.toarray())


@pytest.mark.parametrize("transform", [None, "log1p"])
@pytest.mark.parametrize("with_genes", [False, True])
def test_csr_output_over_an_epoch(store, oracle, transform, with_genes):
    genes = gene_names(oracle, step=3) if with_genes else None
    columns = [oracle.var_names.get_loc(g) for g in genes] if genes else list(range(oracle.n_vars))
    ref = (oracle.X.toarray() if transform is None else scanpy_log1p(oracle.X))[:, columns]
    with loader(store, genes=genes, transform=transform, output="csr") as data:
        batches = list(data)
        assert len(batches) == len(data)
    rows = []
    for batch in batches:
        X = batch["X"]
        assert X.layout == torch.sparse_csr and X.shape == (len(batch["row_index"]), len(columns))
        batch_rows = batch["row_index"].numpy()
        np.testing.assert_allclose(X.to_dense().numpy(), ref[batch_rows], rtol=1e-6, atol=0)
        stored_nnz = np.count_nonzero(ref[batch_rows], axis=1)
        np.testing.assert_array_equal(np.diff(X.crow_indices().numpy()), stored_nnz)
        rows += batch_rows.tolist()
    assert sorted(rows) == list(range(N_CELLS))  # the last batch's padding row cut off


def test_padded_output_is_the_stored_rows(store, oracle):
    X = sp.csr_matrix(oracle.X)
    with loader(store, transform=None, output="padded") as data:
        batches = collect(data)[0]
    for batch in batches:
        width = batch["values"].shape[1]
        assert batch["indices"].dtype == torch.int32 and batch["lengths"].dtype == torch.int32
        assert width == int(batch["lengths"].max())  # padded to the longest row of the batch
        for r, values, indices, length in zip(batch["row_index"], batch["values"], batch["indices"],
                                              batch["lengths"]):
            lo, hi = X.indptr[int(r)], X.indptr[int(r) + 1]
            assert int(length) == hi - lo
            np.testing.assert_array_equal(values[:length].numpy(), X.data[lo:hi])
            np.testing.assert_array_equal(indices[:length].numpy(), X.indices[lo:hi])
            assert not values[length:].any() and not indices[length:].any()


def test_log1p_scale_equals_scanpy_scale(store, oracle):
    genes = gene_names(oracle, step=2)
    columns = [oracle.var_names.get_loc(g) for g in genes]
    ref = sc.AnnData(scanpy_log1p(oracle.X)[:, columns])
    sc.pp.scale(ref)  # centres, divides by the ddof=1 std (0 -> 1)
    with loader(store, genes=genes, transform=bt.Log1pScale(max_cells=None)) as data:
        batches = collect(data)[0]
    got = torch.cat([b["X"] for b in batches]).numpy()
    np.testing.assert_allclose(got, ref.X[rows_of(batches)], rtol=1e-5, atol=1e-5)


def test_log1p_scale_with_given_statistics(store, oracle):
    columns = [3, 1, 4]
    mean, std = np.array([0.5, 1.0, -2.0], np.float32), np.array([2.0, 0.25, 1.0], np.float32)
    ref = (scanpy_log1p(oracle.X)[:, columns] - mean) / std
    with loader(store, genes=columns, transform=bt.Log1pScale(mean=mean, std=std)) as data:
        batch = next(iter(data))
    np.testing.assert_allclose(batch["X"].numpy(), ref[batch["row_index"].numpy()], rtol=1e-5, atol=1e-6)


def test_gene_stats_equal_numpy(store, oracle):
    dense = scanpy_log1p(oracle.X).astype(np.float64)
    stats = log1p_gene_stats(store)
    assert stats.num_cells == N_CELLS
    np.testing.assert_allclose(stats.mean, dense.mean(0), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(stats.var, dense.var(0, ddof=1), rtol=1e-5, atol=1e-9)
    top = highly_variable_genes(store, 10, max_cells=None)
    assert top == sorted(np.argsort(-dense.var(0, ddof=1), kind="stable")[:10].tolist())
    sample = log1p_gene_stats(store, max_cells=100, seed=1)
    assert sample.num_cells == 100 and not np.allclose(sample.mean, stats.mean)


def test_rank_tokens(store, oracle):
    X = sp.csr_matrix(oracle.X)
    medians = ref_gene_medians(X)
    spec = bt.RankTokens(max_length=24, gene_medians=medians, token_offset=2, pad_id=1)
    with loader(store, transform=spec) as data:
        batch = next(iter(data))
    assert set(batch) == {"tokens", "lengths", "row_index"}
    for r, tokens, length in zip(batch["row_index"], batch["tokens"], batch["lengths"]):
        lo, hi = X.indptr[int(r)], X.indptr[int(r) + 1]
        ref_tokens, ref_length = ref_rank_tokens(X.data[lo:hi], X.indices[lo:hi], medians, 24, 1, 2)
        np.testing.assert_array_equal(tokens.numpy(), ref_tokens)
        assert int(length) == ref_length


def test_callable_transform_edits_the_graph(store, oracle):
    E = fn.biodali.expression

    def doubled_and_counted(values, indices):
        return {"X": E.densify(values, indices, n_features=oracle.n_vars) * 2,
                "nnz": values.shape()[0]}

    with loader(store, transform=doubled_and_counted) as data:
        batch = next(iter(data))
    rows = batch["row_index"].numpy()
    np.testing.assert_array_equal(batch["X"].numpy(), 2 * oracle.X.toarray()[rows])
    np.testing.assert_array_equal(batch["nnz"].numpy(), np.diff(oracle.X.indptr)[rows])

    with loader(store, transform=lambda v, i: (v, i), output="csr", genes=[5, 0]) as data:
        X = next(iter(data))["X"]
    assert X.shape == (BATCH, 2)


@pytest.mark.parametrize("dtype, torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_half_precision_dense(store, oracle, dtype, torch_dtype):
    genes = list(range(0, 200, 5))
    with loader(store, dtype=dtype, genes=genes) as half, loader(store, genes=genes) as full:
        a, b = next(iter(half)), next(iter(full))  # same seed: the same cells
    assert a["X"].dtype == torch_dtype and torch.equal(a["row_index"], b["row_index"])
    # the float32 values rounded to nearest-even, as torch's own conversion does
    assert torch.equal(a["X"], b["X"].to(torch_dtype))
    ref = scanpy_log1p(oracle.X)[b["row_index"].numpy()][:, genes]
    np.testing.assert_allclose(b["X"].numpy(), ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("world_size", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_are_disjoint_covering_and_equal_length(store, world_size, drop_last):
    """Ranks built with explicit rank/world_size (the DDP run itself is test_torch_ddp.py)."""
    per_rank = []
    for rank in range(world_size):
        with loader(store, rank=rank, world_size=world_size, drop_last=drop_last) as data:
            per_rank.append((len(data), collect(data, epochs=3)))
    lengths = {n for n, _ in per_rank}
    assert len(lengths) == 1
    n_batches = lengths.pop()
    smallest = N_CELLS // world_size
    padded_shard = math.ceil(N_CELLS / world_size)
    assert n_batches == (smallest // BATCH if drop_last else math.ceil(padded_shard / BATCH))
    for epoch in range(3):
        parts = [rows_of(epochs[epoch]) for _, epochs in per_rank]
        assert all(len(epochs[epoch]) == n_batches for _, epochs in per_rank)
        flat = [r for part in parts for r in part]
        assert len(flat) == len(set(flat))  # disjoint, no row twice
        if drop_last:
            assert all(len(p) == n_batches * BATCH for p in parts)
        else:
            assert sorted(flat) == list(range(N_CELLS))  # covering, padding removed


def test_len_and_drop_last(store):
    with loader(store) as data:
        assert len(data) == -(-N_CELLS // BATCH) and data.num_rows == N_CELLS
        sizes = [len(b["row_index"]) for b in data]
        assert sizes == [BATCH] * (len(data) - 1) + [N_CELLS % BATCH]
    with loader(store, drop_last=True) as data:
        assert len(data) == N_CELLS // BATCH
        for _ in range(2):  # the dropped rows never leak into the next epoch
            rows = [r for b in data for r in b["row_index"].tolist()]
            assert len(rows) == len(data) * BATCH == len(set(rows))


def test_obs_categories_and_reserved_names(store, oracle):
    with loader(store, obs_columns=["cell_type"]) as data:
        assert data.obs_categories("cell_type") == list(oracle.obs["cell_type"].cat.categories)
        assert data.n_columns == oracle.n_vars
    with pytest.raises(ValueError, match="collide"):
        bt.ExpressionLoader(store, 8, obs_columns=["X"])


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(output="coo"), ValueError, "output must be"),
    (dict(transform="log2"), ValueError, "transform must be"),
    (dict(transform=3), TypeError, "transform must be"),
    (dict(transform="log1p+scale", output="csr"), ValueError, "dense"),
    (dict(transform="rank_tokens", output="csr"), ValueError, "csr"),
    (dict(dtype="int8"), ValueError, "dtype"),
    (dict(genes=["no-such-gene"]), ValueError, "not in the var index"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(rank=1), ValueError, "both rank and world_size"),
    (dict(rank=2, world_size=2), ValueError, "rank"),
    (dict(drop_last=True, batch_size=400), ValueError, "leaves no batch"),
    (dict(device="tpu"), ValueError, "device"),
    (dict(transform=bt.Log1pScale(mean=[0.0]), genes=[0]), ValueError, "both mean and std"),
])
def test_bad_arguments(store, kwargs, error, match):
    kwargs.setdefault("batch_size", 8)
    with pytest.raises(error, match=match):
        bt.ExpressionLoader(store, **kwargs)


@pytest.mark.skipif(HAS_GPU, reason="checks the CPU-only behaviour")
def test_cuda_without_a_gpu_is_a_clear_error(store):
    with pytest.raises(RuntimeError, match="no CUDA device"):
        bt.ExpressionLoader(store, 8, device="cuda")
    assert not bt.cuda_usable()


@pytest.mark.gpu
@pytest.mark.parametrize("output", ["dense", "csr", "padded"])
def test_gpu_batches_equal_cpu_batches(store, output):
    kw = dict(genes=list(range(0, 200, 3)), obs_columns=["cell_type"], output=output)
    with loader(store, device="cpu", **kw) as cpu, loader(store, device="cuda", **kw) as gpu:
        a, b = next(iter(cpu)), next(iter(gpu))
    for key in a:
        assert b[key].device.type == "cuda"
        x, y = a[key], b[key].cpu()
        if x.layout != torch.strided:
            x, y = x.to_dense(), y.to_dense()
        torch.testing.assert_close(y, x, rtol=1e-6, atol=1e-6)
