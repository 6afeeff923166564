"""Shared by the contender scripts (stdlib only: it runs under both the biodali venv and the
annbatch env's Python 3.13): the command-line protocol, store metadata and the JSON result line.

Protocol: each contender builds its loader, iterates ``--warmup-batches`` batches untimed, then
times batches until at least ``--cells`` cells were yielded (every batch ends as CSR arrays in
host memory) and prints exactly one JSON line on stdout (diagnostics go to stderr)."""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path


def parse_args(extra=None, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--data", required=True, help="annbatch DatasetCollection (or AnnData zarr store)")
    p.add_argument("--chunk-size", type=int, required=True)
    p.add_argument("--preload-nchunks", type=int, required=True)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--cells", type=int, default=500_000, help="cells to time (after warm-up)")
    p.add_argument("--warmup-batches", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--genes-file", default=None,
                   help="transforms mode: a .npy of column ids; every batch is then normalized "
                        "(target_sum 1e4) + log1p'd, restricted to these genes and densified "
                        "to float32 [batch, n_genes]")
    if extra is not None:
        extra(p)
    return p.parse_args(argv)


def _attrs(node: Path) -> dict:
    """Attributes of a zarr v3 (zarr.json) or v2 (.zattrs) node."""
    if (node / "zarr.json").exists():
        return json.loads((node / "zarr.json").read_text()).get("attributes", {})
    if (node / ".zattrs").exists():
        return json.loads((node / ".zattrs").read_text())
    raise FileNotFoundError(f"{node} is not a zarr group/array (no zarr.json or .zattrs)")


def dataset_groups(path) -> list[Path]:
    """The AnnData groups of a store: dataset_0..N of an annbatch collection, else the store."""
    root = Path(path)
    if _attrs(root).get("encoding-type") == "annbatch-preshuffled":
        keys = [p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("dataset_")]
        return [root / k for k in sorted(keys, key=lambda k: int(k.split("_", 1)[1]))]
    return [root]


def x_shape(path) -> tuple[int, int]:
    """(total rows over all datasets, n_vars) of X."""
    shapes = [_attrs(g / "X").get("shape") for g in dataset_groups(path)]
    if any(s is None for s in shapes):
        raise ValueError(f"{path}: X is not a sparse group with a 'shape' attribute")
    return sum(int(s[0]) for s in shapes), int(shapes[0][1])


def current_rss_bytes() -> int | None:
    """Resident set size now (Linux /proc/self/statm), e.g. after building the loader."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def storage_read_bytes() -> int | None:
    """Bytes this process (all its threads, readahead it started included) has had read from
    storage so far (/proc/self/io read_bytes): what a cold run really reads, re-reads and
    read amplification included, unlike cells/s x bytes per cell."""
    try:
        with open("/proc/self/io") as f:
            for line in f:
                if line.startswith("read_bytes:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


class Timer:
    """Wall and process CPU time (user + system, all threads) and bytes read from storage of
    the timed section."""

    def __enter__(self):
        self._t0, self._c0, self._r0 = time.perf_counter(), os.times(), storage_read_bytes()
        return self

    def __exit__(self, *exc):
        t1, c1, r1 = time.perf_counter(), os.times(), storage_read_bytes()
        self.seconds = t1 - self._t0
        self.cpu_seconds = (c1.user - self._c0.user) + (c1.system - self._c0.system)
        self.storage_read_bytes = r1 - self._r0 if r1 is not None and self._r0 is not None else None
        return False


def emit(contender: str, args, cells: int, nnz: int, batches: int, timer: Timer, **extra) -> dict:
    result = {
        "contender": contender,
        "cells": cells,
        "seconds": timer.seconds,
        "cells_per_s": cells / timer.seconds if timer.seconds > 0 else float("inf"),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_before_first_batch_bytes": getattr(args, "rss_before_first_batch", None),
        "nnz_per_cell": nnz / cells if cells else 0.0,
        "batches": batches,
        "cpu_seconds": timer.cpu_seconds,
        "storage_read_bytes": getattr(timer, "storage_read_bytes", None),
        "chunk_size": args.chunk_size,
        "preload_nchunks": args.preload_nchunks,
        "batch_size": args.batch_size,
        "warmup_batches": args.warmup_batches,
        "seed": args.seed,
        "python": sys.version.split()[0],
        **extra,
    }
    print(json.dumps(result), flush=True)
    return result


def scipy_transforms(x, genes, target_sum: float = 1e4):
    """The usual CPU recipe on a scipy CSR batch, as scanpy's normalize_total + log1p, then the
    gene subset and a dense float32 array: what users write around annbatch today."""
    import numpy as np

    x = x.astype(np.float32, copy=True)
    totals = np.asarray(x.sum(axis=1)).ravel()
    scale = np.divide(target_sum, totals, out=np.zeros_like(totals), where=totals > 0)
    x.data *= np.repeat(scale, np.diff(x.indptr))
    np.log1p(x.data, out=x.data)
    return x[:, genes].toarray()


# ------------------------------------------------------------------------- page cache ----

def collection_files(path) -> list[Path]:
    """Every file of a store (metadata included), sorted."""
    return sorted(p for p in Path(path).rglob("*") if p.is_file())


def drop_page_cache(files) -> float:
    """Drops the files' cached pages (posix_fadvise DONTNEED; no privileges needed); returns the
    seconds it took. Dirty pages are written back first (fdatasync), else DONTNEED would leave
    them (e.g. a collection written moments ago). Pages some process maps stay cached."""
    t0 = time.perf_counter()
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            try:
                os.fdatasync(fd)
            except OSError:
                pass
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
    return time.perf_counter() - t0


def cached_bytes(files) -> int | None:
    """Bytes of the files now in the page cache (mincore over a PROT_READ mapping, which faults
    nothing in); None where mincore is unavailable."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                              ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    except (OSError, AttributeError):
        return None
    page = os.sysconf("SC_PAGE_SIZE")
    odd = bytes(i & 1 for i in range(256))
    total = 0
    for f in files:
        size = os.path.getsize(f)
        if size == 0:
            continue
        fd = os.open(f, os.O_RDONLY)
        try:
            addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
            if addr in (None, ctypes.c_void_p(-1).value):
                return None
            try:
                n_pages = -(-size // page)
                vec = (ctypes.c_ubyte * n_pages)()
                if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
                    return None
                resident = bytes(vec).translate(odd).count(1)
                last_resident = vec[n_pages - 1] & 1
                total += resident * page - (last_resident * (n_pages * page - size))
            finally:
                libc.munmap(ctypes.c_void_p(addr), size)
        finally:
            os.close(fd)
    return total
