"""The reader's outputs share the memory of its windows (no copy) except for the batch that
ends a window, batches across windows and padded ones, which are copied. Whichever way a
batch is made, every row must equal anndata's, and outputs the user keeps must stay intact
while the reader recycles its windows."""
import gc
import os
import re

import numpy as np
import pytest
import scipy.sparse as sp

import anndata as ad
from nvidia.dali import fn, pipeline_def, types
from reader_utils import make_adata, write_zarr

CHUNK, PRELOAD = 8, 4  # windows of 32 rows


@pytest.fixture(scope="module")
def adata():
    return make_adata(n_obs=300)


@pytest.fixture(scope="module")
def store(adata, tmp_path_factory):
    return write_zarr(adata, tmp_path_factory.mktemp("w") / "a.zarr", zarr_format=3)


def reader_pipe(batch_size, **kwargs):
    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=None, prefetch_queue_depth=1)
    def pipe():
        return tuple(fn.biodali.readers.anndata(
            random_shuffle=True, seed=5, chunk_size=CHUNK, preload_chunks=PRELOAD,
            return_row_index=True, name="reader", **kwargs))

    p = pipe()
    p.build()
    return p


def check_csr_batch(oracle, outputs, value_dtype=np.float32):
    values, indices, row = outputs
    for v, i, r in zip(values, indices, row):
        r = int(np.array(r))
        start, end = oracle.indptr[r], oracle.indptr[r + 1]
        v, i = np.array(v), np.array(i)
        assert v.dtype == value_dtype and i.dtype == np.int32
        np.testing.assert_array_equal(v, oracle.data[start:end].astype(value_dtype))
        np.testing.assert_array_equal(i, oracle.indices[start:end])


# 8: four batches per window (three shared, the last copied); 32: one batch per window
# (always the window's last); 12 and 50: batches across window boundaries.
@pytest.mark.parametrize("batch_size", [8, 12, 32, 50])
def test_shuffled_rows_equal_anndata_for_any_batch_size(store, batch_size):
    oracle = sp.csr_matrix(ad.read_zarr(store).X)
    p = reader_pipe(batch_size, path=store)
    seen = []
    for _ in range(2 * -(-oracle.shape[0] // batch_size)):  # two epochs
        outputs = p.run()
        check_csr_batch(oracle, outputs)
        seen += [int(np.array(r)) for r in outputs[2]]
    n = oracle.shape[0]
    assert sorted(seen[:n]) == list(range(n))


def test_cast_obs_columns_and_dense_rows_through_both_paths(store):
    oracle = ad.read_zarr(store)
    X = sp.csr_matrix(oracle.X)
    p = reader_pipe(12, path=store, dtype=types.FLOAT64, obs_columns=["cell_type", "n_counts"])
    codes = oracle.obs["cell_type"].cat.codes.to_numpy()
    for _ in range(30):
        values, indices, cell_type, n_counts, row = p.run()
        check_csr_batch(X, (values, indices, row), np.float64)
        rows = np.array(row.as_tensor())
        np.testing.assert_array_equal(np.array(cell_type.as_tensor()), codes[rows])
        np.testing.assert_array_equal(np.array(n_counts.as_tensor()), oracle.obs["n_counts"].to_numpy()[rows])

    dense = reader_pipe(12, path=store, array="obsm/X_pca")
    for _ in range(30):
        X_pca, row = dense.run()
        np.testing.assert_array_equal(np.array(X_pca.as_tensor()), oracle.obsm["X_pca"][np.array(row.as_tensor())])


def test_batches_inside_a_window_share_its_memory(store):
    """Zero copy: consecutive batches of one window lie back to back in its buffers."""
    p = reader_pipe(8, path=store)
    p.run()  # the first batch of the first window
    values = [p.run()[0] for _ in range(2)]  # its second and third batches, both shared
    first, second = values
    assert second.data_ptr() == first.data_ptr() + sum(np.array(t).nbytes for t in first)


def test_outputs_kept_by_the_user_stay_intact(store):
    """Kept outputs keep their window alive: the reader must load others instead of reusing
    it, and the outputs must outlive the pipeline."""
    oracle = sp.csr_matrix(ad.read_zarr(store).X)
    p = reader_pipe(8, path=store)
    kept = [p.run() for _ in range(2 * -(-oracle.shape[0] // 8))]  # two epochs, nothing copied
    del p
    gc.collect()
    for outputs in kept:
        check_csr_batch(oracle, outputs)


def mapped_rss_bytes(prefix):
    """Resident bytes of this process's mappings of files under `prefix` (/proc/self/smaps)."""
    total, current = 0, None
    with open("/proc/self/smaps") as f:
        for line in f:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                parts = line.split()
                current = parts[5] if len(parts) > 5 else ""
            elif line.startswith("Rss:") and current.startswith(prefix):
                total += int(line.split()[1]) * 1024
    return total


def test_mapped_shard_pages_do_not_accumulate(tmp_path):
    """Parts of inner chunks (32-row blocks of 64-row chunks) are decoded from a mapping of the
    whole shard; its touched pages are dropped every few MB, so the process's RSS does not
    grow by the compressed data read."""
    from biodali.synth import write_expression

    path = str(write_expression(tmp_path / "c.zarr", 12000, seed=1, layout="annbatch",
                                n_datasets=1, progress=False))
    stored = sum(f.stat().st_size for f in (tmp_path / "c.zarr").rglob("X/*/c/*"))
    assert stored > 64 << 20
    oracle = sp.csr_matrix(ad.read_zarr(f"{path}/dataset_0").X)

    @pipeline_def(batch_size=512, num_threads=2, device_id=None, prefetch_queue_depth=1)
    def pipe():
        return tuple(fn.biodali.readers.anndata(path=path, random_shuffle=True, seed=5, chunk_size=32,
                                                preload_chunks=8, return_row_index=True))

    p = pipe()
    p.build()
    peak = 0
    for i in range(12000 // 512):
        outputs = p.run()
        if i % 8 == 0:
            check_csr_batch(oracle, outputs)
        peak = max(peak, mapped_rss_bytes(path))
    assert 0 < peak < 40 << 20, f"{peak >> 20} MiB of mapped shard pages resident"


def anonymous_rss_bytes():
    """Resident anonymous memory of this process (RssAnon: windows, not mapped shard pages)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


@pytest.mark.skipif("libasan" in os.environ.get("LD_PRELOAD", ""),
                    reason="ASan's allocator keeps freed memory in quarantine: RSS says nothing there")
def test_epoch_end_needs_no_extra_full_window(tmp_path):
    """An epoch ends with a window of fewer rows than a batch, so the batch across it spans
    three windows. That small window is loaded outside the reader's bound, from buffers of its
    own: the stream must not take a third full-size window (fresh memory) at every epoch end."""
    from biodali.synth import write_expression

    chunk, preload, batch = 64, 32, 512  # windows of 2,048 rows (~47 MB: above malloc's mmap threshold)
    n = 3 * chunk * preload + 100  # each epoch ends with a window of 100 rows
    path = str(write_expression(tmp_path / "e.zarr", n, seed=2, layout="annbatch", n_datasets=1,
                                progress=False))
    oracle = sp.csr_matrix(ad.read_zarr(f"{path}/dataset_0").X)
    window_nbytes = chunk * preload * (oracle.nnz / n) * 8  # float32 values + int32 indices

    @pipeline_def(batch_size=batch, num_threads=2, device_id=None, prefetch_queue_depth=1)
    def pipe():
        return tuple(fn.biodali.readers.anndata(path=path, random_shuffle=True, seed=3, chunk_size=chunk,
                                                preload_chunks=preload, return_row_index=True))

    p = pipe()
    p.build()
    batches_per_epoch = -(-n // batch)
    rss = []
    for _ in range(4 * batches_per_epoch):
        outputs = p.run()
        check_csr_batch(oracle, outputs)
        rss.append(anonymous_rss_bytes())
    # Both full windows are loaded after the first few batches; from then on memory stays flat
    # across epoch ends (a third full window taken there would stay resident, or come and go).
    settled = max(rss[3:batches_per_epoch - 1])
    grown = max(rss[batches_per_epoch - 1:]) - settled
    assert grown < window_nbytes / 2, (
        f"memory grew by {grown / 2**20:.1f} MiB over later epochs (a window is "
        f"{window_nbytes / 2**20:.1f} MiB)")
