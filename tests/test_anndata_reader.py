"""fn.biodali.readers.anndata against anndata's own reading of the same stores."""
import numpy as np
import pytest
import scipy.sparse as sp

import anndata as ad
from reader_utils import make_adata, rows_of, run_reader, write_zarr


@pytest.fixture(scope="module")
def adata():
    return make_adata()


@pytest.fixture(scope="module", params=[2, 3], ids=["zarr2", "zarr3"])
def store(request, adata, tmp_path_factory):
    return write_zarr(adata, tmp_path_factory.mktemp("s") / "a.zarr", zarr_format=request.param)


def assert_rows_equal(expected_csr, rows, values, indices):
    for row, v, i in zip(rows, values, indices):
        start, end = expected_csr.indptr[row], expected_csr.indptr[row + 1]
        np.testing.assert_array_equal(v, expected_csr.data[start:end])
        np.testing.assert_array_equal(i, expected_csr.indices[start:end])
        assert i.dtype == np.int32


def test_sequential_rows_equal_anndata(store):
    oracle = ad.read_zarr(store)
    n = oracle.n_obs
    batches = run_reader(path=store, batch_size=32, obs_columns=["cell_type", "n_counts"],
                         return_row_index=True)
    rows = [int(r) for r in rows_of(batches, 4)][:n]
    assert rows == list(range(n))
    X = sp.csr_matrix(oracle.X)
    assert_rows_equal(X, rows, rows_of(batches, 0), rows_of(batches, 1))
    codes = np.array(rows_of(batches, 2)[:n])
    np.testing.assert_array_equal(codes, oracle.obs["cell_type"].cat.codes.to_numpy())
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(np.array(rows_of(batches, 3)[:n]), oracle.obs["n_counts"].to_numpy())


@pytest.mark.parametrize("element", ["layers/counts", "obsm/X_pca"])
def test_layers_and_obsm(store, element):
    oracle = ad.read_zarr(store)
    batches = run_reader(path=store, array=element, batch_size=50, return_row_index=True)
    rows = [int(r) for r in rows_of(batches, -1)]
    if element.startswith("obsm"):
        expected = oracle.obsm["X_pca"]
        for row, got in zip(rows, rows_of(batches, 0)):
            np.testing.assert_array_equal(got, expected[row])
    else:
        X = sp.csr_matrix(oracle.layers["counts"])
        assert_rows_equal(X, rows, rows_of(batches, 0), rows_of(batches, 1))


def test_dtype_cast(store):
    from nvidia.dali import types

    X = sp.csr_matrix(ad.read_zarr(store).X)
    batches = run_reader(path=store, batch_size=40, dtype=types.FLOAT64, return_row_index=True)
    for row, v in zip(rows_of(batches, 2), rows_of(batches, 0)):
        assert v.dtype == np.float64
        r = int(row)
        np.testing.assert_array_equal(v, X.data[X.indptr[r]:X.indptr[r + 1]].astype(np.float64))


def test_concatenation_of_stores(adata, tmp_path):
    a = write_zarr(adata[:120].copy(), tmp_path / "a.zarr", 2)
    b = write_zarr(adata[120:].copy(), tmp_path / "b.zarr", 3)
    batches = run_reader(path=[a, b], batch_size=64, return_row_index=True, obs_columns=["cell_type"])
    n = adata.n_obs
    rows = [int(r) for r in rows_of(batches, 3)][:n]
    assert rows == list(range(n))
    assert_rows_equal(sp.csr_matrix(adata.X), rows, rows_of(batches, 0), rows_of(batches, 1))
    np.testing.assert_array_equal(np.array(rows_of(batches, 2)[:n]), adata.obs["cell_type"].cat.codes)


def test_categories_differing_between_stores_are_unified(adata, tmp_path):
    import pandas as pd

    from biodali.stores import obs_categories

    a_data, b_data = adata[:100].copy(), adata[100:].copy()
    a_data.obs["cell_type"] = pd.Categorical(a_data.obs["cell_type"].astype(str),
                                             categories=["T", "B", "mono", "NK"])
    b_data.obs["cell_type"] = pd.Categorical(b_data.obs["cell_type"].astype(str).replace("NK", "DC"),
                                             categories=["DC", "mono", "T", "B"])
    a = write_zarr(a_data, tmp_path / "a.zarr", 3)
    b = write_zarr(b_data, tmp_path / "b.zarr", 2)
    union = obs_categories([a, b], "cell_type")
    assert union == ["T", "B", "mono", "NK", "DC"]
    labels = list(a_data.obs["cell_type"].astype(str)) + list(b_data.obs["cell_type"].astype(str))
    batches = run_reader(path=[a, b], batch_size=64, obs_columns=["cell_type"], return_row_index=True)
    for row, code in zip(rows_of(batches, 3), rows_of(batches, 2)):
        assert union[int(code)] == labels[int(row)]


def test_csr_arrays_of_a_batch_equal_anndata_rows(store):
    """biodali.batch.csr_arrays / csr_batch: one batch as zero-copy CSR arrays, with the row
    lengths from the TensorList or from a `values.shape()` output."""
    from nvidia.dali import fn, pipeline_def, types

    from biodali.batch import csr_arrays, csr_batch

    oracle = sp.csr_matrix(ad.read_zarr(store).X)

    @pipeline_def(batch_size=40, num_threads=2, device_id=None)
    def pipe():
        values, indices, row = fn.biodali.readers.anndata(
            path=store, random_shuffle=True, seed=3, chunk_size=8, preload_chunks=4,
            return_row_index=True)
        return values, indices, row, values.shape(dtype=types.INT64)

    p = pipe()
    p.build()
    for _ in range(3):
        values, indices, row, lengths = p.run()
        rows = np.asarray(row.as_tensor())
        expected = oracle[rows]
        for given in (None, lengths, np.asarray(lengths.as_tensor()).ravel()):
            data, cols, indptr = csr_arrays(values, indices, given)
            np.testing.assert_array_equal(indptr, expected.indptr)
            np.testing.assert_array_equal(data, expected.data)
            np.testing.assert_array_equal(cols, expected.indices)
        assert (csr_batch(values, indices, oracle.shape[1]) != expected).nnz == 0
    with pytest.raises(ValueError, match="rows"):
        csr_arrays(values, row)
    with pytest.raises(ValueError, match="lengths holds 39 values for 40 rows"):
        csr_arrays(values, indices, np.asarray(lengths.as_tensor()).ravel()[:39])
