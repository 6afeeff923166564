"""Bad input gives a Python exception naming the file and the problem, never a crash or hang."""
import os
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import anndata as ad
from reader_utils import make_adata, run_reader, write_sharded, write_zarr


@pytest.fixture
def adata():
    return make_adata(n_obs=120, n_vars=30, with_dense=False)


def read_all(path, **kw):
    return run_reader(path=str(path), batch_size=64, num_batches=3, **kw)


def expect_error(match, path, **kw):
    with pytest.raises(Exception, match=match):
        read_all(path, **kw)


def chunk_files(array_dir):
    return sorted(p for p in Path(array_dir).rglob("*")
                  if p.is_file() and not p.name.startswith((".z", "zarr.json")))


def test_missing_path(tmp_path):
    expect_error(r"nope\.zarr.*no such file", tmp_path / "nope.zarr")


def test_not_an_anndata_store(tmp_path):
    g = zarr.open_group(tmp_path / "plain.zarr", mode="w")
    g.create_array("X", shape=(4, 4), dtype="f4")
    expect_error(r"plain\.zarr.*not an AnnData store", tmp_path / "plain.zarr")


def test_csc_is_rejected_with_advice(adata, tmp_path):
    adata.X = sp.csc_matrix(adata.X)
    path = write_zarr(adata, tmp_path / "csc.zarr")
    expect_error(r"csc\.zarr/X.*CSC.*convert", path)


def test_obs_column_missing(adata, tmp_path):
    path = write_zarr(adata, tmp_path / "a.zarr")
    expect_error(r"a\.zarr/obs.*'nope' not found", path, obs_columns=["nope"])


def test_unsupported_codec(adata, tmp_path):
    path = write_zarr(adata, tmp_path / "a.zarr", zarr_format=2)
    data = np.asarray(adata.X.data)
    z = zarr.create_array(store=f"{path}/X/data", shape=data.shape, dtype=data.dtype, chunks=(500,),
                          compressors=numcodecs.LZMA(), zarr_format=2, overwrite=True)
    z[:] = data
    expect_error(r"X/data.*lzma", path)


def test_unsupported_dtype(adata, tmp_path):
    adata.obsm["c"] = np.ones((adata.n_obs, 2), dtype=np.complex64)
    path = write_zarr(adata, tmp_path / "a.zarr")
    expect_error(r"obsm/c.*complex", path, array="obsm/c")


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_truncated_chunk(adata, tmp_path, zarr_format):
    path = write_zarr(adata, tmp_path / "a.zarr", zarr_format)
    chunk = chunk_files(f"{path}/X/data")[0]
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    expect_error(r"X/data.*(truncated|corrupt|size)", path)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_corrupt_compressed_bytes(adata, tmp_path, zarr_format):
    path = write_zarr(adata, tmp_path / "a.zarr", zarr_format)
    chunk = chunk_files(f"{path}/X/data")[0]
    raw = bytearray(chunk.read_bytes())
    for i in range(len(raw) // 3, len(raw) - 8):
        raw[i] ^= 0x5A
    chunk.write_bytes(bytes(raw))
    expect_error(r"X/data", path)


def test_truncated_shard(adata, tmp_path):
    path = write_sharded(adata, tmp_path / "s.zarr")
    shard = chunk_files(f"{path}/X/data")[0]
    shard.write_bytes(shard.read_bytes()[:-40])
    expect_error(r"X/data.*(truncated|checksum|index|size)", path)


def test_crc32c_mismatch(adata, tmp_path):
    path = write_sharded(adata, tmp_path / "s.zarr")
    shard = chunk_files(f"{path}/X/indices")[0]
    raw = bytearray(shard.read_bytes())
    raw[-6] ^= 0xFF  # inside the shard index, which ends with its crc32c
    shard.write_bytes(bytes(raw))
    expect_error(r"X/indices.*checksum", path)


def overwrite(path, name, values):
    z = zarr.open_array(f"{path}/{name}", mode="r+")
    z[:] = values


def test_indptr_not_monotonic(adata, tmp_path):
    path = write_zarr(adata, tmp_path / "a.zarr")
    indptr = adata.X.indptr.copy()
    indptr[10], indptr[11] = indptr[11] + 5, indptr[10]
    overwrite(path, "X/indptr", indptr)
    expect_error(r"X/indptr.*not monotonic", path)


def test_indptr_past_end_of_data(adata, tmp_path):
    path = write_zarr(adata, tmp_path / "a.zarr")
    indptr = adata.X.indptr.copy()
    indptr[-1] += 10
    overwrite(path, "X/indptr", indptr)
    expect_error(r"X/indptr.*past the end", path)


def test_indices_out_of_range(adata, tmp_path):
    path = write_zarr(adata, tmp_path / "a.zarr")
    indices = adata.X.indices.copy()
    indices[7] = adata.n_vars + 3
    overwrite(path, "X/indices", indices)
    expect_error(r"X/indices.*out of range", path)


@pytest.mark.parametrize("where", ["first", "middle", "last"])
def test_uint16_indices_out_of_range(adata, tmp_path, where):
    """annbatch's uint16 indices are range-checked while they are widened to int32."""
    path = write_zarr(adata, tmp_path / "a.zarr")
    indices = adata.X.indices.astype(np.uint16)
    bad = {"first": 0, "middle": len(indices) // 2 + 3, "last": len(indices) - 1}[where]
    indices[bad] = adata.n_vars + 3
    chunks = zarr.open_array(f"{path}/X/indices", mode="r").chunks
    zarr.create_array(f"{path}/X/indices", data=indices, chunks=chunks, overwrite=True)
    expect_error(rf"X/indices.*column index {adata.n_vars + 3} at element {bad} is out of range "
                 rf"for {adata.n_vars} columns", path)


def test_stores_disagree_on_columns(adata, tmp_path):
    a = write_zarr(adata, tmp_path / "a.zarr")
    b = write_zarr(adata[:, :20].copy(), tmp_path / "b.zarr")
    with pytest.raises(Exception, match=r"b\.zarr/X.*20.*a\.zarr/X.*30"):
        run_reader(path=[a, b], batch_size=8, num_batches=1)


def test_shard_truncated_while_reading(adata, tmp_path):
    """Inner chunks are decoded from mapped shard pages: a shard file that shrinks after the
    reader opened it must raise (naming it), not SIGBUS."""
    from nvidia.dali import fn, pipeline_def

    path = write_sharded(adata, tmp_path / "a.zarr")
    shard = chunk_files(f"{path}/X/data")[0]

    @pipeline_def(batch_size=16, num_threads=2, device_id=None, prefetch_queue_depth=1)
    def pipe():
        values, indices = fn.biodali.readers.anndata(path=path, chunk_size=8, preload_chunks=1,
                                                     prefetch_windows=1)
        return values, indices

    p = pipe()
    p.build()
    p.run()
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    with pytest.raises(Exception, match=r"X/data/c.*ended at \d+ bytes.*truncated"):
        for _ in range(4 * adata.n_obs // 16):  # two epochs: the stream must re-read the shard
            p.run()
