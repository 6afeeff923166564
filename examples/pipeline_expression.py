"""A plain DALI pipeline built from biodali operators, for users who write their own graphs
(biodali.torch.ExpressionLoader builds one like it for you).

    python examples/pipeline_expression.py                 # on a small synthetic store it writes
    python examples/pipeline_expression.py STORE.zarr      # an AnnData zarr store or a collection

The graph: read shuffled cells with their cell type -> augment the raw counts (binomial
thinning to 80% of the reads, then drop 10% of the genes) -> scanpy-style normalize_total +
log1p, keep 500 genes and densify, all fused in one operator -> torch tensors through DALI's
DALIGenericIterator. Every operator runs on the CPU here; on a GPU machine the same graph runs
there once the rows are moved with `.gpu()` (see the comments).

Cost: downsample draws one random number per read; on 10x-like cells (~11,000 reads each) it
takes more than half of this pipeline's time on 2 CPU cores (~10k cells/s with it, ~24k
without, on the 200,000-cell demo collection).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time

import biodali  # noqa: F401  (loads the plugin: fn.biodali.* exists from here on)
from biodali.expression import n_features
from nvidia.dali import fn, pipeline_def
from nvidia.dali.plugin.pytorch import DALIGenericIterator, LastBatchPolicy


@pipeline_def(enable_checkpointing=True)  # pipe.checkpoint() can then resume the exact stream
def expression_pipeline(path, genes, num_features):
    values, indices, cell_type = fn.biodali.readers.anndata(
        path=path, obs_columns=["cell_type"],   # categorical -> int32 codes
        random_shuffle=True, seed=0,            # block shuffle: a new order every epoch
        chunk_size=512, preload_chunks=32,      # annbatch's sampling parameters
        pad_last_batch=True,                    # exact epochs with LastBatchPolicy.PARTIAL
        name="reader")
    # On a GPU: values, indices = values.gpu(), indices.gpu() (select_genes wants CPU indices).
    values = fn.biodali.expression.downsample(values, fraction=0.8, seed=1)   # fewer reads
    values = fn.biodali.expression.mask(values, indices, probability=0.1, seed=2)  # gene dropout
    x = fn.biodali.expression.normalize_densify(values, indices, genes=genes, n_features=num_features,
                                                target_sum=1e4, log1p=True, dtype="float32")
    return x, cell_type


def main() -> int:
    if len(sys.argv) > 1:
        path = sys.argv[1]
    else:
        from biodali.synth import write_expression

        path = os.path.join(tempfile.mkdtemp(prefix="biodali-example-"), "cells.zarr")
        print(f"writing 20,000 synthetic cells to {path}")
        write_expression(path, 20_000, seed=0, progress=False)
    num_features = n_features(path)
    genes = list(range(0, num_features, max(1, num_features // 500)))[:500]
    pipe = expression_pipeline(path, genes, num_features, batch_size=2048, num_threads=os.cpu_count(),
                               device_id=None, prefetch_queue_depth=1)  # device_id=0 on a GPU
    batches = DALIGenericIterator(pipe, ["x", "cell_type"], reader_name="reader",
                                  last_batch_policy=LastBatchPolicy.PARTIAL)
    start, cells = time.perf_counter(), 0
    for batch in batches:  # one epoch
        x, cell_type = batch[0]["x"], batch[0]["cell_type"]
        cells += len(x)
    seconds = time.perf_counter() - start
    print(f"one epoch: {cells:,} cells as {tuple(x.shape[1:])} {x.dtype} rows + int32 cell types in "
          f"{seconds:.2f} s ({cells / seconds:,.0f} cells/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
