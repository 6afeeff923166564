"""Decode ceiling of a collection: how fast this machine can decode its X from memory.

Runs with the biodali venv. For X/data and X/indices of the first dataset (dataset_0 of an
annbatch collection, else the store itself) it calls
``biodali._testing.decode_ceiling(array_path, num_threads, max_chunks)``, which reads all inner
chunks of the array's first shard (or the first max_chunks chunks when unsharded) into memory
and decodes them with num_threads threads, best of 3. No file I/O and no row gathering is
timed: a reader that does both cannot beat this figure on the same number of threads.

Conversion to cells/s: with s_data, s_indices the decode seconds per element of each array and
nnz/cell the mean row length of the rows inside that shard (from indptr), a cell costs
nnz/cell x (s_data + s_indices) seconds, and its decoded bytes are
nnz/cell x (itemsize(data) + itemsize(indices)). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "contenders"))
import _common  # noqa: E402


def decode_ceiling(data_path, num_threads: int | None = None, max_chunks: int = 256) -> dict:
    import numpy as np

    from biodali import _testing

    num_threads = num_threads or os.cpu_count()
    x = _common.dataset_groups(data_path)[0] / "X"
    arrays = {}
    for name in ("data", "indices"):
        path = x / name
        info = _testing.zarr_info(path)
        itemsize = np.dtype(info["dtype"]).itemsize
        r = _testing.decode_ceiling(str(path), num_threads, max_chunks)
        # the decoded chunks cover elements [0, n_elems) (the last chunk may run past the end)
        n_elems = min(r["decoded_nbytes"] // itemsize, int(info["shape"][0]))
        arrays[name] = {
            "path": str(path), "dtype": info["dtype"], "itemsize": itemsize,
            "sharded": info.get("sharded"), "read_chunk_shape": info.get("read_chunk_shape"),
            "storage_chunk_shape": info.get("storage_chunk_shape"), "num_chunks": r["num_chunks"],
            "decoded_nbytes": r["decoded_nbytes"], "seconds": r["seconds"],
            "gb_per_s": r["decoded_nbytes"] / r["seconds"] / 1e9,
            "elements": n_elems, "s_per_element": r["seconds"] * itemsize / r["decoded_nbytes"],
        }
    indptr = _testing.read_array(x / "indptr").astype(np.int64)
    # rows wholly inside the decoded part of X/data
    n_elems = min(arrays["data"]["elements"], arrays["indices"]["elements"])
    rows = int(np.searchsorted(indptr, n_elems, side="right")) - 1
    if rows < 1:
        raise ValueError(f"{x}: the first shard holds no complete row")
    nnz_per_cell = float(indptr[rows] - indptr[0]) / rows
    bytes_per_cell = nnz_per_cell * (arrays["data"]["itemsize"] + arrays["indices"]["itemsize"])
    s_per_cell = nnz_per_cell * (arrays["data"]["s_per_element"] + arrays["indices"]["s_per_element"])
    return {
        "kind": "decode_ceiling",
        "data": str(data_path),
        "num_threads": num_threads,
        "rows_in_shard": rows,
        "nnz_per_cell": nnz_per_cell,
        "decoded_bytes_per_cell": bytes_per_cell,
        "cells_per_s": 1.0 / s_per_cell,
        "gb_per_s": bytes_per_cell / s_per_cell / 1e9,
        "arrays": arrays,
    }


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--threads", type=int, default=0, help="0: os.cpu_count()")
    p.add_argument("--max-chunks", type=int, default=256, help="chunks decoded when unsharded")
    args = p.parse_args(argv)
    result = decode_ceiling(args.data, args.threads or None, args.max_chunks)
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main()
