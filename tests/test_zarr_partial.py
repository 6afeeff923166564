"""Array::DecodeReadChunkRange (partial decoding of one read chunk of a 1-D array) against
zarr-python and against decoding the whole chunk.

bytes -> blosc [-> crc32c] chains decode only the blosc blocks that cover the range (via
blosc_getitem); uncompressed chains read only the range; other chains decode the whole chunk
and copy the range out. All must give the same elements. Every test runs twice: decoding into
one buffer, and DecodeReadChunkRangeInPieces (the reader's path: cache-sized pieces handed to
a callback), whose pieces must arrive in order and tile the range. Ranges are placed on and around the
blosc block boundaries read from the stored frames' headers.
"""
from __future__ import annotations

import functools
import os
import struct

import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec, ZstdCodec

from biodali import _testing as bt

from test_zarr_arrays import (assert_bitwise_equal, chunk_files, corrupted_copies, make_data,
                              raises_naming)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

SHUFFLES = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}


@pytest.fixture(autouse=True, params=[False, True], ids=["into-buffer", "in-pieces"])
def decode_mode(request, monkeypatch):
    if request.param:
        monkeypatch.setattr(bt, "read_chunk_ranges", functools.partial(bt.read_chunk_ranges, in_pieces=True))
    return request.param


def blosc_header(frame: bytes):
    """(typesize, nbytes, blocksize) of a blosc1 frame."""
    typesize, nbytes, blocksize = struct.unpack("<xxxBII", frame[:12])
    return typesize, nbytes, blocksize


def ranges_for(chunk_len, block_elems, rng, num_random=12):
    """(begin, count) ranges inside one chunk: on and around block boundaries, single elements,
    the whole chunk, and random ones."""
    out = [(0, chunk_len), (0, 1), (chunk_len - 1, 1), (chunk_len // 2, 1)]
    for edge in range(block_elems, chunk_len, block_elems)[:6]:
        out += [(edge, 1), (edge - 1, 1), (edge - 1, 2), (edge, min(block_elems, chunk_len - edge)),
                (edge - 3, min(7, chunk_len - edge + 3)), (0, edge), (edge, chunk_len - edge)]
    for _ in range(num_random):
        b = int(rng.integers(0, chunk_len))
        out.append((b, int(rng.integers(1, chunk_len - b + 1))))
    return out


def check_ranges(path, *, expect_partial, num_random=12, chunks=None):
    """Every range of every (or the given) read chunk equals the whole-chunk decode and, inside
    the array, zarr-python's reading."""
    info = bt.zarr_info(path)
    (chunk_len,) = info["read_chunk_shape"]
    (length,) = info["shape"]
    expected = zarr.open_array(str(path), mode="r")[...]
    whole = bt.read_chunks(path)
    itemsize = np.dtype(info["dtype"]).itemsize
    block_elems = chunk_len
    # zarr-python writes a shard's inner chunks from offset 0 (index at the end), so the first
    # file starts with a frame either way
    head = open(chunk_files(path)[0], "rb").read(16)
    if len(head) == 16 and head[0] == 2 and blosc_header(head)[1] == chunk_len * itemsize:
        block_elems = max(1, blosc_header(head)[2] // itemsize)  # a blosc frame
    rng = np.random.default_rng(0)
    for c in (range(whole.shape[0]) if chunks is None else chunks):
        for begin, count in ranges_for(chunk_len, block_elems, rng, num_random):
            got, partial = bt.read_chunk_range(path, c, begin, count)
            assert partial == expect_partial
            assert_bitwise_equal(got, whole[c][begin:begin + count])
            lo, hi = c * chunk_len + begin, min(c * chunk_len + begin + count, length)
            if hi > lo:
                assert_bitwise_equal(got[:hi - lo], expected[lo:hi])
    return whole


# ---------------------------------------------------------------------------------------------
# blosc fast path

@pytest.mark.parametrize("dtype", ["int16", "float32", "float64"])
@pytest.mark.parametrize("shuffle", [0, 1, 2])
@pytest.mark.parametrize("cname", ["lz4", "zstd"])
def test_blosc_v2(tmp_path, cname, shuffle, dtype):
    data = make_data((250_000,), dtype)
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(100_000,),
                            dtype=dtype, zarr_format=2, filters=None, fill_value=0,
                            compressors=numcodecs.Blosc(cname, 5, shuffle, blocksize=2048))
    arr[...] = data
    frame = open(chunk_files(tmp_path / "a")[0], "rb").read()
    typesize, nbytes, blocksize = blosc_header(frame)
    assert (typesize, nbytes) == (np.dtype(dtype).itemsize, 100_000 * typesize)
    assert nbytes // blocksize >= 3  # several blocks, so ranges skip some
    check_ranges(tmp_path / "a", expect_partial=True, num_random=8)


V3_BLOSC = {
    "lz4-shuffle-f4": ("float32", [BloscCodec(cname="lz4", shuffle="shuffle", blocksize=4096)],
                       BytesCodec()),
    "zstd-bitshuffle-i2": ("int16", [BloscCodec(cname="zstd", shuffle="bitshuffle",
                                                blocksize=4096)], BytesCodec()),
    "lz4-noshuffle-f8": ("float64", [BloscCodec(cname="lz4", shuffle="noshuffle")], BytesCodec()),
    "big-endian": ("int32", [BloscCodec(cname="zstd", shuffle="shuffle", blocksize=4096)],
                   BytesCodec(endian="big")),
    "blosc+crc32c": ("float32", [BloscCodec(cname="lz4", shuffle="shuffle"), Crc32cCodec()],
                     BytesCodec()),
    "clevel0-memcpyed": ("uint16", [BloscCodec(cname="lz4", clevel=0, shuffle="shuffle")],
                         BytesCodec()),
    # typesize 8 over 4-byte elements: ranges are fetched whole blosc items and trimmed
    "typesize-8-over-f4": ("float32", [BloscCodec(cname="zstd", typesize=8, shuffle="shuffle",
                                                  blocksize=4096)], BytesCodec()),
}


@pytest.mark.parametrize("case", V3_BLOSC)
def test_blosc_v3(tmp_path, case):
    dtype, compressors, serializer = V3_BLOSC[case]
    data = make_data((230_001,), dtype)
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(100_000,), dtype=dtype,
                            compressors=compressors, serializer=serializer, fill_value=0)
    arr[...] = data
    check_ranges(tmp_path / "a", expect_partial=True, num_random=6)


def test_typesize_not_dividing_chunk_decodes_whole_frame(tmp_path):
    """A frame whose size is not a multiple of its typesize (typesize 8, 4-byte elements, odd
    chunk length): blosc_getitem cannot reach the last partial item, so the frame is decoded
    whole; the result is the same."""
    data = make_data((3001 * 3 - 5,), "float32")
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(3001,), dtype="float32",
                            compressors=[BloscCodec(cname="lz4", typesize=8, shuffle="shuffle")])
    arr[...] = data
    assert blosc_header(open(chunk_files(tmp_path / "a")[0], "rb").read())[0] == 8
    check_ranges(tmp_path / "a", expect_partial=True, num_random=6)


ANNBATCH_INNER = 189_746


@pytest.mark.parametrize("dtype", ["float32", "uint16"])
@pytest.mark.parametrize("checksum", [False, True])
def test_sharded_annbatch_layout(tmp_path, dtype, checksum):
    """annbatch's X/data and X/indices: sharded, inner codecs bytes(little) + blosc(lz4,
    clevel 3, shuffle, typesize = itemsize); the last shard and inner chunk are partial."""
    itemsize = np.dtype(dtype).itemsize
    codecs = [BytesCodec(endian="little"),
              BloscCodec(cname="lz4", clevel=3, shuffle="shuffle", typesize=itemsize)]
    if checksum:
        codecs.append(Crc32cCodec())
    data = make_data((ANNBATCH_INNER * 5 // 2,), dtype)
    sharding = ShardingCodec(chunk_shape=(ANNBATCH_INNER,), codecs=codecs)
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(ANNBATCH_INNER * 2,),
                            dtype=dtype, serializer=sharding, compressors=None, fill_value=0)
    arr[...] = data
    info = bt.zarr_info(tmp_path / "a")
    assert info["sharded"] and info["read_chunk_shape"] == [ANNBATCH_INNER]
    check_ranges(tmp_path / "a", expect_partial=True, num_random=6)


@pytest.mark.parametrize("sharded", [False, True])
def test_parallel_ranges(tmp_path, sharded):
    """Threads sharing one Array (and calling blosc_getitem concurrently) decode the same
    ranges as whole-chunk decoding does."""
    data = make_data((200_001,), "float32")
    kwargs = (dict(shards=(80_000,), compressors=[BloscCodec(cname="lz4", shuffle="shuffle")])
              if sharded else dict(zarr_format=2, compressors=numcodecs.Blosc("zstd", 3, 2)))
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(20_000,),
                            dtype="float32", fill_value=0, **kwargs)
    arr[...] = data
    whole = bt.read_chunks(tmp_path / "a")
    rng = np.random.default_rng(0)
    ranges = []
    for _ in range(300):
        c, b = int(rng.integers(0, whole.shape[0])), int(rng.integers(0, 20_000))
        ranges.append((c, b, int(rng.integers(1, 20_000 - b + 1))))
    for threads in (1, 4):
        parts, partial = bt.read_chunk_ranges(tmp_path / "a", ranges, threads)
        assert partial
        for (c, b, n), got in zip(ranges, parts):
            assert_bitwise_equal(got, whole[c][b:b + n])


# ---------------------------------------------------------------------------------------------
# other chains: plain (range read) and full-decode fallback

FALLBACK = {  # case -> (create_array arguments, SupportsPartialDecode)
    "v2-zstd": (dict(zarr_format=2, compressors=numcodecs.Zstd(level=1)), False),
    "v2-none": (dict(zarr_format=2, compressors=None), True),
    "v3-gzip": (dict(compressors=[GzipCodec(level=1)]), False),
    "v3-none-big-endian": (dict(compressors=None, serializer=BytesCodec(endian="big")), True),
    "v3-crc32c-then-blosc": (dict(compressors=[Crc32cCodec(), BloscCodec(cname="lz4")]), False),
    "v3-sharded-zstd": (dict(compressors=[ZstdCodec(level=1)], shards=(20_000,)), False),
    "v3-sharded-plain": (dict(compressors=None, shards=(20_000,)), True),
}


@pytest.mark.parametrize("case", FALLBACK)
def test_other_chains(tmp_path, case):
    kwargs, partial = FALLBACK[case]
    data = make_data((45_001,), "int32")
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(10_000,),
                            dtype="int32", fill_value=0, **kwargs)
    arr[...] = data
    check_ranges(tmp_path / "a", expect_partial=partial, num_random=4)


@pytest.mark.parametrize("fmt", ["v2-blosc", "v3-sharded-blosc", "v3-none"])
def test_missing_chunks_read_as_fill(tmp_path, fmt):
    layout = {"v2-blosc": dict(zarr_format=2, compressors=numcodecs.Blosc("lz4")),
              "v3-sharded-blosc": dict(compressors=[BloscCodec(cname="lz4")], shards=(4000,)),
              "v3-none": dict(compressors=None)}[fmt]
    arr = zarr.create_array(str(tmp_path / "a"), shape=(10_000,), chunks=(1000,), dtype="float32",
                            fill_value=-2.5, **layout)
    arr[1000:2000] = make_data((1000,), "float32")  # chunk 1 only; shard 0 holds it
    for chunk in (0, 3, 4, 9):  # absent inner chunks (0, 3) and missing chunks / shards
        got, _ = bt.read_chunk_range(tmp_path / "a", chunk, 17, 500)
        np.testing.assert_array_equal(got, np.full(500, -2.5, dtype="float32"))
    got, _ = bt.read_chunk_range(tmp_path / "a", 1, 17, 500)
    assert_bitwise_equal(got, arr[1017:1517])


# ---------------------------------------------------------------------------------------------
# errors

def test_needs_1d_and_ranges_inside_the_chunk(tmp_path):
    arr2d = zarr.create_array(str(tmp_path / "b"), shape=(4, 4), chunks=(2, 2), dtype="int8")
    arr2d[...] = 1
    with raises_naming(tmp_path / "b", "needs a 1-D array"):
        bt.read_chunk_range(tmp_path / "b", 0, 0, 1)
    arr = zarr.create_array(str(tmp_path / "a"), shape=(25,), chunks=(10,), dtype="int8")
    arr[...] = 1
    for chunk, begin, count in [(3, 0, 1), (-1, 0, 1), (0, 5, 6), (0, -1, 2), (2, 10, 1)]:
        with raises_naming(tmp_path / "a", "outside the chunk"):
            bt.read_chunk_range(tmp_path / "a", chunk, begin, count)
    assert bt.read_chunk_range(tmp_path / "a", 2, 0, 10)[0].shape == (10,)  # edge chunk, whole
    assert bt.read_chunk_range(tmp_path / "a", 0, 10, 0)[0].shape == (0,)


def write_blosc_chunk(path, compressors=None, **kwargs):
    data = (np.arange(100_000, dtype="float32") % 13)  # compresses well
    arr = zarr.create_array(str(path), shape=data.shape, chunks=data.shape, dtype="float32",
                            compressors=compressors or numcodecs.Blosc("lz4", 5, 1),
                            **kwargs)
    arr[...] = data
    return chunk_files(path)[0]


@pytest.mark.parametrize("cname,shuffle", [("lz4", 1), ("zstd", 2), ("blosclz", 0)])
def test_corrupt_blosc_block(tmp_path, cname, shuffle):
    """Garbage right after the header and block offsets (the first block's first stream size)
    is reported for a range inside the first block."""
    victim = write_blosc_chunk(tmp_path / "a", numcodecs.Blosc(cname, 5, shuffle), zarr_format=2)
    blob = bytearray(open(victim, "rb").read())
    _, nbytes, blocksize = blosc_header(blob)
    pos = 16 + 4 * -(-nbytes // blocksize)
    blob[pos:pos + 16] = b"\xff" * 16
    open(victim, "wb").write(bytes(blob))
    with raises_naming(victim, "corrupt"):
        bt.read_chunk_range(tmp_path / "a", 0, 3, 100)


def test_truncated_and_wrong_size_frames(tmp_path):
    victim = write_blosc_chunk(tmp_path / "a", zarr_format=2)
    blob = open(victim, "rb").read()
    open(victim, "wb").write(blob[:len(blob) // 2])
    with raises_naming(victim, "truncated"):
        bt.read_chunk_range(tmp_path / "a", 0, 0, 10)
    # a frame of another size (header nbytes disagrees with the chunk size)
    small = zarr.create_array(str(tmp_path / "s"), shape=(1000,), chunks=(1000,), dtype="float32",
                              zarr_format=2, compressors=numcodecs.Blosc("lz4"))
    small[...] = 1.0
    os.replace(chunk_files(tmp_path / "s")[0], victim)
    with raises_naming(victim, "decodes to 4000 bytes, expected 400000"):
        bt.read_chunk_range(tmp_path / "a", 0, 0, 10)


def test_checksum_verified_over_whole_chunk(tmp_path):
    """With blosc + crc32c, a flipped byte anywhere in the chunk fails a range read, even one
    whose blocks do not hold the flipped byte."""
    victim = write_blosc_chunk(tmp_path / "a", [BloscCodec(cname="lz4"), Crc32cCodec()])
    blob = bytearray(open(victim, "rb").read())
    blob[-10] ^= 0x40  # inside the last block
    open(victim, "wb").write(bytes(blob))
    with raises_naming(victim, "checksum mismatch"):
        bt.read_chunk_range(tmp_path / "a", 0, 0, 10)


def test_sharded_corrupt_inner_chunk_names_it(tmp_path):
    data = make_data((40_000,), "float32")
    sharding = ShardingCodec(chunk_shape=(10_000,),
                             codecs=[BytesCodec(), BloscCodec(cname="lz4", shuffle="shuffle")])
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(40_000,),
                            dtype="float32", serializer=sharding, compressors=None)
    arr[...] = data
    victim = chunk_files(tmp_path / "a")[0]
    blob = bytearray(open(victim, "rb").read())
    num_inner = 4
    index = struct.unpack(f"<{2 * num_inner}Q", blob[-(16 * num_inner + 4):-4])
    offset = index[2 * 2]  # inner chunk 2
    blob[offset + 8:offset + 12] = struct.pack("<I", 12345)  # header nbytes
    open(victim, "wb").write(bytes(blob))
    with raises_naming(victim, "inner chunk 2", "decodes to 12345 bytes"):
        bt.read_chunk_range(tmp_path / "a", 2, 0, 10)


@pytest.mark.parametrize("cname,shuffle", [("lz4", 1), ("zstd", 2), ("lz4hc", 0)])
def test_random_corruption_never_crashes(tmp_path, cname, shuffle):
    """Flipped bytes anywhere in a frame give an error or (undetectably) wrong values for any
    range, never a crash."""
    data = make_data((60_000,), "int32")
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=data.shape,
                            dtype="int32", zarr_format=2,
                            compressors=numcodecs.Blosc(cname, 5, shuffle, blocksize=2048))
    arr[...] = data
    victim = chunk_files(tmp_path / "a")[0]
    rng = np.random.default_rng(0)
    for _ in corrupted_copies(victim, rng):
        begin = int(rng.integers(0, 60_000))
        try:
            bt.read_chunk_range(tmp_path / "a", 0, begin, int(rng.integers(1, 60_000 - begin + 1)))
        except RuntimeError as exc:
            assert victim in str(exc)
