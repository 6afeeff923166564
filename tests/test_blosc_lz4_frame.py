"""biodali's own decoder for lz4 blosc frames (csrc/codecs/blosc_lz4_frame.cc) against numcodecs'
bundled c-blosc, frame by frame: every frame shape c-blosc writes (split and unsplit blocks, a
trailing partial block, a trailing partial item, streams stored uncompressed, frames stored
whole) decodes bit for bit; frames it does not handle go to c-blosc; corrupt frames raise."""
from __future__ import annotations

import ctypes
import ctypes.util

import numpy as np
import numcodecs.blosc as ncblosc
import pytest

from biodali import _testing


_MEMCPYED = 0x02  # frame header flag: the whole buffer stored as is


def _data(dtype, n, kind, rng):
    dtype = np.dtype(dtype)
    if kind == "counts":  # what expression stores hold: small, repetitive values
        return rng.negative_binomial(1, 0.3, n).astype(dtype)
    if kind == "random":  # incompressible: lz4 streams stored as they are
        return rng.integers(0, 256, n * dtype.itemsize, dtype=np.uint8).view(dtype)
    return np.sort(rng.integers(0, 36_601, n)).astype(dtype)  # CSR indices within rows


def _frame(arr, cname="lz4", clevel=5, shuffle=ncblosc.SHUFFLE, blocksize=0):
    return ncblosc.compress(arr, cname.encode(), clevel, shuffle, blocksize)


def _check(frame, expected: bytes, fast: bool | None = True):
    got, used_fast = _testing.blosc_decode(frame, len(expected))
    assert got == expected
    if fast is not None:
        assert used_fast == fast
    reference, _ = _testing.blosc_decode(frame, len(expected), impl="c-blosc")
    assert reference == expected


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32", "int32", "uint32"])
@pytest.mark.parametrize("kind", ["counts", "random", "indices"])
@pytest.mark.parametrize("n", [1, 31, 33, 1000, 65_536 + 7, 184_784])
def test_shuffled_frames_decode_as_c_blosc(dtype, kind, n):
    arr = _data(dtype, n, kind, np.random.default_rng(n))
    frame = _frame(arr)
    # Small or incompressible buffers are stored whole ("memcpyed"): c-blosc decodes those.
    _check(frame, arr.tobytes(), fast=not frame[2] & _MEMCPYED)


@pytest.mark.parametrize("blocksize", [128, 256, 1000, 4096, 65_536 + 4])
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
def test_forced_block_sizes_with_partial_last_block(blocksize, dtype):
    # Small blocks are not split (block / itemsize < 128); odd ones leave a partial last block.
    arr = _data(dtype, 50_001, "counts", np.random.default_rng(blocksize))
    _check(_frame(arr, blocksize=blocksize), arr.tobytes())


def _c_blosc_compress(raw: bytes, typesize: int, blocksize: int = 0) -> bytes:
    """c-blosc's own compressor (Debian's libblosc), which takes any typesize for any length."""
    lib = ctypes.CDLL(ctypes.util.find_library("blosc") or "libblosc.so.1")
    dst = ctypes.create_string_buffer(len(raw) + 16 + 1024)
    n = lib.blosc_compress_ctx(5, 1, ctypes.c_size_t(typesize), ctypes.c_size_t(len(raw)), raw, dst,
                               ctypes.c_size_t(len(dst)), b"lz4", ctypes.c_size_t(blocksize), 1)
    assert n > 0
    return dst.raw[:n]


@pytest.mark.parametrize("typesize", [2, 4])
@pytest.mark.parametrize("blocksize", [0, 4096])
def test_partial_trailing_item(typesize, blocksize):
    # A byte count that is not a whole number of items: the tail bytes are stored unshuffled.
    raw = np.random.default_rng(0).integers(0, 9, 100_003, dtype=np.uint8).tobytes()
    frame = _c_blosc_compress(raw, typesize, blocksize)
    assert frame[3] == typesize and frame[2] & 0x01
    _check(frame, raw, fast=True)


@pytest.mark.parametrize("clevel", [1, 3, 9])
@pytest.mark.parametrize("cname", ["lz4", "lz4hc"])
def test_levels_and_lz4hc(cname, clevel):
    arr = _data("float32", 200_000, "counts", np.random.default_rng(clevel))
    _check(_frame(arr, cname=cname, clevel=clevel), arr.tobytes())


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "float64", "int64"])
def test_no_shuffle_any_item_size(dtype):
    arr = _data(dtype, 70_000, "counts", np.random.default_rng(1))
    _check(_frame(arr, shuffle=ncblosc.NOSHUFFLE), arr.tobytes(), fast=True)


@pytest.mark.parametrize("case", ["float64-shuffle", "bitshuffle", "zstd", "blosclz", "clevel0"])
def test_other_frames_go_to_c_blosc(case):
    rng = np.random.default_rng(2)
    arr = _data("float64" if case == "float64-shuffle" else "float32", 50_000, "counts", rng)
    frame = {
        "float64-shuffle": lambda: _frame(arr),
        "bitshuffle": lambda: _frame(arr, shuffle=ncblosc.BITSHUFFLE),
        "zstd": lambda: _frame(arr, cname="zstd"),
        "blosclz": lambda: _frame(arr, cname="blosclz"),
        "clevel0": lambda: _frame(arr, clevel=0),
    }[case]()
    _check(frame, arr.tobytes(), fast=False)


def test_corrupt_frames_raise_or_decode_never_crash():
    arr = _data("float32", 100_000, "counts", np.random.default_rng(3))
    frame = bytearray(_frame(arr, blocksize=32_768))
    rng = np.random.default_rng(4)
    errors = 0
    for _ in range(300):
        bad = bytearray(frame)
        # Damage the block table and stream sizes as well as compressed bytes.
        for pos in rng.integers(16, len(bad), rng.integers(1, 4)):
            bad[pos] = int(rng.integers(0, 256))
        try:
            _testing.blosc_decode(bytes(bad), arr.nbytes)
        except RuntimeError as e:
            assert "blosc" in str(e)
            errors += 1
    assert errors > 0


def test_truncated_stream_size_names_the_block():
    arr = _data("float32", 100_000, "counts", np.random.default_rng(5))
    frame = bytearray(_frame(arr, blocksize=65_536))
    start = int.from_bytes(frame[16:20], "little")  # block 0's first stream size
    frame[start:start + 4] = (10**9).to_bytes(4, "little")
    with pytest.raises(RuntimeError, match=r"blosc: corrupt compressed data in block 0"):
        _testing.blosc_decode(bytes(frame), arr.nbytes)


@pytest.mark.parametrize("shuffle", [ncblosc.SHUFFLE, ncblosc.NOSHUFFLE])
@pytest.mark.parametrize("dtype", ["uint16", "float32"])
@pytest.mark.parametrize("blocksize", [0, 200, 4096, 65_536 + 4])  # 200: shuffled but not split
def test_ranges_decode_as_c_blosc(dtype, blocksize, shuffle):
    """Ranges go through biodali's decoder when a chunk is read partially (reader windows of
    small blocks): any whole-item range, across block boundaries, equals c-blosc's bytes."""
    arr = _data(dtype, 184_784 if blocksize != 200 else 20_000, "counts", np.random.default_rng(7))
    frame = _frame(arr, blocksize=blocksize, shuffle=shuffle)
    item = arr.dtype.itemsize
    rng = np.random.default_rng(8)
    raw = arr.tobytes()
    cases = [(0, arr.size), (0, 1), (arr.size - 1, 1), (1, arr.size - 2)]
    cases += [(int(a), int(rng.integers(1, arr.size - a + 1))) for a in rng.integers(0, arr.size, 40)]
    for first, count in cases:
        got = _testing.blosc_decode_range(frame, arr.nbytes, first * item, count * item)
        assert got == raw[first * item:(first + count) * item], (first, count)
