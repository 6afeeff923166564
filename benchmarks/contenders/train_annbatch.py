"""annbatch training contender: annbatch.Loader (scipy CSR batches + the obs cell_type column)
with the same transform in the training loop (normalize_total + log1p over all genes, then the
gene subset, dense float32: _common.scipy_transforms, as in bench_reader.py's transforms mode),
feeding the demo's MLP. Prints train_common's JSON line.

The transform is scipy + torch.from_numpy rather than torch ops: on 1,024 10x-like cells scipy
took 15-19 ms, a torch version (repeat_interleave, segment_reduce, index_select, index_put) 70-100
ms with the torch of this env, so scipy is the fair choice for annbatch.

Runs under the annbatch env (Python >= 3.12) with a torch importable: the env has none, so
--torch-site names a folder holding one, appended to sys.path (the venv's own packages win):

    ../shared/tools/annbatch-env/run.sh pip install --target /opt/annbatch-torch torch==2.13.0
    ../shared/tools/annbatch-env/run.sh python benchmarks/contenders/train_annbatch.py \\
        --torch-site /opt/annbatch-torch --data PATH --genes-file GENES.npy

The loader is set up as in annbatch_loader.py (annbatch's README: zarrs codec pipeline,
``preload_to_gpu=False``, ``to=None``), plus obs restricted to cell_type so the labels come with
each batch.
"""
from __future__ import annotations

import sys
import warnings
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import train_common  # noqa: E402


def _extra(p):
    p.add_argument("--torch-site", default=None, help="folder with torch, appended to sys.path")


def main(argv=None) -> dict:
    args = train_common.parse_args(_extra, argv)
    if args.torch_site:
        sys.path.append(args.torch_site)
    import anndata as ad
    import numpy as np
    import torch
    import zarr

    import annbatch
    import zarrs  # noqa: F401  (annbatch's recommended codec pipeline for local files)

    zarr.config.set({"codec_pipeline.path": "zarrs.ZarrsCodecPipeline"})
    genes = np.load(args.genes_file).astype(np.int64)

    def load(group):
        obs = ad.io.read_elem(group["obs"])[["cell_type"]]
        return ad.AnnData(X=ad.io.sparse_dataset(group["X"]), obs=obs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        collection = annbatch.DatasetCollection(args.data, mode="r")
        loader = annbatch.Loader(batch_size=args.batch_size, chunk_size=args.chunk_size,
                                 preload_nchunks=args.preload_chunks, shuffle=True,
                                 rng=np.random.default_rng(args.seed), preload_to_gpu=False, to=None)
        loader.use_collection(collection, load_adata=load)

    dropper = train_common.make_dropper(args)

    def batches():
        while True:  # epochs
            train_common.epoch_start(args, dropper)
            for batch in loader:
                labels = torch.from_numpy(batch["obs"]["cell_type"].cat.codes.to_numpy().astype(np.int64))
                yield torch.from_numpy(_common.scipy_transforms(batch["X"], genes)), labels

    return train_common.train(
        "annbatch", args, batches(), len(genes), dropper=dropper,
        versions={p: version(p) for p in ("annbatch", "anndata", "zarr", "zarrs", "numpy", "scipy")})


if __name__ == "__main__":
    main()
