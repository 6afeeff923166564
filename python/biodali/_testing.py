"""ctypes bindings for biodali's C testing API (csrc/capi/testing_api.cc).

They expose the zarr array layer directly, without a DALI pipeline, so tests can compare it
with zarr-python and benchmarks can measure the decode ceiling. Errors raise RuntimeError with
the engine's message (which names the file and the problem).
"""
from __future__ import annotations

import ctypes
import functools
import json
import os

import numpy as np

import biodali

_ERR_CAP = 4096


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    lib = ctypes.CDLL(str(biodali.library_path()))
    c_char_p, c_size_t, c_int, c_int64 = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_int,
                                          ctypes.c_int64)
    p_i64 = ctypes.POINTER(c_int64)
    lib.biodali_zarr_info.argtypes = [c_char_p, c_char_p, c_size_t, c_char_p, c_size_t]
    lib.biodali_zarr_read_region.argtypes = [
        c_char_p, p_i64, p_i64, c_int, ctypes.c_void_p, c_size_t, c_char_p, c_size_t]
    lib.biodali_decode_ceiling.argtypes = [
        c_char_p, c_int, c_int64, ctypes.POINTER(ctypes.c_double), p_i64, p_i64, c_char_p, c_size_t]
    lib.biodali_zarr_read_chunks.argtypes = [
        c_char_p, c_int, ctypes.c_void_p, c_size_t, c_char_p, c_size_t]
    lib.biodali_crc32c.argtypes = [
        ctypes.c_void_p, c_size_t, c_int, ctypes.POINTER(ctypes.c_uint32), c_char_p, c_size_t]
    lib.biodali_zarr_read_strings.argtypes = [
        c_char_p, ctypes.c_void_p, c_size_t, ctypes.POINTER(c_size_t), p_i64, c_char_p, c_size_t]
    lib.biodali_zarr_read_chunk_ranges.argtypes = [
        c_char_p, c_int, c_int, c_int64, p_i64, p_i64, p_i64, ctypes.c_void_p, c_size_t,
        ctypes.POINTER(c_int), c_char_p, c_size_t]
    lib.biodali_zarr_time_chunk_range.argtypes = [
        c_char_p, c_int, c_int64, c_int64, c_int64, c_int64, ctypes.POINTER(ctypes.c_double),
        c_char_p, c_size_t]
    lib.biodali_blosc_decode.argtypes = [
        ctypes.c_void_p, c_size_t, ctypes.c_void_p, c_size_t, c_int, ctypes.POINTER(c_int), c_char_p,
        c_size_t]
    lib.biodali_blosc_decode_range.argtypes = [
        ctypes.c_void_p, c_size_t, c_size_t, c_size_t, ctypes.c_void_p, c_size_t, c_char_p, c_size_t]
    for fn in (lib.biodali_blosc_decode, lib.biodali_blosc_decode_range, lib.biodali_zarr_info, lib.biodali_zarr_read_region, lib.biodali_zarr_read_chunks,
               lib.biodali_decode_ceiling, lib.biodali_crc32c, lib.biodali_zarr_read_strings,
               lib.biodali_zarr_read_chunk_ranges, lib.biodali_zarr_time_chunk_range):
        fn.restype = c_int
    return lib


def _call(fn, *args) -> None:
    err = ctypes.create_string_buffer(_ERR_CAP)
    if fn(*args, err, _ERR_CAP) != 0:
        raise RuntimeError(err.value.decode("utf-8", "replace"))


def _path(path) -> bytes:
    return os.fsencode(os.fspath(path))


def zarr_info(path) -> dict:
    """{"shape", "dtype", "read_chunk_shape", "storage_chunk_shape", "sharded", "zarr_format"}."""
    out = ctypes.create_string_buffer(1 << 16)
    _call(_lib().biodali_zarr_info, _path(path), out, len(out))
    return json.loads(out.value.decode())


def read_region(path, start, count) -> np.ndarray:
    """The hyper-rectangle [start, start + count) in the stored dtype, native byte order."""
    info = zarr_info(path)
    start = np.ascontiguousarray(start, dtype=np.int64)
    count = np.ascontiguousarray(count, dtype=np.int64)
    if start.shape != count.shape or start.ndim != 1:
        raise ValueError("start and count must be 1-D sequences of equal length")
    out = np.empty(tuple(int(c) for c in count), dtype=np.dtype(info["dtype"]))
    p_i64 = ctypes.POINTER(ctypes.c_int64)
    _call(_lib().biodali_zarr_read_region, _path(path), start.ctypes.data_as(p_i64),
          count.ctypes.data_as(p_i64), len(start), out.ctypes.data_as(ctypes.c_void_p), out.nbytes)
    return out


def read_array(path) -> np.ndarray:
    """The whole array."""
    shape = zarr_info(path)["shape"]
    return read_region(path, [0] * len(shape), shape)


def read_chunks(path, num_threads: int = 1) -> np.ndarray:
    """Every read chunk, decoded by `num_threads` threads sharing one array: shape
    (*read_grid_shape, *read_chunk_shape); edge chunks are whole, as stored."""
    info = zarr_info(path)
    chunk_shape = info["read_chunk_shape"]
    grid = [-(-s // c) for s, c in zip(info["shape"], chunk_shape)]
    out = np.empty(tuple(grid) + tuple(chunk_shape), dtype=np.dtype(info["dtype"]))
    _call(_lib().biodali_zarr_read_chunks, _path(path), int(num_threads),
          out.ctypes.data_as(ctypes.c_void_p), out.nbytes)
    return out


def read_strings(path) -> list[str]:
    """A whole 1-D (or 0-d) zarr string array (vlen-utf8), items decoded as UTF-8."""
    lib = _lib()
    needed = ctypes.c_size_t()
    count = ctypes.c_int64()
    buf = ctypes.create_string_buffer(1 << 16)
    _call(lib.biodali_zarr_read_strings, _path(path), buf, len(buf), ctypes.byref(needed),
          ctypes.byref(count))
    if needed.value > len(buf):
        buf = ctypes.create_string_buffer(needed.value)
        _call(lib.biodali_zarr_read_strings, _path(path), buf, len(buf), ctypes.byref(needed),
              ctypes.byref(count))
    raw = memoryview(buf)[:needed.value]
    out, pos = [], 0
    for _ in range(count.value):
        n = int.from_bytes(raw[pos:pos + 4], "little")
        out.append(bytes(raw[pos + 4:pos + 4 + n]).decode("utf-8"))
        pos += 4 + n
    return out


def read_chunk_ranges(path, ranges, num_threads: int = 1, in_pieces: bool = False):
    """Array::DecodeReadChunkRange of a 1-D array for each (chunk_index, element_begin,
    num_elements) in `ranges`, decoded by num_threads threads sharing one Array:
    (list of arrays, supports_partial_decode). in_pieces: DecodeReadChunkRangeInPieces
    instead (pieces checked to arrive in order and tile each range)."""
    info = zarr_info(path)
    table = np.ascontiguousarray(np.asarray(ranges, dtype=np.int64).reshape(-1, 3).T)
    counts = np.maximum(table[2], 0)
    out = np.empty(int(counts.sum()), dtype=np.dtype(info["dtype"]))
    partial = ctypes.c_int()
    p_i64 = ctypes.POINTER(ctypes.c_int64)
    _call(_lib().biodali_zarr_read_chunk_ranges, _path(path), int(num_threads), int(in_pieces),
          table.shape[1],
          table[0].ctypes.data_as(p_i64), table[1].ctypes.data_as(p_i64),
          table[2].ctypes.data_as(p_i64), out.ctypes.data_as(ctypes.c_void_p), out.nbytes,
          ctypes.byref(partial))
    return np.split(out, np.cumsum(counts)[:-1]), bool(partial.value)


def read_chunk_range(path, chunk_index: int, element_begin: int, num_elements: int,
                     in_pieces: bool = False):
    """Array::DecodeReadChunkRange (or ...InPieces) of one range: (elements,
    supports_partial_decode)."""
    parts, partial = read_chunk_ranges(path, [(chunk_index, element_begin, num_elements)],
                                       in_pieces=in_pieces)
    return parts[0], partial


def time_chunk_range(path, num_threads: int, chunk_index: int, element_begin: int,
                     num_elements: int | None, num_calls: int) -> float:
    """Wall seconds (best of 3) for num_calls decodes of one read chunk on num_threads threads:
    DecodeReadChunkRange of [element_begin, element_begin + num_elements), or DecodeReadChunk
    of the whole chunk when num_elements is None."""
    seconds = ctypes.c_double()
    _call(_lib().biodali_zarr_time_chunk_range, _path(path), int(num_threads), int(chunk_index),
          int(element_begin), -1 if num_elements is None else int(num_elements), int(num_calls),
          ctypes.byref(seconds))
    return seconds.value


def decode_ceiling(path, num_threads: int, max_chunks: int = 256) -> dict:
    """Decode-only throughput of the first shard (sharded) or first `max_chunks` chunks,
    best of 3: {"seconds", "decoded_nbytes", "num_chunks", "gb_per_s"}."""
    seconds = ctypes.c_double()
    decoded_nbytes = ctypes.c_int64()
    num_chunks = ctypes.c_int64()
    _call(_lib().biodali_decode_ceiling, _path(path), int(num_threads), int(max_chunks),
          ctypes.byref(seconds), ctypes.byref(decoded_nbytes), ctypes.byref(num_chunks))
    return {
        "seconds": seconds.value,
        "decoded_nbytes": decoded_nbytes.value,
        "num_chunks": num_chunks.value,
        "gb_per_s": (decoded_nbytes.value / seconds.value / 1e9 if seconds.value > 0
                     else float("inf")),
    }


def blosc_decode(frame: bytes, decoded_nbytes: int, impl: str = "auto") -> tuple[bytes, bool]:
    """Decodes one blosc frame as readers do ("auto": biodali's lz4 frame decoder where it
    applies, else c-blosc) or with c-blosc only ("c-blosc"). Returns (bytes, fast decoder used)."""
    impl_code = {"auto": 0, "c-blosc": 1}[impl]
    src = ctypes.create_string_buffer(bytes(frame), len(frame))
    dst = ctypes.create_string_buffer(max(decoded_nbytes, 1))
    used_fast = ctypes.c_int()
    _call(_lib().biodali_blosc_decode, src, len(frame), dst, decoded_nbytes, impl_code,
          ctypes.byref(used_fast))
    return dst.raw[:decoded_nbytes], bool(used_fast.value)


def blosc_decode_range(frame: bytes, decoded_nbytes: int, byte_begin: int, nbytes: int) -> bytes:
    """Bytes [byte_begin, byte_begin + nbytes) of a blosc frame, decoded as partial chunk reads do."""
    src = ctypes.create_string_buffer(bytes(frame), len(frame))
    dst = ctypes.create_string_buffer(max(nbytes, 1))
    _call(_lib().biodali_blosc_decode_range, src, len(frame), decoded_nbytes, byte_begin, dst, nbytes)
    return dst.raw[:nbytes]


def crc32c(data: bytes, impl: str = "auto") -> int:
    """CRC-32C of `data` with the chosen implementation: "auto", "portable" or "hardware"."""
    impl_code = {"auto": 0, "portable": 1, "hardware": 2}[impl]
    buf = ctypes.create_string_buffer(bytes(data), len(data))
    crc = ctypes.c_uint32()
    _call(_lib().biodali_crc32c, buf, len(data), impl_code, ctypes.byref(crc))
    return crc.value


_IO_MODES = {"map": 0, "read": 1, "lazy": 2}


def io_fetch(paths, ranges, *, depth: int = 16, max_in_flight: int = 256 << 20,
             coalesce_gap: int = 64 << 10, max_request: int = 8 << 20, mode: str = "map",
             num_waited: int | None = None) -> tuple[list[bytes], dict]:
    """Fetches ``ranges`` ((file_index, offset, length) into ``paths``) through biodali's I/O
    scheduler (one batch, as a reader submits a window), waiting for the first ``num_waited``
    (default all) in order; the rest are cancelled when the batch is dropped. Returns the
    bytes of the waited ranges and the scheduler's statistics."""
    lib = _lib()
    fn = lib.biodali_io_fetch
    if not fn.argtypes:
        fn.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.POINTER(ctypes.c_int64),
                       ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_uint64), ctypes.c_int64,
                       ctypes.c_int, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_uint64, ctypes.c_int,
                       ctypes.c_int64, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_int64),
                       ctypes.c_char_p, ctypes.c_size_t]
        fn.restype = ctypes.c_int
    n = len(ranges)
    num_waited = n if num_waited is None else num_waited
    c_paths = (ctypes.c_char_p * len(paths))(*[_path(p) for p in paths])
    file_index = np.array([r[0] for r in ranges], dtype=np.int64)
    offsets = np.array([r[1] for r in ranges], dtype=np.uint64)
    lengths = np.array([r[2] for r in ranges], dtype=np.uint64)
    total = int(lengths[:num_waited].sum()) if n else 0
    dst = np.empty(max(total, 1), dtype=np.uint8)
    stats = np.zeros(6, dtype=np.int64)
    _call(fn, c_paths, len(paths), file_index.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)),
          offsets.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64)),
          lengths.ctypes.data_as(ctypes.POINTER(ctypes.c_uint64)), n, depth, max_in_flight,
          coalesce_gap, max_request, _IO_MODES[mode], num_waited, dst.ctypes.data, dst.nbytes,
          stats.ctypes.data_as(ctypes.POINTER(ctypes.c_int64)))
    out, at = [], 0
    for length in lengths[:num_waited]:
        out.append(dst[at:at + int(length)].tobytes())
        at += int(length)
    keys = ("ranges", "requests", "requested_nbytes", "peak_in_flight_nbytes", "cancelled_requests",
            "ready_requests")
    return out, dict(zip(keys, (int(v) for v in stats)))
