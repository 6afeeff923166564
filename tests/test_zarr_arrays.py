"""The zarr array layer (csrc/zarr, csrc/codecs) against zarr-python.

Every store is written here by zarr-python 3.1 / numcodecs; the oracle is zarr-python reading
the same store, compared bitwise (as bytes, so NaNs compare equal). Error tests check that the
message names the file and the problem.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import struct

import crc32c as crc32c_ref
import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import (BloscCodec, BytesCodec, Crc32cCodec, GzipCodec, ShardingCodec,
                         TransposeCodec, ZstdCodec)

from biodali import _testing as bt

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning")

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64"]
BLOSC = [(cname, shuffle) for cname in ("lz4", "lz4hc", "zstd", "zlib", "blosclz")
         for shuffle in (0, 1, 2)]
SHUFFLE_NAMES = {0: "noshuffle", 1: "shuffle", 2: "bitshuffle"}


# ---------------------------------------------------------------------------------------------
# helpers

def make_data(shape, dtype, seed=0):
    """Part smooth (compressible), part random, with NaN/inf for floats."""
    rng = np.random.default_rng(seed)
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    if dt.kind == "b":
        return (rng.random(n) < 0.3).reshape(shape)
    idx = np.arange(n)
    if dt.kind == "f":
        v = np.where(idx % 3 == 0, rng.standard_normal(n) * 1e3, np.linspace(-50, 50, n))
        v = v.astype(dt)
        v[7::29] = np.nan
        v[11::31] = -np.inf
        return v.reshape(shape)
    info = np.iinfo(dt)
    rnd = rng.integers(info.min, info.max, size=n, dtype=dt, endpoint=True)
    return np.where(idx % 4 == 0, rnd, (idx % 97).astype(dt)).reshape(shape)


def as_bytes(a):
    a = np.asarray(a)
    a = a.astype(a.dtype.newbyteorder("="))  # zarr-python returns the stored byte order
    return a.dtype, a.shape, np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def assert_bitwise_equal(got, expected):
    got_dtype, got_shape, got_bytes = as_bytes(got)
    exp_dtype, exp_shape, exp_bytes = as_bytes(expected)
    assert (got_dtype, got_shape) == (exp_dtype, exp_shape)
    np.testing.assert_array_equal(got_bytes, exp_bytes)


def check_array(path, num_regions=3):
    """read_array and a few random read_region boxes equal zarr-python's reading."""
    expected = zarr.open_array(str(path), mode="r")[...]
    assert_bitwise_equal(bt.read_array(path), expected)
    rng = np.random.default_rng(1)
    shape = expected.shape
    for _ in range(num_regions if expected.size else 0):
        start = [int(rng.integers(0, s)) for s in shape]
        count = [int(rng.integers(1, s - a + 1)) for s, a in zip(shape, start)]
        box = tuple(slice(a, a + c) for a, c in zip(start, count))
        assert_bitwise_equal(bt.read_region(path, start, count), expected[box])
    return expected


def write_v2(path, data, chunks, compressor=None, fill_value=0, dtype=None, **kwargs):
    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=dtype or data.dtype,
                            zarr_format=2, compressors=compressor, filters=None,
                            fill_value=fill_value, **kwargs)
    arr[...] = data
    return path


def write_v3(path, data, chunks, compressors=None, serializer="auto", fill_value=0, **kwargs):
    arr = zarr.create_array(str(path), shape=data.shape, chunks=chunks, dtype=data.dtype,
                            compressors=compressors, serializer=serializer,
                            fill_value=fill_value, **kwargs)
    arr[...] = data
    return path


def v2_compressor(name):
    if isinstance(name, tuple):
        return numcodecs.Blosc(cname=name[0], clevel=5, shuffle=name[1])
    return {"zstd": numcodecs.Zstd(level=3), "gzip": numcodecs.GZip(level=5),
            "zlib": numcodecs.Zlib(level=5), "none": None}[name]


def v3_compressors(name):
    if isinstance(name, tuple):
        return [BloscCodec(cname=name[0], clevel=5, shuffle=SHUFFLE_NAMES[name[1]])]
    return {"zstd": [ZstdCodec(level=3)], "zstd-checksum": [ZstdCodec(level=1, checksum=True)],
            "gzip": [GzipCodec(level=5)], "none": None, "crc32c": [Crc32cCodec()],
            "zstd+crc32c": [ZstdCodec(), Crc32cCodec()],
            "blosc+crc32c": [BloscCodec(cname="lz4"), Crc32cCodec()],
            "crc32c+zstd": [Crc32cCodec(), ZstdCodec()]}[name]


def chunk_files(path):
    """Every stored chunk/shard file under an array directory, sorted."""
    out = []
    for root, _, files in os.walk(path):
        out += [os.path.join(root, f) for f in files
                if f not in ("zarr.json", ".zarray", ".zattrs", ".zgroup")]
    return sorted(out)


@contextlib.contextmanager
def raises_naming(path, *problems):
    """Expects a RuntimeError whose message names `path` followed by one of `problems`."""
    with pytest.raises(RuntimeError) as info:
        yield
    msg = str(info.value)
    assert str(path) in msg, msg
    # look for the problem after the path: tmp_path holds the test's name
    assert any(p in msg.split(str(path), 1)[1] for p in problems), msg


# ---------------------------------------------------------------------------------------------
# codecs x formats

CODECS_V2 = BLOSC + ["zstd", "gzip", "zlib", "none"]
CODECS_V3 = BLOSC + ["zstd", "zstd-checksum", "gzip", "none", "crc32c", "zstd+crc32c",
                     "blosc+crc32c", "crc32c+zstd"]


@pytest.mark.parametrize("dtype", ["<f4", ">i2"])
@pytest.mark.parametrize("codec", CODECS_V2, ids=str)
def test_v2_codecs(tmp_path, codec, dtype):
    data = make_data((13, 9), np.dtype(dtype).newbyteorder("="))
    path = write_v2(tmp_path / "a", data, (4, 5), v2_compressor(codec), dtype=dtype)
    assert bt.zarr_info(path) == {"shape": [13, 9], "dtype": np.dtype(dtype).name,
                                  "read_chunk_shape": [4, 5], "storage_chunk_shape": [4, 5],
                                  "sharded": False, "zarr_format": 2}
    check_array(path)


@pytest.mark.parametrize("dtype,endian", [("float32", "little"), ("int16", "big")])
@pytest.mark.parametrize("codec", CODECS_V3, ids=str)
def test_v3_codecs(tmp_path, codec, dtype, endian):
    data = make_data((13, 9), dtype)
    path = write_v3(tmp_path / "a", data, (4, 5), v3_compressors(codec),
                    serializer=BytesCodec(endian=endian))
    info = bt.zarr_info(path)
    assert (info["zarr_format"], info["dtype"], info["sharded"]) == (3, dtype, False)
    check_array(path)


V2_TYPESTRS = ["|b1", "|i1", "|u1"] + [f"{e}{k}{n}" for e in "<>" for k, n in
                                      [("i", 2), ("i", 4), ("i", 8), ("u", 2), ("u", 4),
                                       ("u", 8), ("f", 2), ("f", 4), ("f", 8)]]


@pytest.mark.parametrize("compressor", ["none", ("lz4", 1)], ids=str)
@pytest.mark.parametrize("typestr", V2_TYPESTRS)
def test_v2_dtypes(tmp_path, typestr, compressor):
    data = make_data((29,), np.dtype(typestr).newbyteorder("="))
    path = write_v2(tmp_path / "a", data, (8,), v2_compressor(compressor), dtype=typestr)
    assert bt.zarr_info(path)["dtype"] == np.dtype(typestr).name
    check_array(path)


@pytest.mark.parametrize("compressor", ["none", "zstd"])
@pytest.mark.parametrize("endian", ["little", "big"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_v3_dtypes(tmp_path, dtype, endian, compressor):
    data = make_data((29,), dtype)
    path = write_v3(tmp_path / "a", data, (8,), v3_compressors(compressor),
                    serializer=BytesCodec(endian=endian))
    check_array(path)


# Includes shapes whose chunks span whole rows ((12, 5), (9, 2, 3)): whole chunks then decode
# straight into the destination instead of through a scratch chunk.
SHAPES = [((37,), (8,)), ((13, 9), (4, 5)), ((12, 10), (4, 5)), ((12, 5), (4, 5)),
          ((5, 6, 7), (2, 4, 3)), ((9, 2, 3), (2, 2, 3)), ((3, 1, 2, 5), (2, 1, 2, 2)),
          ((0, 5), (2, 2)), ((), ())]


@pytest.mark.parametrize("fmt", ["v2", "v3", "v3-sharded"])
@pytest.mark.parametrize("shape,chunks", SHAPES, ids=str)
def test_shapes(tmp_path, shape, chunks, fmt):
    data = make_data(shape, "uint16")
    if fmt == "v2":
        path = write_v2(tmp_path / "a", data, chunks, v2_compressor(("lz4", 1)))
    elif fmt == "v3":
        path = write_v3(tmp_path / "a", data, chunks, v3_compressors("zstd"))
    else:
        if not shape:
            pytest.skip("zarr-python cannot shard a 0-d array")
        inner = tuple(max(1, c // 2) for c in chunks)
        shard = tuple(i * 2 for i in inner)
        path = write_v3(tmp_path / "a", data, inner, v3_compressors(("lz4", 1)), shards=shard)
        assert bt.zarr_info(path)["read_chunk_shape"] == list(inner)
    check_array(path)


@pytest.mark.parametrize("fmt,encoding", [
    ("v2", {"name": "v2", "separator": "/"}), ("v2", {"name": "v2", "separator": "."}),
    ("v3", {"name": "default", "separator": "."}), ("v3", {"name": "default", "separator": "/"}),
    ("v3", {"name": "v2", "separator": "."}), ("v3", {"name": "v2", "separator": "/"})], ids=str)
def test_chunk_key_encodings(tmp_path, fmt, encoding):
    data = make_data((6, 7, 5), "int32")
    write = write_v2 if fmt == "v2" else write_v3
    path = write(tmp_path / "a", data, (4, 3, 2), None, chunk_key_encoding=encoding)
    check_array(path)


# ---------------------------------------------------------------------------------------------
# sharding

INNER_CODECS = {
    "blosc": [BytesCodec(), BloscCodec(cname="lz4", clevel=3, shuffle="shuffle")],
    "big-zstd-crc": [BytesCodec(endian="big"), ZstdCodec(level=1), Crc32cCodec()],
    "plain": [BytesCodec()],
}
INDEX_CODECS = {"crc": [BytesCodec(), Crc32cCodec()], "plain": [BytesCodec()]}


@pytest.mark.parametrize("index_codecs", INDEX_CODECS, ids=str)
@pytest.mark.parametrize("location", ["end", "start"])
@pytest.mark.parametrize("inner", INNER_CODECS, ids=str)
def test_sharded(tmp_path, inner, location, index_codecs):
    data = make_data((23, 10), "float32")
    sharding = ShardingCodec(chunk_shape=(3, 4), codecs=INNER_CODECS[inner],
                             index_codecs=INDEX_CODECS[index_codecs], index_location=location)
    path = write_v3(tmp_path / "a", data, (6, 8), None, serializer=sharding,
                    fill_value=float("nan"))
    info = bt.zarr_info(path)
    assert info["sharded"] and info["read_chunk_shape"] == [3, 4]
    assert info["storage_chunk_shape"] == [6, 8]
    check_array(path, num_regions=5)


def test_sharded_absent_inner_chunks_and_missing_shards(tmp_path):
    data = np.full((20, 12), 5, dtype="int64")
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(2, 3),
                            shards=(8, 6), dtype="int64", fill_value=5,
                            compressors=v3_compressors("zstd"))
    arr[0:2, 0:3] = 1     # one inner chunk of shard (0, 0); its other inner chunks are absent
    arr[9, 7] = -2        # shard (1, 1); shards (0, 1), (1, 0), (2, *) are never written
    files = chunk_files(tmp_path / "a")
    assert [os.path.relpath(f, tmp_path / "a") for f in files] == ["c/0/0", "c/1/1"]
    expected = check_array(tmp_path / "a", num_regions=5)
    assert expected[0, 0] == 1 and expected[9, 7] == -2 and expected[19, 11] == 5


@pytest.mark.parametrize("sharded", [False, True])
def test_parallel_chunk_reads(tmp_path, sharded):
    """Threads sharing one array (its shard-index and open-file caches; 45 shards against a
    file cache of 8) decode the same chunks as one thread, and those match zarr-python."""
    data = make_data((90, 40), "float32")
    if sharded:
        path = write_v3(tmp_path / "a", data, (4, 8), v3_compressors(("lz4", 1)),
                        shards=(8, 16), fill_value=float("nan"))
    else:
        path = write_v2(tmp_path / "a", data, (4, 8), v2_compressor("zstd"))
    serial = bt.read_chunks(path, 1)
    for threads in (2, 8):
        assert_bitwise_equal(bt.read_chunks(path, threads), serial)
    gy, gx, cy, cx = serial.shape
    assembled = serial.transpose(0, 2, 1, 3).reshape(gy * cy, gx * cx)[:90, :40]
    assert_bitwise_equal(assembled, zarr.open_array(str(path), mode="r")[...])


# ---------------------------------------------------------------------------------------------
# fill values and missing chunks

FILLS = [("float32", 0.0), ("float32", float("nan")), ("float64", float("-inf")),
         ("float16", float("nan")), ("float16", 1.5), ("int16", -3), ("uint64", 2**64 - 1),
         ("bool", True), ("uint8", 7)]


@pytest.mark.parametrize("fmt", ["v2", "v3", "v3-sharded"])
@pytest.mark.parametrize("dtype,fill", FILLS, ids=str)
def test_missing_chunks_read_as_fill(tmp_path, dtype, fill, fmt):
    path = str(tmp_path / "a")
    layout = {"v2": dict(chunks=(3, 4), zarr_format=2), "v3": dict(chunks=(3, 4)),
              "v3-sharded": dict(chunks=(3, 2), shards=(6, 4))}[fmt]
    # v2 stores big-endian: the fill value must still come out in native byte order
    stored = np.dtype(dtype).newbyteorder(">") if fmt == "v2" else dtype
    arr = zarr.create_array(path, shape=(10, 9), dtype=stored, fill_value=fill, **layout)
    arr[4:6, 4:6] = make_data((2, 2), dtype)
    assert 0 < len(chunk_files(path)) < 6
    check_array(path)


def test_v2_null_fill_value_reads_as_zero(tmp_path):
    path = str(tmp_path / "a")
    arr = zarr.create_array(path, shape=(7,), chunks=(3,), dtype="<f8", zarr_format=2,
                            fill_value=None)
    arr[0] = 1.0
    assert json.load(open(os.path.join(path, ".zarray")))["fill_value"] is None
    np.testing.assert_array_equal(bt.read_array(path), [1, 0, 0, 0, 0, 0, 0])


# ---------------------------------------------------------------------------------------------
# crc32c and decode ceiling

def test_crc32c_implementations_agree():
    assert bt.crc32c(b"123456789") == 0xE3069283  # the standard check value
    rng = np.random.default_rng(0)
    for n in list(range(0, 40)) + [1000, 4099, 65536 + 3]:
        data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
        want = crc32c_ref.crc32c(data)
        assert bt.crc32c(data, "portable") == want
        assert bt.crc32c(data, "hardware") == want
        assert bt.crc32c(data) == want


@pytest.mark.parametrize("sharded", [False, True])
def test_decode_ceiling(tmp_path, sharded):
    data = make_data((64, 32), "float32")
    if sharded:
        path = write_v3(tmp_path / "a", data, (4, 32), v3_compressors(("lz4", 1)), shards=(32, 32))
    else:
        path = write_v2(tmp_path / "a", data, (4, 32), v2_compressor(("lz4", 1)))
    for threads in (1, 2):
        result = bt.decode_ceiling(path, threads, max_chunks=5)
        want_chunks = 8 if sharded else 5
        assert result["num_chunks"] == want_chunks
        assert result["decoded_nbytes"] == want_chunks * 4 * 32 * 4
        assert result["seconds"] > 0


# ---------------------------------------------------------------------------------------------
# errors

def test_missing_metadata(tmp_path):
    with raises_naming(tmp_path / "nope", "no zarr array metadata"):
        bt.zarr_info(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with raises_naming(tmp_path / "empty", "no zarr array metadata"):
        bt.read_array(tmp_path / "empty")
    zarr.open_group(str(tmp_path / "g"), mode="w")
    with raises_naming(tmp_path / "g", "group, not an array"):
        bt.zarr_info(tmp_path / "g")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "zarr.json").write_text("{not json")
    with raises_naming(tmp_path / "bad" / "zarr.json", "invalid JSON"):
        bt.zarr_info(tmp_path / "bad")


@pytest.mark.parametrize("fmt,codec,problem", [
    ("v2", ("lz4", 1), "truncated"), ("v2", ("zstd", 2), "truncated"),
    ("v2", "zstd", "truncated"), ("v2", "gzip", "truncated"), ("v2", "zlib", "truncated"),
    ("v2", "none", "truncated"), ("v3", "zstd", "truncated"), ("v3", "crc32c", "checksum mismatch"),
], ids=str)
def test_truncated_chunk(tmp_path, fmt, codec, problem):
    data = make_data((40, 40), "float64")
    if fmt == "v2":
        path = write_v2(tmp_path / "a", data, (20, 20), v2_compressor(codec))
    else:
        path = write_v3(tmp_path / "a", data, (20, 20), v3_compressors(codec))
    victim = chunk_files(path)[1]
    size = os.path.getsize(victim)
    with open(victim, "r+b") as f:
        f.truncate(size // 2)
    with raises_naming(victim, problem):
        bt.read_array(path)


def write_sharded(path, location, index_codecs="crc", inner="blosc"):
    data = make_data((24, 16), "int32")
    sharding = ShardingCodec(chunk_shape=(4, 4), codecs=INNER_CODECS[inner],
                             index_codecs=INDEX_CODECS[index_codecs], index_location=location)
    return write_v3(path, data, (12, 16), None, serializer=sharding)


@pytest.mark.parametrize("location", ["end", "start"])
@pytest.mark.parametrize("keep", [0.5, 0.999, 0.01])
def test_truncated_shard(tmp_path, location, keep):
    path = write_sharded(tmp_path / "a", location)
    victim = chunk_files(path)[0]
    with open(victim, "r+b") as f:
        f.truncate(int(os.path.getsize(victim) * keep))
    with raises_naming(victim, "truncated", "checksum mismatch", "past the end"):
        bt.read_array(path)


@pytest.mark.parametrize("location", ["end", "start"])
def test_shard_index_entry_past_end(tmp_path, location):
    path = write_sharded(tmp_path / "a", location)
    victim = chunk_files(path)[0]
    blob = bytearray(open(victim, "rb").read())
    num_inner = 3 * 4
    index_nbytes = num_inner * 16 + 4
    start = 0 if location == "start" else len(blob) - index_nbytes
    entries = list(struct.unpack(f"<{2 * num_inner}Q", blob[start:start + index_nbytes - 4]))
    entries[2 * 5 + 1] = len(blob)  # inner chunk 5: nbytes = the whole file, from its offset
    payload = struct.pack(f"<{2 * num_inner}Q", *entries)
    blob[start:start + index_nbytes] = payload + struct.pack("<I", crc32c_ref.crc32c(payload))
    open(victim, "wb").write(bytes(blob))
    with raises_naming(victim, "shard index entry 5", "past the end"):
        bt.read_region(path, [0, 0], [1, 1])


@pytest.mark.parametrize("codec", [("lz4", 1), ("zstd", 1), ("blosclz", 0), ("zlib", 2), "zstd",
                                   "zstd-checksum", "gzip", "zlib"], ids=str)
def test_corrupt_compressed_bytes(tmp_path, codec):
    """Garbage in a compressed stream is reported. Without a checksum, garbage inside a literal
    run decodes to wrong values that no decoder can notice, so the garbage goes where the
    format has structure: for blosc right after the header and block offsets, for zstd over
    the frame and first block headers; checksummed zstd, gzip and zlib catch it anywhere."""
    data = (np.arange(64 * 64, dtype="float32") % 13).reshape(64, 64)  # compresses well
    if codec == "zstd-checksum":
        path = write_v3(tmp_path / "a", data, (64, 64), v3_compressors(codec))
    else:
        path = write_v2(tmp_path / "a", data, (64, 64), v2_compressor(codec))
    victim = chunk_files(path)[0]
    blob = bytearray(open(victim, "rb").read())
    if isinstance(codec, tuple):
        nbytes, blocksize = struct.unpack("<II", blob[4:12])
        pos = 16 + 4 * -(-nbytes // blocksize)  # after the header and block start offsets
    elif codec == "zstd":
        pos = 4  # after the magic number
    else:
        pos = len(blob) // 2 - 8
    blob[pos:pos + 16] = b"\xff" * 16
    open(victim, "wb").write(bytes(blob))
    with raises_naming(victim, "corrupt", "decodes to"):
        bt.read_array(path)


@pytest.mark.parametrize("codec", [("lz4", 1), ("zstd", 2), ("lz4hc", 0), "zstd", "gzip", "zlib"],
                         ids=str)
def test_random_corruption_never_crashes(tmp_path, codec):
    """Flipped bytes anywhere in a chunk give an error or (undetectably) wrong values, never a
    crash or a hang."""
    data = make_data((50, 40), "int32")
    path = write_v2(tmp_path / "a", data, (50, 40), v2_compressor(codec))
    victim = chunk_files(path)[0]
    for _ in corrupted_copies(victim, np.random.default_rng(0)):
        try:
            bt.read_array(path)
        except RuntimeError as exc:
            assert victim in str(exc)


def corrupted_copies(victim, rng, rounds=60):
    """Rewrites `victim` `rounds` times, each time its original bytes with 1-4 random bytes
    flipped; yields after each rewrite."""
    original = open(victim, "rb").read()
    for _ in range(rounds):
        blob = bytearray(original)
        for pos in rng.integers(0, len(blob), size=int(rng.integers(1, 5))):
            blob[pos] ^= int(rng.integers(1, 256))
        open(victim, "wb").write(bytes(blob))
        yield


@pytest.mark.parametrize("where", ["data", "inner-chunk", "shard-index"])
def test_crc32c_mismatch(tmp_path, where):
    if where == "data":
        path = write_v3(tmp_path / "a", make_data((30,), "int32"), (10,), [Crc32cCodec()])
        victim = chunk_files(path)[1]
        offset = 5  # inside the payload
    else:
        path = write_sharded(tmp_path / "a", "end", inner="big-zstd-crc")
        victim = chunk_files(path)[0]
        size = os.path.getsize(victim)
        offset = 3 if where == "inner-chunk" else size - 10  # data start / inside the index
    blob = bytearray(open(victim, "rb").read())
    blob[offset] ^= 0x40
    open(victim, "wb").write(bytes(blob))
    with raises_naming(victim, "checksum mismatch"):
        bt.read_array(path)


def test_decoded_size_mismatch(tmp_path):
    """A chunk whose stored size disagrees with the metadata is an error, not a partial read."""
    for name, compressor in [("blosc", ("lz4", 1)), ("zstd", "zstd"), ("none", "none")]:
        small = write_v2(tmp_path / f"small-{name}", make_data((20,), "int32"), (10,),
                         v2_compressor(compressor))
        big = write_v2(tmp_path / f"big-{name}", make_data((40,), "int32"), (20,),
                       v2_compressor(compressor))
        shutil.copy(os.path.join(small, "0"), os.path.join(big, "1"))
        with raises_naming(os.path.join(big, "1"), "expected 80"):
            bt.read_array(big)


UNSUPPORTED = {  # case -> (create_array arguments, problem); data is written with them
    "v2-lzma": (dict(zarr_format=2, compressors=numcodecs.LZMA()),
                "unsupported codec (compressor) 'lzma'"),
    "v2-lz4": (dict(zarr_format=2, compressors=numcodecs.LZ4()),
               "unsupported codec (compressor) 'lz4'"),
    "v2-delta-filter": (dict(zarr_format=2, filters=[numcodecs.Delta(dtype="<i4")]),
                        "unsupported filter 'delta'"),
    "v2-order-F": (dict(zarr_format=2, order="F"), "order 'F' is not supported"),
    "v3-transpose": (dict(filters=[TransposeCodec(order=(1, 0))]),
                     "unsupported codec 'transpose'"),
}


@pytest.mark.parametrize("case", UNSUPPORTED)
def test_unsupported_codec(tmp_path, case):
    kwargs, problem = UNSUPPORTED[case]
    path = str(tmp_path / "a")
    arr = zarr.create_array(path, shape=(4, 6), chunks=(2, 3), dtype="<i4", **kwargs)
    arr[...] = make_data((4, 6), "int32")
    meta = os.path.join(path, ".zarray" if case.startswith("v2") else "zarr.json")
    with raises_naming(meta, problem):
        bt.read_array(path)


def test_identity_transpose_is_accepted(tmp_path):
    data = make_data((4, 6), "int32")
    arr = zarr.create_array(str(tmp_path / "a"), shape=data.shape, chunks=(3, 4), dtype="int32",
                            filters=[TransposeCodec(order=(0, 1))])
    arr[...] = data
    check_array(tmp_path / "a")


@pytest.mark.parametrize("fmt,dtype,name", [
    ("v2", "complex64", "'<c8'"), ("v3", "complex64", "'complex64'"), ("v2", str, "'|O'"),
    ("v3", str, "'string'"), ("v2", "<U4", "'<U4'")], ids=str)
def test_unsupported_dtype(tmp_path, fmt, dtype, name):
    path = str(tmp_path / "a")
    zarr.create_array(path, shape=(4,), dtype=dtype, zarr_format=2 if fmt == "v2" else 3)
    meta = os.path.join(path, ".zarray" if fmt == "v2" else "zarr.json")
    with raises_naming(meta, f"unsupported dtype {name}", f"unsupported data type {name}"):
        bt.zarr_info(path)


def test_region_out_of_bounds(tmp_path):
    path = write_v2(tmp_path / "a", make_data((5, 5), "int8"), (2, 2))
    with raises_naming(path, "outside the array shape"):
        bt.read_region(path, [4, 0], [2, 5])
    with raises_naming(path, "outside the array shape"):
        bt.read_region(path, [-1, 0], [1, 1])
