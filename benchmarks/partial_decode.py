"""Partial decoding of one read chunk: Array::DecodeReadChunkRange vs DecodeReadChunk.

Writes (into a temporary directory) arrays laid out as annbatch writes X/data and X/indices:
1-D, sharded, inner chunks of 189,746 elements encoded with bytes(little) + blosc(lz4,
clevel 3, shuffle, typesize = itemsize). Then times, on --threads threads sharing one Array,
decoding one inner chunk whole and decoding 50% / 25% of it at several offsets. Every call
reads the inner chunk's bytes from the (page-cached) shard file, as the reader does. Prints
one JSON object: microseconds per call (wall time x threads / calls, best of 3) and the
ratio to the whole-chunk decode.
"""
from __future__ import annotations

import argparse
import json
import struct
import tempfile
from pathlib import Path

import numpy as np

INNER = 189_746


def write_arrays(root: Path, seed: int = 0) -> dict:
    import zarr
    from zarr.codecs import BloscCodec, BytesCodec, ShardingCodec

    rng = np.random.default_rng(seed)
    n = INNER * 4
    # expression values: small counts, log1p-normalised as most stores hold them
    data = np.log1p(rng.negative_binomial(2, 0.4, n).astype(np.float32) + 1).astype(np.float32)
    # column indices: sorted within rows of ~2,000 non-zeros out of 30,000 genes
    indices = np.concatenate([np.sort(rng.choice(30_000, 2_000, replace=False))
                              for _ in range(-(-n // 2_000))])[:n].astype(np.uint16)
    paths = {}
    for name, values in (("data", data), ("indices", indices)):
        itemsize = values.dtype.itemsize
        sharding = ShardingCodec(chunk_shape=(INNER,), codecs=[
            BytesCodec(endian="little"),
            BloscCodec(cname="lz4", clevel=3, shuffle="shuffle", typesize=itemsize)])
        arr = zarr.create_array(str(root / name), shape=values.shape, chunks=values.shape,
                                dtype=values.dtype, serializer=sharding, compressors=None)
        arr[...] = values
        paths[name] = root / name
    return paths


def blosc_blocks(path: Path) -> dict:
    shard = next(p for p in (path / "c").iterdir())
    head = open(shard, "rb").read(16)
    typesize, nbytes, blocksize, cbytes = struct.unpack("<xxxBIII", head)
    return {"typesize": typesize, "chunk_nbytes": nbytes, "blocksize": blocksize,
            "num_blocks": -(-nbytes // blocksize), "compressed_nbytes": cbytes}


def measure(path: Path, threads: int, calls: int) -> dict:
    from biodali import _testing as bt

    chunk = 1  # an inner chunk in the middle of the shard
    whole = bt.time_chunk_range(path, threads, chunk, 0, None, calls)
    per_call = lambda seconds: seconds * threads / calls * 1e6  # noqa: E731
    out = {"blosc": blosc_blocks(path), "whole_chunk_us": round(per_call(whole), 1),
           "supports_partial": bt.read_chunk_range(path, chunk, 0, 1)[1]}
    for fraction in (0.5, 0.25):
        count = int(INNER * fraction)
        for begin in (0, (INNER - count) // 2, INNER - count):
            seconds = bt.time_chunk_range(path, threads, chunk, begin, count, calls)
            out[f"range_{int(fraction * 100)}pct_at_{begin}"] = {
                "us": round(per_call(seconds), 1), "vs_whole": round(seconds / whole, 3)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", type=int, default=400)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_arrays(Path(tmp))
        result = {"kind": "partial_decode", "threads": args.threads, "calls": args.calls,
                  "inner_chunk_elements": INNER}
        for name, path in paths.items():
            result[name] = measure(path, args.threads, args.calls)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
