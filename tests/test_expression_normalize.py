"""fn.biodali.expression.normalize against scanpy (normalize_total + log1p) on the rows the reader
reports (return_row_index), for float and integer inputs; all-zero rows give zeros."""
import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from nvidia.dali import fn, types

from expression_utils import read_through, run_on

E = fn.biodali.expression


def scanpy_normalized(X, target_sum, log1p):
    """The dense matrix scanpy makes of X (float32, as anndata holds it)."""
    adata = ad.AnnData(X.astype(np.float32).copy())
    sc.pp.normalize_total(adata, target_sum=target_sum)
    if log1p:
        sc.pp.log1p(adata)
    return adata.X.toarray()


def check_against_scanpy(store, got, target_sum, log1p):
    ref = scanpy_normalized(store.X, target_sum, log1p)
    rows = set()
    for row, values, indices, out in got:
        assert out.dtype == np.float32 and out.shape == values.shape
        np.testing.assert_allclose(out, ref[row, indices], rtol=1e-6, atol=0, err_msg=f"row {row}")
        rows.add(row)
    assert rows == set(range(store.n_obs))


@pytest.mark.parametrize("target_sum, log1p", [(1e4, True), (1e6, True), (1.0, True),
                                               (1e4, False), (123.5, False)])
def test_normalize_equals_scanpy(counts, target_sum, log1p):
    got = read_through(counts, lambda v, i: E.normalize(v, target_sum=target_sum, log1p=log1p))
    check_against_scanpy(counts, got, target_sum, log1p)


def test_normalize_defaults_are_1e4_and_log1p(counts):
    got = read_through(counts, lambda v, i: (E.normalize(v), E.normalize(v, target_sum=1e4, log1p=True)))
    for _, _, _, default, explicit in got:
        np.testing.assert_array_equal(default, explicit)
    check_against_scanpy(counts, [s[:4] for s in got], 1e4, True)


@pytest.mark.parametrize("dtype", [types.INT32, types.UINT16, types.INT64, types.UINT8, types.FLOAT64])
def test_normalize_integer_and_double_inputs(counts, dtype):
    """The reader casts the float32 counts; the output is float32 and still equals scanpy."""
    got = read_through(counts, lambda v, i: E.normalize(v), reader_kw=dict(dtype=dtype))
    assert got[0][1].dtype == np.dtype(types.to_numpy_type(dtype))
    check_against_scanpy(counts, got, 1e4, True)


def test_normalize_int32_store(int_counts):
    got = read_through(int_counts, lambda v, i: E.normalize(v, target_sum=1e3))
    assert got[0][1].dtype == np.int32
    check_against_scanpy(int_counts, got, 1e3, True)


def test_all_zero_rows_normalize_to_zeros(counts):
    got = read_through(counts, lambda v, i: E.normalize(v))
    empty = {row: out for row, v, _, out in got if len(v) == 0}
    assert set(empty) >= {5, 100}  # the store's all-zero rows come out as empty rows
    assert all(out.shape == (0,) and out.dtype == np.float32 for out in empty.values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.uint8])
def test_explicit_zeros_normalize_to_zeros_without_nan(dtype):
    batch = [np.zeros(4, dtype), np.array([0, 3, 0, 1], dtype), np.zeros(0, dtype), np.array([7], dtype)]
    (out,) = run_on(lambda v: E.normalize(v, target_sum=100.0), batch)
    np.testing.assert_array_equal(out[0], np.zeros(4, np.float32))
    np.testing.assert_allclose(out[1], np.log1p([0, 75, 0, 25]).astype(np.float32), rtol=1e-6)
    assert out[2].shape == (0,)
    np.testing.assert_allclose(out[3], [np.log1p(100.0)], rtol=1e-6)
    assert all(np.isfinite(o).all() for o in out)


def test_normalize_after_select_genes_uses_the_subset_total(counts):
    """Normalizing selected genes scales by the total of the selected values only."""
    genes = list(range(0, counts.n_vars, 3))
    got = read_through(counts, lambda v, i: E.normalize(E.select_genes(v, i, genes=genes)[0], log1p=False))
    X = counts.X[:, genes].toarray().astype(np.float64)
    for row, _, _, out in got:
        nonzero = X[row][X[row] != 0]
        expected = nonzero / nonzero.sum() * 1e4 if len(nonzero) else nonzero
        np.testing.assert_allclose(out, expected, rtol=1e-6)


@pytest.mark.parametrize("target_sum, log1p", [(1e4, True), (1e2, False)])  # float16 tops at 65504
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_normalize_densify_equals_scanpy_subset(counts, target_sum, log1p, dtype):
    """The fused operator: scanpy normalize_total (+ log1p) on all genes, then the gene subset."""
    import torch

    rng = np.random.default_rng(5)
    genes = [int(g) for g in rng.choice(counts.n_vars, 60, replace=False)]
    got = read_through(counts, lambda v, i: E.normalize_densify(
        v, i, genes=genes, n_features=counts.n_vars, target_sum=target_sum, log1p=log1p, dtype=dtype))
    ref = scanpy_normalized(counts.X, target_sum, log1p)[:, genes]
    for row, _, _, out in got:
        assert out.shape == (len(genes),)
        if dtype == "float32":
            np.testing.assert_allclose(out, ref[row], rtol=1e-6, atol=0, err_msg=f"row {row}")
        elif dtype == "float16":
            np.testing.assert_allclose(out.astype(np.float32), ref[row], rtol=2 ** -10, atol=0)
        else:
            back = torch.from_numpy(out.view(np.int16)).view(torch.bfloat16).float().numpy()
            np.testing.assert_allclose(back, ref[row], rtol=2 ** -7, atol=0)


def test_normalize_densify_equals_the_three_operators(counts):
    genes = [7, 3, 250, 11, 399, 0]
    got = read_through(counts, lambda v, i: (
        E.normalize_densify(v, i, genes=genes, n_features=counts.n_vars),
        E.densify(*E.select_genes(E.normalize(v), i, genes=genes), n_features=len(genes))))
    for _, _, _, fused, chained in got:
        np.testing.assert_array_equal(fused, chained)


def test_normalize_densify_rejects_negative_values():
    values = [np.array([1, -2], np.float32)]
    indices = [np.array([0, 1], np.int32)]
    with pytest.raises(RuntimeError, match="normalize needs non-negative values"):
        run_on(lambda v, i: E.normalize_densify(v, i, n_features=4), values, indices)


def test_per_gene_scaling_is_dalis_own_normalize(counts):
    """log1p+scale: normalize_densify, then fn.normalize with per-gene mean/std constants (the
    documented recipe; no biodali operator) equals the z-scores numpy computes."""
    genes = list(range(0, counts.n_vars, 7))
    ref = scanpy_normalized(counts.X, 1e4, True)[:, genes]
    mean, std = ref.mean(axis=0), ref.std(axis=0) + 1e-3
    got = read_through(counts, lambda v, i: fn.normalize(
        E.normalize_densify(v, i, genes=genes, n_features=counts.n_vars),
        mean=types.Constant(mean.astype(np.float32)), stddev=types.Constant(std.astype(np.float32))))
    for row, _, _, out in got:
        np.testing.assert_allclose(out, (ref[row] - mean) / std, rtol=1e-5, atol=1e-5)
