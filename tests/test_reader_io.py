"""The reader through the I/O layer: how reads are scheduled (requests in flight, the
in-flight cap, mapping or reading local files) never changes what it yields; a pipeline
stopped mid-window stops its reads."""
import os
import threading

import numpy as np
import pytest
import scipy.sparse as sp

import anndata as ad
from biodali.synth import write_expression
from reader_utils import make_adata, run_reader, write_zarr

IO_SETTINGS = [
    dict(io_depth=1, io_max_in_flight_mb=1),      # one request at a time, almost no read-ahead
    dict(io_depth=64, io_max_in_flight_mb=1 << 20),  # everything in flight at once
]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    path = tmp_path_factory.mktemp("io") / "c.zarr"
    write_expression(path, 3000, seed=3, layout="annbatch", n_datasets=2, progress=False)
    return str(path)


@pytest.fixture(scope="module")
def dense_store(tmp_path_factory):
    adata = make_adata(n_obs=400)
    return adata, write_zarr(adata, tmp_path_factory.mktemp("io") / "d.zarr", zarr_format=2)


def _stream(mode, **kwargs):
    old = os.environ.get("BIODALI_IO_MODE")
    os.environ["BIODALI_IO_MODE"] = mode
    try:
        return run_reader(**kwargs)
    finally:
        if old is None:
            del os.environ["BIODALI_IO_MODE"]
        else:
            os.environ["BIODALI_IO_MODE"] = old


def _assert_same(a, b):
    assert len(a) == len(b)
    for batch_a, batch_b in zip(a, b):
        for out_a, out_b in zip(batch_a, batch_b):
            assert len(out_a) == len(out_b)
            for x, y in zip(out_a, out_b):
                assert x.dtype == y.dtype
                np.testing.assert_array_equal(x, y)


def test_io_settings_do_not_change_the_stream(collection):
    common = dict(path=collection, random_shuffle=True, seed=7, chunk_size=64, preload_chunks=4,
                  return_row_index=True, batch_size=100, epochs=2)
    reference = _stream("map", **common, **IO_SETTINGS[0])
    for mode in ("map", "read", "lazy"):
        for setting in IO_SETTINGS:
            _assert_same(reference, _stream(mode, **common, **setting))
    # and the rows are anndata's
    oracles = [sp.csr_matrix(ad.read_zarr(f"{collection}/dataset_{k}").X) for k in range(2)]
    oracle = sp.vstack(oracles).tocsr()
    for batch in reference:
        for values, indices, row in zip(*batch):
            r = int(row)
            np.testing.assert_array_equal(values, oracle.data[oracle.indptr[r]:oracle.indptr[r + 1]])
            np.testing.assert_array_equal(indices, oracle.indices[oracle.indptr[r]:oracle.indptr[r + 1]])


def test_dense_rows_through_every_io_setting(dense_store):
    adata, path = dense_store
    common = dict(path=path, array="obsm/X_pca", random_shuffle=True, seed=2, chunk_size=16,
                  preload_chunks=3, return_row_index=True, batch_size=64, epochs=1)
    for mode in ("map", "read"):
        for setting in IO_SETTINGS:
            batches = _stream(mode, **common, **setting)
            for rows, index in zip((b[0] for b in batches), (b[1] for b in batches)):
                for row, r in zip(rows, index):
                    np.testing.assert_array_equal(row, adata.obsm["X_pca"][int(r)])


def test_pipeline_stopped_mid_window_stops_its_reads(collection):
    """One batch of a large window, then the pipeline is dropped while the window's and the
    next one's reads are queued behind a one-request scheduler: closing must not hang."""
    batches, pipe = run_reader(path=collection, random_shuffle=True, seed=1, chunk_size=256,
                               preload_chunks=8, batch_size=32, num_batches=1, return_pipe=True,
                               io_depth=1, io_max_in_flight_mb=1)
    assert len(batches[0][0]) == 32
    done = threading.Event()

    def close():
        nonlocal pipe
        del pipe
        import gc
        gc.collect()
        done.set()

    thread = threading.Thread(target=close, daemon=True)
    thread.start()
    assert done.wait(30), "dropping the pipeline hung"


@pytest.mark.parametrize("arg, value, message", [
    ("io_depth", 0, "io_depth must be positive"),
    ("io_max_in_flight_mb", 0, "io_max_in_flight_mb must be positive"),
])
def test_bad_io_arguments_are_named(collection, arg, value, message):
    with pytest.raises(Exception, match=message):
        run_reader(path=collection, num_batches=1, **{arg: value})


def test_bad_io_mode_environment_is_named(collection):
    with pytest.raises(Exception, match="BIODALI_IO_MODE is 'fast'; expected map, read or lazy"):
        _stream("fast", path=collection, num_batches=1)


def _drop_page_cache(root):
    for dirpath, _, names in os.walk(root):
        for name in names:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fdatasync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


@pytest.mark.parametrize("chunk_size", [8, 24])
def test_cold_partial_chunk_reads_equal_anndata(collection, chunk_size):
    """Blocks smaller than an inner chunk decode part of it; from a cold page cache the I/O
    layer then reads only the blosc frame's header, block table and the blocks needed. Every
    row must still be anndata's, in every I/O mode."""
    oracle = sp.vstack([sp.csr_matrix(ad.read_zarr(f"{collection}/dataset_{k}").X)
                        for k in range(2)]).tocsr()
    common = dict(path=collection, random_shuffle=True, seed=11, chunk_size=chunk_size,
                  preload_chunks=16, return_row_index=True, batch_size=128, num_batches=8)
    streams = []
    for mode in ("map", "read"):
        _drop_page_cache(collection)
        streams.append(_stream(mode, **common))
    _assert_same(*streams)
    for batch in streams[0]:
        for values, indices, row in zip(*batch):
            r = int(row)
            np.testing.assert_array_equal(values, oracle.data[oracle.indptr[r]:oracle.indptr[r + 1]])
            np.testing.assert_array_equal(indices, oracle.indices[oracle.indptr[r]:oracle.indptr[r + 1]])
