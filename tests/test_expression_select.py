"""fn.biodali.expression.select_genes and densify against anndata/scipy on the rows the reader
reports: exact values and indices, float16/bfloat16 rounding as numpy/torch do it, gene names
through the store's var index, and DALIGenericIterator on the dense output."""
import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from nvidia.dali import fn

import biodali.expression as bx
from expression_utils import (DENSE_DTYPES, GENE_SETS, awkward_floats, build, reader, read_through,
                              run_on)

E = fn.biodali.expression


def anndata_subset(store, genes):
    """adata[:, genes].X as a canonical CSR matrix (genes: positions or names)."""
    adata = ad.AnnData(X=store.X, var=pd.DataFrame(index=store.var_names))
    sub = sp.csr_matrix(adata[:, genes].X)
    sub.sort_indices()
    return sub


def check_selected(store, genes, got, ref_genes=None):
    sub = anndata_subset(store, genes if ref_genes is None else ref_genes)
    for row, values, _, out_values, out_indices in got:
        lo, hi = sub.indptr[row], sub.indptr[row + 1]
        assert out_values.dtype == values.dtype and out_indices.dtype == np.int32
        np.testing.assert_array_equal(out_indices, sub.indices[lo:hi], err_msg=f"row {row}")
        np.testing.assert_array_equal(out_values, sub.data[lo:hi], err_msg=f"row {row}")


@pytest.mark.parametrize("gene_set", list(GENE_SETS))
def test_select_genes_equals_anndata_subset(counts, gene_set):
    genes = GENE_SETS[gene_set](counts)
    got = read_through(counts, lambda v, i: E.select_genes(v, i, genes=genes))
    check_selected(counts, genes, got)


def test_select_genes_by_name(counts):
    genes = GENE_SETS["random_half"](counts)[:40]
    names = [counts.var_names[g] for g in genes]
    got = read_through(counts, lambda v, i: bx.select_genes(v, i, genes=names, path=counts.path))
    check_selected(counts, names, got)
    assert bx.gene_columns(names, counts.path) == genes


def test_select_genes_unsorted_row_comes_out_ordered_by_position():
    genes = [9, 4, 7, 0]  # position of column 9 is 0, of 4 is 1, ...
    values = [np.array([1, 2, 3, 4, 5], np.float32), np.array([8], np.float32)]
    indices = [np.array([7, 3, 0, 9, 4], np.int32), np.array([5], np.int32)]
    out_values, out_indices = run_on(lambda v, i: E.select_genes(v, i, genes=genes), values, indices)
    np.testing.assert_array_equal(out_indices[0], [0, 1, 2, 3])
    np.testing.assert_array_equal(out_values[0], [4, 5, 1, 3])
    assert out_values[1].shape == out_indices[1].shape == (0,)


@pytest.mark.parametrize("dtype", [np.int32, np.uint16, np.float64])
def test_select_genes_keeps_the_value_dtype(dtype):
    values = [np.array([3, 1, 2], dtype)]
    indices = [np.array([0, 5, 2], np.int32)]
    out_values, out_indices = run_on(lambda v, i: E.select_genes(v, i, genes=[2, 0]), values, indices)
    assert out_values[0].dtype == dtype
    np.testing.assert_array_equal(out_values[0], np.array([2, 3], dtype))
    np.testing.assert_array_equal(out_indices[0], [0, 1])


# --- densify ---------------------------------------------------------------------------------

def to_dense_bits(row, dtype):
    """The bits a float32 row has in `dtype`, by numpy (float16) and torch (bfloat16)."""
    row = np.asarray(row, dtype=np.float32)
    if dtype == "float32":
        return row.view(np.uint32)
    if dtype == "float16":
        return row.astype(np.float16).view(np.uint16)
    return torch.from_numpy(row.copy()).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def out_bits(out, dtype):
    expected = {"float32": np.float32, "float16": np.float16, "bfloat16": np.uint16}[dtype]
    assert out.dtype == expected
    return out.view(np.uint32 if dtype == "float32" else np.uint16)


@pytest.mark.parametrize("dtype", DENSE_DTYPES)
def test_densify_equals_toarray(counts, dtype):
    got = read_through(counts, lambda v, i: E.densify(v, i, n_features=counts.n_vars, dtype=dtype))
    dense = counts.X.toarray()
    for row, _, _, out in got:
        assert out.shape == (counts.n_vars,)
        np.testing.assert_array_equal(out_bits(out, dtype), to_dense_bits(dense[row], dtype), err_msg=f"row {row}")


@pytest.mark.parametrize("dtype", DENSE_DTYPES)
def test_densify_rounds_normalized_values_like_numpy_and_torch(counts, dtype):
    """Non-integer values (log-normalized counts) exercise the float16/bfloat16 rounding."""
    def transforms(v, i):
        n = E.normalize(v)
        return n, E.densify(n, i, n_features=counts.n_vars, dtype=dtype)

    for row, _, indices, normalized, out in read_through(counts, transforms):
        expected = np.zeros(counts.n_vars, np.float32)
        expected[indices] = normalized
        np.testing.assert_array_equal(out_bits(out, dtype), to_dense_bits(expected, dtype), err_msg=f"row {row}")


@pytest.mark.parametrize("dtype", DENSE_DTYPES)
def test_densify_rounding_of_awkward_values(dtype):
    values = awkward_floats()
    n = len(values)
    order = np.random.default_rng(1).permutation(n).astype(np.int32)  # unsorted columns
    (out,) = run_on(lambda v, i: E.densify(v, i, n_features=n, dtype=dtype), [values[order]], [order])
    np.testing.assert_array_equal(out_bits(out[0], dtype), to_dense_bits(values, dtype))


def test_densify_sums_repeated_columns_as_scipy_does():
    values = [np.array([1, 5, 2, 0.5], np.float32), np.array([], np.float32)]
    indices = [np.array([2, 0, 2, 2], np.int32), np.array([], np.int32)]
    (out,) = run_on(lambda v, i: E.densify(v, i, n_features=4), values, indices)
    ref = sp.csr_matrix((values[0], indices[0], [0, 4]), shape=(1, 4)).toarray()[0]
    np.testing.assert_array_equal(out[0], ref)
    np.testing.assert_array_equal(out[1], np.zeros(4, np.float32))


@pytest.mark.parametrize("dtype", DENSE_DTYPES)
@pytest.mark.parametrize("gene_set", ["common", "random_half", "all_reversed"])
def test_densify_selected_genes_equals_subset_toarray(counts, gene_set, dtype):
    genes = GENE_SETS[gene_set](counts)
    got = read_through(counts, lambda v, i: E.densify(v, i, n_features=counts.n_vars, genes=genes, dtype=dtype))
    dense = counts.X[:, genes].toarray()
    for row, _, _, out in got:
        assert out.shape == (len(genes),)
        np.testing.assert_array_equal(out_bits(out, dtype), to_dense_bits(dense[row], dtype))


def test_densify_genes_without_n_features(counts):
    genes = GENE_SETS["common"](counts)
    got = read_through(counts, lambda v, i: (E.densify(v, i, genes=genes),
                                             bx.densify(v, i, genes=genes)))
    dense = counts.X[:, genes].toarray()
    for row, _, _, out, wrapped in got:
        np.testing.assert_array_equal(out, dense[row])
        np.testing.assert_array_equal(wrapped, dense[row])


def test_densify_wrapper_reads_n_features_and_names_from_the_store(counts):
    names = [counts.var_names[g] for g in GENE_SETS["common"](counts)]
    got = read_through(counts, lambda v, i: (bx.densify(v, i, path=counts.path),
                                             bx.densify(v, i, path=counts.path, genes=names)))
    full, sub = counts.X.toarray(), anndata_subset(counts, names).toarray()
    for row, _, _, dense, selected in got:
        np.testing.assert_array_equal(dense, full[row])
        np.testing.assert_array_equal(selected, sub[row])
    assert bx.n_features(counts.path) == counts.n_vars


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_densify_feeds_dali_generic_iterator(counts, dtype):
    from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy

    def graph():
        v, i, row = reader(counts)
        return E.densify(E.normalize(v), i, n_features=counts.n_vars, dtype=dtype), row

    it = DALIGenericIterator(build(graph), ["x", "row"], reader_name="reader",
                             last_batch_policy=LastBatchPolicy.PARTIAL)
    got = read_through(counts, lambda v, i: E.densify(E.normalize(v), i, n_features=counts.n_vars, dtype=dtype))
    expected = {row: out for row, _, _, out in got}
    seen = 0
    for batch in it:
        x, rows = batch[0]["x"], batch[0]["row"]
        assert x.dtype == getattr(torch, dtype) and x.shape == (len(rows), counts.n_vars)
        for r, dense in zip(rows.tolist(), x.numpy()):
            np.testing.assert_array_equal(dense, expected[r])
        seen += len(rows)
    assert seen == counts.n_obs
