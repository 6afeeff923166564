"""Disk probe: what the storage under a collection delivers to random reads, cold.

Random reads of the collection's shard files (X/data and X/indices of every dataset: what a
reader reads for X) in blocks of a few sizes, with 1, 2, 4, 8 and 16 requests in flight
(that many threads, each doing blocking ``os.preadv`` into its own buffer), the files' cached
pages dropped (``posix_fadvise(DONTNEED)``, no privileges needed) before every measurement.
Reports MB/s (1 MB = 1e6 bytes) per (block size, depth), median of --repeats, as one JSON line
on stdout; a table goes to stderr.

    .venv/bin/python benchmarks/disk_probe.py --data /opt/benchdata/expr-1m-annbatch.zarr
    .venv/bin/python benchmarks/disk_probe.py FILE [FILE ...] --block-sizes 256K,4M

Block sizes (``--block-sizes auto``, the default) come from the store's metadata (zarr.json of
dataset_0/X/data):
- ``inner chunk``: the mean compressed inner chunk of X/data (bytes of X/data's files / number
  of inner chunks), what one request of chunk_size <= rows-per-inner-chunk (e.g. 32 x 256)
  reads;
- ``512-row run``: the compressed bytes of 512 consecutive rows of X/data (what chunk_size 512,
  annbatch's default, reads as one contiguous range; ~3.3 MB on the 1M-cell collection);
- ``16 MiB``: a large window-sized block.

Each measurement reads distinct, non-overlapping block-aligned ranges (a random sample without
replacement over all the files' blocks, so nothing is read twice) until --bytes-per-point bytes
were read or --seconds-per-point passed, whichever comes first. The reads are buffered (the
page cache and kernel readahead act as they do for the readers), not O_DIRECT.

Importable: ``probe(target, block_sizes=None, depths=(1, 2, 4, 8, 16), bytes_per_point=...,
seconds_per_point=..., repeats=3) -> dict`` (target: a collection path or a list of files).
Stdlib only.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "contenders"))
import _common  # noqa: E402

MIB = 1 << 20
DEFAULT_DEPTHS = (1, 2, 4, 8, 16)
DEFAULT_BYTES_PER_POINT = 384 * MIB
DEFAULT_SECONDS_PER_POINT = 1.5
ALIGN = 4096


# ------------------------------------------------------------------------------- files ----

def _is_data_file(p: Path) -> bool:
    return p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata")


def x_array_files(collection) -> list[Path]:
    """The chunk/shard files of X/data and X/indices of every dataset of the store."""
    files = []
    for group in _common.dataset_groups(collection):
        for name in ("data", "indices"):
            arr = group / "X" / name
            if arr.is_dir():
                files += [p for p in arr.rglob("*") if _is_data_file(p)]
    return sorted(files)


def _array_meta(arr: Path) -> dict | None:
    meta = arr / "zarr.json"
    return json.loads(meta.read_text()) if meta.exists() else None


def inner_chunk_sizes(collection) -> dict:
    """Mean compressed inner chunk of X/data and X/indices, and bytes per row of X/data, from the
    zarr v3 metadata and the files' sizes (all datasets)."""
    out = {}
    groups = _common.dataset_groups(collection)
    n_rows = 0
    for name in ("data", "indices"):
        nbytes = n_chunks = 0
        elems_per_chunk = None
        for group in groups:
            arr = group / "X" / name
            meta = _array_meta(arr)
            if meta is None:
                continue
            shape = meta["shape"][0]
            chunk = meta["chunk_grid"]["configuration"]["chunk_shape"][0]
            for codec in meta.get("codecs", []):
                if codec.get("name") == "sharding_indexed":
                    chunk = codec["configuration"]["chunk_shape"][0]
            elems_per_chunk = chunk
            n_chunks += math.ceil(shape / chunk) if shape else 0
            nbytes += sum(p.stat().st_size for p in arr.rglob("*") if _is_data_file(p))
        if n_chunks:
            out[name] = {"inner_chunk_elements": elems_per_chunk, "inner_chunks": n_chunks,
                         "bytes": nbytes, "mean_inner_chunk_bytes": nbytes / n_chunks}
    try:
        n_rows, _ = _common.x_shape(collection)
    except Exception:  # noqa: BLE001
        n_rows = 0
    if n_rows and "data" in out:
        out["data_bytes_per_row"] = out["data"]["bytes"] / n_rows
        out["x_bytes_per_row"] = sum(out[k]["bytes"] for k in ("data", "indices") if k in out) / n_rows
    return out


def auto_block_sizes(collection) -> list[tuple[int, str]]:
    sizes = inner_chunk_sizes(collection)
    blocks = []
    if "data" in sizes:
        blocks.append((_align(sizes["data"]["mean_inner_chunk_bytes"]), "inner chunk (X/data, mean)"))
    if "data_bytes_per_row" in sizes:
        blocks.append((_align(512 * sizes["data_bytes_per_row"]), "512-row run (X/data)"))
    blocks.append((16 * MIB, "16 MiB"))
    return sorted(set(blocks))


def _align(n: float) -> int:
    return max(ALIGN, int(round(n / ALIGN)) * ALIGN)


def parse_size(s: str) -> int:
    s = s.strip().upper().removesuffix("B").removesuffix("I")
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    return int(float(s[:-1] if s[-1:] in "KMG" else s) * mult)


# ------------------------------------------------------------------------------- probe ----

def _read_point(fds: list[int], sizes: list[int], block: int, depth: int, max_bytes: int,
                max_seconds: float, rng: random.Random) -> dict:
    """One measurement: depth threads read distinct random blocks until the byte or time budget."""
    n_blocks = max(1, min(sum(math.ceil(s / block) for s in sizes), math.ceil(max_bytes / block)))
    slots = [(i, k) for i, s in enumerate(sizes) for k in range(math.ceil(s / block))]
    chosen = rng.sample(slots, min(n_blocks, len(slots)))
    lock = threading.Lock()
    it = iter(chosen)
    done = [0] * depth
    errors = []
    deadline = [0.0]

    def worker(t: int):
        buf = bytearray(block)
        view = memoryview(buf)
        try:
            while True:
                with lock:
                    nxt = next(it, None)
                if nxt is None or time.perf_counter() > deadline[0]:
                    return
                i, k = nxt
                done[t] += os.preadv(fds[i], [view], k * block)
        except Exception as e:  # noqa: BLE001
            errors.append(repr(e))

    threads = [threading.Thread(target=worker, args=(t,), daemon=True) for t in range(depth)]
    t0 = time.perf_counter()
    deadline[0] = t0 + max_seconds
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    seconds = time.perf_counter() - t0
    if errors:
        raise OSError(f"disk_probe read failed: {errors[0]}")
    nbytes = sum(done)
    return {"bytes": nbytes, "seconds": seconds, "mb_per_s": nbytes / seconds / 1e6 if seconds else None}


def probe(target, block_sizes=None, depths=DEFAULT_DEPTHS, bytes_per_point: int = DEFAULT_BYTES_PER_POINT,
          seconds_per_point: float = DEFAULT_SECONDS_PER_POINT, repeats: int = 3, seed: int = 0,
          verbose: bool = False) -> dict:
    """Random cold reads of target's files.

    target: a collection (its X/data and X/indices shard files are read) or a list of files.
    block_sizes: ints (bytes) or (bytes, label) pairs; None: auto_block_sizes (needs a collection).
    Each (block size, depth) point is measured `repeats` times, the files' cached pages dropped
    before each; a measurement stops after bytes_per_point bytes or seconds_per_point seconds.
    Returns {"points": [{block_bytes, label, depth, mb_per_s (median), runs_mb_per_s, ...}],
    "best": the point with the highest median, ...}."""
    t_start = time.perf_counter()
    collection = None
    if isinstance(target, (str, os.PathLike)) and Path(target).is_dir():
        collection = Path(target)
        files = x_array_files(collection)
        if not files:
            raise FileNotFoundError(f"{target}: no X/data or X/indices chunk files")
    else:
        files = [Path(f) for f in ([target] if isinstance(target, (str, os.PathLike)) else target)]
    if len(files) == 1 and files[0].is_dir():  # the CLI's single positional path
        return probe(files[0], block_sizes, depths, bytes_per_point, seconds_per_point, repeats, seed, verbose)
    if block_sizes is None:
        if collection is None:
            raise ValueError("block_sizes=None needs a collection path")
        blocks = auto_block_sizes(collection)
    else:
        blocks = [(b, f"{b / MIB:g} MiB") if isinstance(b, int) else (int(b[0]), str(b[1])) for b in block_sizes]
    sizes = [f.stat().st_size for f in files]
    rng = random.Random(seed)
    fds = [os.open(f, os.O_RDONLY) for f in files]
    points = []
    try:
        for block, label in blocks:
            for depth in depths:
                runs = []
                for _ in range(repeats):
                    drop_seconds = _common.drop_page_cache(files)
                    r = _read_point(fds, sizes, block, depth, bytes_per_point, seconds_per_point, rng)
                    r["drop_seconds"] = drop_seconds
                    runs.append(r)
                rates = [r["mb_per_s"] for r in runs if r["mb_per_s"] is not None]
                pt = {"block_bytes": block, "label": label, "depth": depth,
                      "mb_per_s": statistics.median(rates) if rates else None,
                      "runs_mb_per_s": [round(v, 1) for v in rates],
                      "bytes_per_run": [r["bytes"] for r in runs],
                      "seconds_per_run": [round(r["seconds"], 3) for r in runs]}
                points.append(pt)
                if verbose:
                    print(f"  block {block / MIB:7.3f} MiB ({label}), depth {depth:2d}: "
                          f"{pt['mb_per_s']:8.1f} MB/s  (runs {pt['runs_mb_per_s']})",
                          file=sys.stderr, flush=True)
    finally:
        for fd in fds:
            os.close(fd)
        _common.drop_page_cache(files)  # leave the files cold, as the probe found them
    best = max((p for p in points if p["mb_per_s"] is not None), key=lambda p: p["mb_per_s"], default=None)
    result = {
        "probe": "disk_probe",
        "target": str(collection) if collection else None,
        "files": len(files), "file_bytes": sum(sizes),
        "block_sizes": [{"bytes": b, "label": lab} for b, lab in blocks],
        "depths": list(depths), "repeats": repeats, "bytes_per_point": bytes_per_point,
        "seconds_per_point": seconds_per_point, "seed": seed,
        "method": "buffered os.preadv of distinct random block-aligned ranges, one thread per request "
                  "in flight; posix_fadvise(DONTNEED) on every file before each measurement; "
                  "median of repeats; MB = 1e6 bytes",
        "points": points, "best": best, "seconds_total": time.perf_counter() - t_start,
    }
    if collection is not None:
        result["inner_chunks"] = inner_chunk_sizes(collection)
    return result


def markdown_table(result: dict) -> list[str]:
    """Rows: block sizes; columns: depths; cells: median MB/s."""
    depths = result["depths"]
    lines = ["| block | " + " | ".join(f"depth {d}" for d in depths) + " |",
             "|---|" + "---:|" * len(depths)]
    for b in result["block_sizes"]:
        row = {p["depth"]: p["mb_per_s"] for p in result["points"] if p["block_bytes"] == b["bytes"]}
        cells = [("n/a" if row.get(d) is None else f"{row[d]:,.0f}") for d in depths]
        lines.append(f"| {b['bytes'] / 1e6:.2f} MB ({b['label']}) | " + " | ".join(cells) + " |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", help="files to read (instead of --data's X shards)")
    p.add_argument("--data", default=None, help="collection (default /opt/benchdata/expr-1m-annbatch.zarr "
                                                "when no files are given)")
    p.add_argument("--block-sizes", default="auto",
                   help="'auto' (from the metadata) or comma-separated sizes, e.g. 400K,3.3M,16M")
    p.add_argument("--depths", default=",".join(map(str, DEFAULT_DEPTHS)))
    p.add_argument("--bytes-per-point", default=f"{DEFAULT_BYTES_PER_POINT // MIB}M",
                   help="bytes read per measurement at most (default %(default)s)")
    p.add_argument("--seconds-per-point", type=float, default=DEFAULT_SECONDS_PER_POINT,
                   help="seconds per measurement at most (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    if a.files and a.data:
        p.error("give files or --data, not both")
    target = a.files or a.data or "/opt/benchdata/expr-1m-annbatch.zarr"
    blocks = None if a.block_sizes == "auto" else [parse_size(s) for s in a.block_sizes.split(",")]
    res = probe(target, blocks, [int(d) for d in a.depths.split(",")], parse_size(a.bytes_per_point),
                a.seconds_per_point, a.repeats, a.seed, verbose=True)
    print("\n".join(markdown_table(res)), file=sys.stderr)
    b = res["best"]
    if b:
        print(f"best: {b['mb_per_s']:,.0f} MB/s at {b['block_bytes'] / 1e6:.2f} MB x depth {b['depth']}; "
              f"probe took {res['seconds_total']:.0f} s", file=sys.stderr)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
