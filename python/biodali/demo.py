"""`biodali demo`: generate a synthetic single-cell collection (cached), stream it through
fn.biodali.readers.anndata on the CPU and print throughput. (The training demo comes with the
PyTorch integration.)"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np


def ensure_dataset(data_dir: Path, n_cells: int, seed: int = 0) -> Path:
    from biodali import synth

    path = data_dir / f"expression-{n_cells}-seed{seed}.zarr"
    done = path / ".biodali-complete"
    if not done.exists():
        print(f"generating {n_cells:,} synthetic cells in annbatch's layout at {path} ...", flush=True)
        t0 = time.perf_counter()
        synth.write_expression(str(path), n_cells=n_cells, seed=seed, layout="annbatch",
                               jobs=os.cpu_count() or 1)
        done.touch()
        print(f"  done in {time.perf_counter() - t0:.0f} s", flush=True)
    return path


def main(args) -> int:
    import biodali  # noqa: F401  (loads the plugin)
    from nvidia.dali import fn, pipeline_def, types

    from biodali.batch import csr_arrays

    data_dir = Path(os.path.expanduser(args.data_dir))
    data_dir.mkdir(parents=True, exist_ok=True)
    path = ensure_dataset(data_dir, args.n_cells)

    @pipeline_def(batch_size=args.batch_size, num_threads=os.cpu_count() or 2, device_id=None,
                  prefetch_queue_depth=1)
    def pipe():
        values, indices, cell_type, row = fn.biodali.readers.anndata(
            path=str(path), obs_columns=["cell_type"], random_shuffle=True, seed=0,
            pad_last_batch=True, return_row_index=True, name="reader")
        return values, indices, cell_type, row, values.shape(dtype=types.INT64)

    p = pipe()
    p.build()
    n_rows = p.reader_meta("reader")["epoch_size"]
    batches_per_epoch = -(-n_rows // args.batch_size)
    print(f"reading {n_rows:,} cells, batch {args.batch_size}, block-shuffled, CPU pipeline")
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        cells = nnz = 0
        seen = np.zeros(n_rows, dtype=np.int64)
        for _ in range(batches_per_epoch):
            values, indices, cell_type, row, lengths = p.run()
            np.add.at(seen, np.asarray(row.as_tensor()), 1)
            data, cols, offsets = csr_arrays(values, indices, lengths)
            labels = np.asarray(cell_type.as_tensor())
            cells += len(labels)
            nnz += len(data)
        dt = time.perf_counter() - t0
        pad = cells - n_rows  # the last batch is padded by repeating its last row
        coverage = "every cell once" if (seen >= 1).all() and seen.sum() == cells and (seen > 1).sum() <= 1 \
            else f"COVERAGE ERROR: {(seen == 0).sum()} cells missing"
        print(f"epoch {epoch}: {cells:,} cells ({pad} padding) in {dt:.1f} s = {cells / dt:,.0f} cells/s, "
              f"{nnz / cells:,.0f} non-zeros per cell, {coverage}")
    return 0
