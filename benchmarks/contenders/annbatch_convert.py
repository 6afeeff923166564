"""annbatch contender for bench_convert.py: ``DatasetCollection.add_adatas`` of the h5ad inputs.

Runs under a Python that can import annbatch 0.3.1 (the annbatch env's 3.13 chroot):

    DatasetCollection(OUT).add_adatas(INPUTS, dataset_size="4GB", rng=np.random.default_rng(S))

with annbatch's other defaults (shard_size "1GB", n_obs_per_chunk 64, blosc lz4, shuffle=True,
shuffle_chunk_size 1000, outer var join) and zarr-python's codec pipeline (annbatch's default for
writing; ``--codec-pipeline zarrs`` switches to zarrs, which annbatch recommends for loading: on a
24 GiB machine its write at 1M cells was OOM-killed at 23 GiB). Prints one JSON line: seconds, ru_maxrss of this
process, versions. The harness measures the process tree's RSS on top of that."""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
import warnings
from importlib.metadata import version


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("inputs", nargs="+")
    p.add_argument("--output", required=True)
    p.add_argument("--dataset-size", default="4GB")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--codec-pipeline", choices=("zarrs", "zarr"), default="zarr",
                   help="zarr: zarr-python's (default); zarrs: zarrs.ZarrsCodecPipeline")
    args = p.parse_args()
    import numpy as np
    import zarr

    import annbatch

    if args.codec_pipeline == "zarrs":
        import zarrs  # noqa: F401
        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        annbatch.DatasetCollection(args.output).add_adatas(
            args.inputs, dataset_size=args.dataset_size, rng=np.random.default_rng(args.seed))
    seconds = time.perf_counter() - t0
    print(json.dumps({
        "contender": "annbatch", "seconds": seconds,
        "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "versions": {k: version(k) for k in ("annbatch", "anndata", "zarr", "numpy", "dask")},
        "codec_pipeline": args.codec_pipeline, "python": sys.version.split()[0]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
