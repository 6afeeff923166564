"""annbatch DatasetCollection layout (zarr v3, sharded, uint16 indices, blosc-lz4): the reader
walks dataset_0, dataset_1, ... in order; every row equals anndata's reading of its dataset."""
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import anndata as ad
from biodali.synth import write_expression
from reader_utils import rows_of, run_reader


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    path = tmp_path_factory.mktemp("c") / "collection.zarr"
    write_expression(str(path), n_cells=2500, n_genes=3000, seed=5, layout="annbatch",
                     n_datasets=3, progress=False)
    return str(path)


def test_layout_is_annbatch(collection):
    root = zarr.open_group(collection, mode="r")
    assert root.attrs["encoding-type"] == "annbatch-preshuffled"
    indices = zarr.open_array(f"{collection}/dataset_0/X/indices", mode="r")
    assert indices.dtype == np.uint16
    assert indices.shards is not None


def test_rows_equal_anndata_across_datasets(collection):
    parts = [ad.read_zarr(f"{collection}/dataset_{i}") for i in range(3)]
    X = sp.vstack([sp.csr_matrix(p.X) for p in parts]).tocsr()
    codes = np.concatenate([p.obs["cell_type"].cat.codes.to_numpy() for p in parts])
    assert all(list(p.obs["cell_type"].cat.categories) == list(parts[0].obs["cell_type"].cat.categories)
               for p in parts)
    n = X.shape[0]
    batches = run_reader(path=collection, batch_size=512, obs_columns=["cell_type"],
                         return_row_index=True, random_shuffle=True, seed=3,
                         chunk_size=32, preload_chunks=8)
    rows = [int(r) for r in rows_of(batches, 3)]
    assert sorted(rows[:n]) == list(range(n))
    for row, v, i, c in zip(rows, rows_of(batches, 0), rows_of(batches, 1), rows_of(batches, 2)):
        lo, hi = X.indptr[row], X.indptr[row + 1]
        np.testing.assert_array_equal(v, X.data[lo:hi])
        np.testing.assert_array_equal(i, X.indices[lo:hi])
        assert i.dtype == np.int32
        assert c == codes[row]
