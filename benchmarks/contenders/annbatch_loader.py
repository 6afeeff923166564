"""annbatch contender: annbatch.Loader over a DatasetCollection, CPU scipy CSR batches.

Runs under a Python that can import annbatch (>= 3.12; here the annbatch env's 3.13 chroot:
``../shared/tools/annbatch-env/run.sh python benchmarks/contenders/annbatch_loader.py ...``).

What it does, following annbatch 0.3.1's README ("Using zarrs is necessary for local filesystem
performance"):

    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})   # --codec-pipeline zarrs
    collection = annbatch.DatasetCollection(PATH, mode="r")
    loader = annbatch.Loader(batch_size=B, chunk_size=C, preload_nchunks=P, shuffle=True,
                             rng=np.random.default_rng(S), preload_to_gpu=False, to=None)
    loader.use_collection(collection,
                          load_adata=lambda g: ad.AnnData(X=ad.io.sparse_dataset(g["X"])))
    for batch in loader: batch["X"]   # scipy.sparse.csr_matrix [<=B, n_vars]

With ``--genes-file`` every batch also goes through ``_common.scipy_transforms`` (normalize +
log1p + gene subset + dense float32 with scipy/numpy), in the loop, as users do today.

The custom ``load_adata`` loads X only (no obs columns), as the README recommends to avoid
yielding every obs column; biodali is likewise run without obs outputs. ``preload_to_gpu=False``
and ``to=None`` make the Loader yield host scipy CSR matrices (its own CPU output); nothing is
converted further. When the timed section needs more cells than one epoch holds, a new epoch
(a new ``iter(loader)``, freshly shuffled by the same rng) is started.
"""
from __future__ import annotations

import sys
import warnings
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def _extra(p):
    p.add_argument("--codec-pipeline", choices=("zarrs", "zarr"), default="zarrs",
                   help="zarrs: zarrs.ZarrsCodecPipeline (annbatch's recommendation for local "
                        "files, default); zarr: zarr-python's own BatchedCodecPipeline")


def _batches(loader):
    while True:  # epochs
        n = 0
        for batch in loader:
            n += 1
            yield batch["X"]
        if n == 0:
            raise RuntimeError("the loader yielded no batches")


def main(argv=None) -> dict:
    args = _common.parse_args(_extra, argv)
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp
    import zarr

    import annbatch

    if args.codec_pipeline == "zarrs":
        import zarrs  # noqa: F401  (fail loudly if annbatch[zarrs] is not installed)
        zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})

    def load_x(g):
        return ad.AnnData(X=ad.io.sparse_dataset(g["X"]))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        collection = annbatch.DatasetCollection(args.data, mode="r")
        loader = annbatch.Loader(
            batch_size=args.batch_size, chunk_size=args.chunk_size,
            preload_nchunks=args.preload_nchunks, shuffle=True,
            rng=np.random.default_rng(args.seed), preload_to_gpu=False, to=None)
        loader.use_collection(collection, load_adata=load_x)

    genes = np.load(args.genes_file) if args.genes_file else None
    args.rss_before_first_batch = _common.current_rss_bytes()
    it = _batches(loader)
    for _ in range(args.warmup_batches):
        x = next(it)
        if genes is not None:
            _common.scipy_transforms(x, genes)
    cells = nnz = batches = 0
    with _common.Timer() as timer:
        while cells < args.cells:
            x = next(it)
            if not sp.issparse(x) or x.format != "csr":
                raise TypeError(f"expected a scipy CSR batch, got {type(x)}")
            cells += x.shape[0]
            nnz += x.nnz
            batches += 1
            if genes is not None:
                dense = _common.scipy_transforms(x, genes)
                assert dense.shape == (x.shape[0], len(genes)) and dense.dtype == np.float32
    return _common.emit(
        "annbatch", args, cells, nnz, batches, timer,
        codec_pipeline=zarr.config.get("codec_pipeline.path"),
        zarr_threading_max_workers=zarr.config.get("threading.max_workers", None),
        n_obs=loader.n_obs, n_vars=loader.n_var,
        data_dtype=str(x.dtype), indices_dtype=str(x.indices.dtype),
        versions={p: version(p) for p in ("annbatch", "anndata", "zarr", "zarrs", "numpy", "scipy")
                  if _installed(p)})


def _installed(pkg: str) -> bool:
    try:
        version(pkg)
        return True
    except Exception:
        return False


if __name__ == "__main__":
    main()
