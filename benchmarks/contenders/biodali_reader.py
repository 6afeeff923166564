"""biodali contender: fn.biodali.readers.anndata in a CPU-only DALI pipeline.

Runs with the biodali venv (``.venv/bin/python benchmarks/contenders/biodali_reader.py ...``).
The pipeline (batch_size=B, num_threads=os.cpu_count(), device_id=None, prefetch_queue_depth=1)
holds one operator:

    values, indices = fn.biodali.readers.anndata(
        path=PATH, random_shuffle=True, seed=S, chunk_size=C, preload_chunks=P,
        num_io_threads=T, prefetch_windows=W, name="reader"[, io_depth=N][, KEY=VALUE...])

``--io-depth N`` and ``--reader-arg KEY=VALUE`` (repeatable; VALUE a Python literal, else a
string) add reader arguments only when given, so the script runs against plugins that lack them.

With ``--genes-file`` the pipeline continues with ``fn.biodali.expression.normalize_densify``
(normalize + log1p + gene subset + densify float32 in one operator; ``--chain``: the three
operators ``normalize`` -> ``select_genes`` -> ``densify``) and each batch ends as one dense
numpy array.

Each ``pipe.run()`` batch ends as host CSR arrays (data, indices, indptr) via
``biodali.batch.csr_arrays`` (zero-copy views of DALI's contiguous outputs; indptr from a
``values.shape()`` output, as the README recommends), the same form
as annbatch's scipy CSR batches (``--scipy`` additionally wraps them in a scipy.sparse.csr_matrix).
"""
from __future__ import annotations

import os
import sys
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402


def _extra(p):
    p.add_argument("--num-io-threads", type=int, default=0, help="0: one per core")
    p.add_argument("--prefetch-windows", type=int, default=1)
    p.add_argument("--chain", action="store_true",
                   help="transforms mode: normalize -> select_genes -> densify as three operators "
                        "instead of the fused normalize_densify")
    p.add_argument("--scipy", action="store_true",
                   help="also wrap every batch in a scipy.sparse.csr_matrix (index checks included)")
    p.add_argument("--io-depth", type=int, default=None,
                   help="reader argument io_depth (requests in flight); passed only when given")
    p.add_argument("--reader-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra reader argument (repeatable); VALUE is a Python literal, else a string")


def reader_kwargs(args) -> dict:
    """The optional reader arguments: only those given on the command line."""
    import ast

    extra = {}
    if args.io_depth is not None:
        extra["io_depth"] = args.io_depth
    for item in args.reader_arg:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--reader-arg: {item!r} is not KEY=VALUE")
        try:
            extra[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            extra[key.strip()] = value
    return extra


def main(argv=None) -> dict:
    args = _common.parse_args(_extra, argv)
    import numpy as np

    import biodali  # loads the plugin
    from biodali.batch import csr_arrays
    from nvidia.dali import fn, pipeline_def, types

    n_rows, n_cols = _common.x_shape(args.data)
    extra_reader_args = reader_kwargs(args)
    genes = [int(g) for g in np.load(args.genes_file)] if args.genes_file else None

    # The reader prefetches windows on its own I/O threads, so DALI's pipeline-level prefetch
    # only adds a batch of output buffers (~95 MB at batch 4096) for no speed on the CPU: depth 1,
    # as the README recommends for CPU pipelines.
    @pipeline_def(batch_size=args.batch_size, num_threads=os.cpu_count(), device_id=None,
                  prefetch_queue_depth=1)
    def pipe():
        values, indices = fn.biodali.readers.anndata(**{
            "path": args.data, "random_shuffle": True, "seed": args.seed,
            "chunk_size": args.chunk_size, "preload_chunks": args.preload_nchunks,
            "num_io_threads": args.num_io_threads, "prefetch_windows": args.prefetch_windows,
            "name": "reader", **extra_reader_args})  # --reader-arg wins over the flags
        if genes is not None:
            expression = fn.biodali.expression
            if not args.chain:
                return expression.normalize_densify(values, indices, genes=genes, n_features=n_cols,
                                                    target_sum=1e4, log1p=True)
            normalized = expression.normalize(values, target_sum=1e4, log1p=True)
            subset_values, subset_indices = expression.select_genes(normalized, indices, genes=genes)
            return expression.densify(subset_values, subset_indices, n_features=len(genes))
        # The row lengths as an output of their own: indptr from one array, not from a Python
        # object per row (TensorList.shape()).
        return values, indices, values.shape(dtype=types.INT64)

    p = pipe()
    p.build()
    args.rss_before_first_batch = _common.current_rss_bytes()

    if genes is not None:
        return _run_transforms(args, p, n_rows, n_cols, np)

    def csr():
        values, indices, lengths = p.run()
        data, idx, indptr = csr_arrays(values, indices, lengths)
        if args.scipy:
            import scipy.sparse as sp
            return sp.csr_matrix((data, idx, indptr), shape=(len(indptr) - 1, n_cols))
        return data, idx, indptr

    for _ in range(args.warmup_batches):
        batch = csr()
    cells = nnz = batches = 0
    with _common.Timer() as timer:
        while cells < args.cells:
            batch = csr()
            if args.scipy:
                cells += batch.shape[0]
                nnz += batch.nnz
            else:
                data, idx, indptr = batch
                cells += len(indptr) - 1
                nnz += int(indptr[-1])
            batches += 1
    data_dtype = batch.dtype if args.scipy else batch[0].dtype
    indices_dtype = batch.indices.dtype if args.scipy else batch[1].dtype
    meta = p.reader_meta("reader")
    return _common.emit(
        "biodali", args, cells, nnz, batches, timer,
        num_io_threads=args.num_io_threads, prefetch_windows=args.prefetch_windows,
        reader_args=extra_reader_args, dali_num_threads=os.cpu_count(), n_obs=n_rows, n_vars=n_cols,
        epoch_size=meta.get("epoch_size"), data_dtype=str(data_dtype),
        indices_dtype=str(np.dtype(indices_dtype)),
        versions={"biodali": biodali.__version__, **_dali_version(), "numpy": np.__version__},
        scipy_wrapped=args.scipy)


def _run_transforms(args, p, n_rows, n_cols, np) -> dict:
    """Transforms mode: each batch ends as one dense float32 numpy array (zero-copy view)."""
    import biodali

    def dense():
        (out,) = p.run()
        return np.asarray(out.as_tensor())

    for _ in range(args.warmup_batches):
        batch = dense()
    cells = batches = 0
    with _common.Timer() as timer:
        while cells < args.cells:
            batch = dense()
            cells += batch.shape[0]
            batches += 1
    assert batch.dtype == np.float32 and batch.ndim == 2
    return _common.emit(
        "biodali_chain" if args.chain else "biodali", args, cells, 0, batches, timer,
        num_io_threads=args.num_io_threads, prefetch_windows=args.prefetch_windows,
        reader_args=reader_kwargs(args), dali_num_threads=os.cpu_count(), n_obs=n_rows, n_vars=n_cols,
        output_shape=list(batch.shape),
        versions={"biodali": biodali.__version__, **_dali_version(), "numpy": np.__version__})


def _dali_version() -> dict:
    """{"nvidia-dali-<flavour>": version} of the installed DALI wheel."""
    from importlib.metadata import distributions
    for d in distributions():
        name = d.metadata.get("Name", "") or ""
        if name.lower().startswith("nvidia-dali"):
            return {name: d.version}
    import nvidia.dali
    return {"nvidia-dali": nvidia.dali.__version__}


if __name__ == "__main__":
    main()
