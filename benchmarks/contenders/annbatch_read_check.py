"""Integration check for bench_convert.py: annbatch 0.3.1 reads a collection written by
``biodali convert`` as its own. Runs under the annbatch env's Python.

Checks: ``DatasetCollection(path, mode="r")`` is not empty (it recognises the encoding and the
dataset_k groups); ``collection.obs()`` returns every row with src_path/src_row; one shuffled
epoch of ``annbatch.Loader`` (zarrs codec pipeline, scipy CSR batches) yields every cell once,
with the expected totals (rows, non-zeros, sum of values: given by the harness from the inputs).
Prints one JSON line."""
from __future__ import annotations

import argparse
import json
import sys
import time
import warnings


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("collection")
    p.add_argument("--expect-rows", type=int, required=True)
    p.add_argument("--expect-nnz", type=int, required=True)
    p.add_argument("--expect-sum", type=float, required=True)
    args = p.parse_args()
    import anndata as ad
    import numpy as np
    import zarr
    import zarrs  # noqa: F401

    import annbatch

    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        collection = annbatch.DatasetCollection(args.collection, mode="r")
        obs = collection.obs(columns=["src_path", "src_row"])
        loader = annbatch.Loader(batch_size=4096, chunk_size=512, preload_nchunks=32,
                                 shuffle=True, rng=np.random.default_rng(0),
                                 preload_to_gpu=False, to=None)
        loader.use_collection(collection,
                              load_adata=lambda g: ad.AnnData(X=ad.io.sparse_dataset(g["X"])))
        rows = nnz = 0
        total = 0.0
        for batch in loader:
            x = batch["X"]
            rows += x.shape[0]
            nnz += x.nnz
            total += float(x.data.sum(dtype=np.float64))
    result = {
        "is_empty": collection.is_empty, "obs_rows": len(obs),
        "obs_columns": list(obs.columns), "src_paths": sorted(map(str, obs["src_path"].unique())),
        "loader_rows": rows, "loader_nnz": nnz, "loader_sum": total,
        "seconds": time.perf_counter() - t0}
    result["ok"] = (not result["is_empty"] and result["obs_rows"] == args.expect_rows
                    and rows == args.expect_rows and nnz == args.expect_nnz
                    and abs(total - args.expect_sum) <= 1e-9 * max(1.0, abs(args.expect_sum)))
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
