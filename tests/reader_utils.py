"""Shared helpers for reader tests: small AnnData stores written by anndata/zarr, and a way
to run fn.biodali.readers.anndata and collect what it yields."""
from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

import biodali  # noqa: F401  (loads the plugin)
import anndata as ad
from nvidia.dali import fn, pipeline_def


def make_adata(n_obs=300, n_vars=50, density=0.2, seed=0, dtype=np.float32, with_dense=True):
    rng = np.random.default_rng(seed)
    X = sp.random(n_obs, n_vars, density=density, format="csr", random_state=rng, dtype=np.float64)
    X.data = np.ceil(X.data * 20).astype(dtype)
    # a few empty rows: they must come out as empty tensors
    X = X.tolil()
    X[3] = 0
    X[n_obs // 2] = 0
    X = sp.csr_matrix(X, dtype=dtype)
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(rng.choice(["B", "T", "NK", "mono"], n_obs)),
            "batch": pd.Categorical(rng.choice(["b0", "b1"], n_obs)),
            "n_counts": np.asarray(X.sum(axis=1)).ravel().astype(np.float32),
        },
        index=[f"cell{i}" for i in range(n_obs)],
    )
    var = pd.DataFrame(index=[f"g{i}" for i in range(n_vars)])
    adata = ad.AnnData(X=X, obs=obs, var=var)
    if with_dense:
        adata.obsm["X_pca"] = rng.standard_normal((n_obs, 8)).astype(np.float32)
        adata.layers["counts"] = X.copy()
    return adata


def write_zarr(adata, path, zarr_format=3):
    ad.settings.zarr_write_format = zarr_format
    try:
        adata.write_zarr(path)
    finally:
        ad.settings.zarr_write_format = 3
    return str(path)


def run_reader(batch_size=16, num_batches=None, epochs=None, checkpoint=None,
               enable_checkpointing=False, return_pipe=False, **reader_kwargs):
    """Runs the reader and returns a list of batches; each batch is a list of per-output lists
    of numpy arrays (one per sample)."""
    reader_kwargs.setdefault("name", "reader")

    @pipeline_def(batch_size=batch_size, num_threads=2, device_id=None,
                  enable_checkpointing=enable_checkpointing, prefetch_queue_depth=2)
    def pipe():
        outs = fn.biodali.readers.anndata(**reader_kwargs)
        return tuple(outs) if isinstance(outs, (list, tuple)) else outs

    p = pipe(checkpoint=checkpoint) if checkpoint is not None else pipe()
    p.build()
    if num_batches is None:
        meta = p.reader_meta("reader")
        per_epoch = -(-meta["epoch_size_padded"] // meta["number_of_shards"] // batch_size)
        num_batches = per_epoch * (epochs or 1)
    batches = [to_numpy(p.run()) for _ in range(num_batches)]
    return (batches, p) if return_pipe else batches


def to_numpy(outputs):
    return [[np.array(t) for t in out] for out in outputs]


def rows_of(batches, out_index):
    return [s for batch in batches for s in batch[out_index]]


def write_sharded(adata, path):
    """zarr v3 with anndata's automatic sharding (shard index with crc32c)."""
    ad.settings.zarr_write_format = 3
    ad.settings.auto_shard_zarr_v3 = True
    try:
        adata.write_zarr(path)
    finally:
        ad.settings.auto_shard_zarr_v3 = False
    return str(path)
