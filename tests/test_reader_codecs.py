"""Every row the reader yields equals anndata's, for stores written with each codec zarr-python
and anndata use (the array layer is tested codec by codec in test_zarr_arrays.py)."""
import numcodecs
import numpy as np
import pytest
import scipy.sparse as sp
import zarr
import zarr.codecs as zc

import anndata as ad
from anndata.io import write_elem
from reader_utils import make_adata, rows_of, run_reader, write_sharded

V2_CODECS = {
    "blosc-lz4-shuffle": numcodecs.Blosc("lz4", 5, numcodecs.Blosc.SHUFFLE),
    "blosc-zstd-bitshuffle": numcodecs.Blosc("zstd", 3, numcodecs.Blosc.BITSHUFFLE),
    "blosc-blosclz-noshuffle": numcodecs.Blosc("blosclz", 5, numcodecs.Blosc.NOSHUFFLE),
    "zstd": numcodecs.Zstd(3),
    "zlib": numcodecs.Zlib(4),
    "gzip": numcodecs.GZip(4),
    "none": None,
}
V3_CODECS = {
    "blosc-lz4hc": [zc.BloscCodec(cname="lz4hc", clevel=5, shuffle="shuffle")],
    "blosc-zlib": [zc.BloscCodec(cname="zlib", clevel=5, shuffle="bitshuffle")],
    "zstd": [zc.ZstdCodec(level=0)],
    "gzip": [zc.GzipCodec(level=5)],
    "zstd+crc32c": [zc.ZstdCodec(level=1), zc.Crc32cCodec()],
    "none": [],
}


@pytest.fixture(scope="module")
def adata():
    a = make_adata(n_obs=257, n_vars=33, seed=3, with_dense=False)
    a.X.indices = a.X.indices.astype(np.int64)  # also exercises int64 indices
    return a


def write_with(adata, path, zarr_format, **dataset_kwargs):
    g = zarr.open_group(path, mode="w", zarr_format=zarr_format)
    write_elem(g, "/", adata, dataset_kwargs=dataset_kwargs)
    return str(path)


def check_store(path):
    oracle = ad.read_zarr(path)
    X = sp.csr_matrix(oracle.X)
    batches = run_reader(path=path, batch_size=64, return_row_index=True, obs_columns=["n_counts"],
                         random_shuffle=True, seed=1, chunk_size=16, preload_chunks=3)
    rows = [int(r) for r in rows_of(batches, 3)]
    assert sorted(rows[: oracle.n_obs]) == list(range(oracle.n_obs))
    for row, v, i, c in zip(rows, rows_of(batches, 0), rows_of(batches, 1), rows_of(batches, 2)):
        lo, hi = X.indptr[row], X.indptr[row + 1]
        np.testing.assert_array_equal(v, X.data[lo:hi])
        np.testing.assert_array_equal(i, X.indices[lo:hi])
        assert c == oracle.obs["n_counts"].iloc[row]


@pytest.mark.parametrize("codec", V2_CODECS, ids=list(V2_CODECS))
def test_zarr2_codecs(adata, tmp_path, codec):
    check_store(write_with(adata, tmp_path / "a.zarr", 2, compressors=V2_CODECS[codec], chunks=(97,)))


@pytest.mark.parametrize("codec", V3_CODECS, ids=list(V3_CODECS))
def test_zarr3_codecs(adata, tmp_path, codec):
    check_store(write_with(adata, tmp_path / "a.zarr", 3, compressors=V3_CODECS[codec], chunks=(97,)))


def test_zarr3_big_endian(adata, tmp_path):
    path = write_with(adata, tmp_path / "a.zarr", 3)
    for name, values in (("data", adata.X.data), ("indices", adata.X.indices)):
        z = zarr.create_array(store=f"{path}/X/{name}", shape=values.shape, dtype=values.dtype,
                              chunks=(97,), serializer=zc.BytesCodec(endian="big"),
                              compressors=[zc.ZstdCodec(level=1)], overwrite=True, zarr_format=3)
        z[:] = values
    check_store(path)


@pytest.mark.parametrize("index_location", ["end", "start"])
def test_sharded(adata, tmp_path, index_location):
    path = write_with(adata, tmp_path / "a.zarr", 3, chunks=(64,), shards=(256,),
                      compressors=[zc.BloscCodec(cname="lz4", clevel=3, shuffle="shuffle")])
    if index_location == "start":
        # rewrite X/data with the shard index before the chunks
        data = np.asarray(adata.X.data)
        sharding = zc.ShardingCodec(chunk_shape=(64,), index_location="start",
                                    codecs=[zc.BytesCodec(), zc.ZstdCodec(level=1)])
        z = zarr.create_array(store=f"{path}/X/data", shape=data.shape, dtype=data.dtype,
                              chunks=(256,), serializer=sharding, compressors=None,
                              overwrite=True, zarr_format=3)
        z[:] = data
        assert z.metadata.to_dict()["codecs"][0]["configuration"]["index_location"] == "start"
    check_store(path)


def test_anndata_auto_sharded(adata, tmp_path):
    check_store(write_sharded(adata, tmp_path / "s.zarr"))
