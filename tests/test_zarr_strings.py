"""zarr::ReadStringArray (vlen-utf8 string arrays) against zarr-python and anndata.

Stores are written here by zarr-python 3.1 / numcodecs and anndata 0.12; the oracle is
zarr-python (or anndata) reading the same store. Error tests check that the message names the
file and the problem.
"""
from __future__ import annotations

import os
import struct

import anndata as ad
import crc32c
import numcodecs
import numpy as np
import pandas as pd
import pytest
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, GzipCodec, ShardingCodec, ZstdCodec

from biodali import _testing as bt

from test_zarr_arrays import chunk_files, raises_naming

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::DeprecationWarning",
                                        "ignore::FutureWarning")


def make_strings(n, seed=0):
    """Mixed ASCII, multi-byte UTF-8 (accents, CJK, emoji), empty strings, an embedded NUL and
    one long string."""
    rng = np.random.default_rng(seed)
    pool = ["", "a", "T cell", "béé", "細胞", "🧬x", "with\x00nul", "x" * 300, "CD4+ αβ"]
    return [pool[i] + (str(j) if pool[i] and j % 3 else "")
            for j, i in enumerate(rng.integers(0, len(pool), n))]


def write(path, items, chunks, zarr_format=3, **kwargs):
    arr = zarr.create_array(str(path), shape=(len(items),), chunks=(chunks,), dtype=str,
                            zarr_format=zarr_format, **kwargs)
    arr[...] = np.array(items, dtype=object)
    return path


def check(path):
    expected = list(zarr.open_array(str(path), mode="r")[...])
    got = bt.read_strings(path)
    assert got == expected
    return got


V2_COMPRESSORS = {"none": None, "zstd": numcodecs.Zstd(level=1),
                  "blosc": numcodecs.Blosc("lz4", 5, 1), "gzip": numcodecs.GZip(level=1),
                  "zlib": numcodecs.Zlib(level=1)}
V3_COMPRESSORS = {"none": None, "zstd": [ZstdCodec(level=0)], "gzip": [GzipCodec(level=1)],
                  "blosc": [BloscCodec(cname="zstd", typesize=1)], "crc32c": [Crc32cCodec()],
                  "zstd+crc32c": [ZstdCodec(), Crc32cCodec()]}
CHUNKS = [1, 3, 7, 20, 64]  # 20 items: 3 and 7 leave partial edge chunks, 64 one big chunk


@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("compressor", V2_COMPRESSORS)
def test_v2(tmp_path, compressor, chunks):
    path = write(tmp_path / "a", make_strings(20), chunks, zarr_format=2,
                 compressors=V2_COMPRESSORS[compressor])
    meta = open(os.path.join(path, ".zarray")).read()
    assert '"|O"' in meta and "vlen-utf8" in meta
    assert check(path) == make_strings(20)


@pytest.mark.parametrize("chunks", CHUNKS)
@pytest.mark.parametrize("compressor", V3_COMPRESSORS)
def test_v3(tmp_path, compressor, chunks):
    path = write(tmp_path / "a", make_strings(20), chunks, compressors=V3_COMPRESSORS[compressor])
    assert check(path) == make_strings(20)


@pytest.mark.parametrize("inner,shard,n", [(3, 6, 20), (4, 8, 8), (5, 20, 20), (2, 8, 41)])
@pytest.mark.parametrize("location", ["end", "start"])
def test_v3_sharded(tmp_path, inner, shard, n, location):
    sharding = ShardingCodec(chunk_shape=(inner,), codecs=[{"name": "vlen-utf8"}, ZstdCodec()],
                             index_location=location)
    arr = zarr.create_array(str(tmp_path / "a"), shape=(n,), chunks=(shard,), dtype=str,
                            serializer=sharding, compressors=None)
    arr[...] = np.array(make_strings(n), dtype=object)
    assert check(tmp_path / "a") == make_strings(n)


@pytest.mark.parametrize("fmt", ["v2", "v3", "v3-sharded"])
def test_missing_chunks_read_as_fill(tmp_path, fmt):
    """Chunks holding only the fill value are not stored; they read as the fill value, also a
    non-empty one, and so do absent inner chunks and missing shards."""
    items = ["a", "b"] + [""] * 10 + ["c"] + [""] * 6 + ["d"]
    fill = "" if fmt == "v2" else "zz"
    items = [s or fill for s in items]
    layout = {"v2": dict(zarr_format=2), "v3": {}, "v3-sharded": dict(shards=(6,))}[fmt]
    write(tmp_path / "a", items, 2, fill_value=fill, **layout)
    stored = len(chunk_files(tmp_path / "a"))
    assert stored == 3  # of 10 chunks (4 shards): the others are missing
    assert check(tmp_path / "a") == items


def test_empty_and_scalar(tmp_path):
    write(tmp_path / "empty", [], 4)
    assert bt.read_strings(tmp_path / "empty") == []
    for fmt in (2, 3):
        arr = zarr.create_array(str(tmp_path / f"s{fmt}"), shape=(), dtype=str, zarr_format=fmt)
        arr[...] = "scalar é"
        assert bt.read_strings(tmp_path / f"s{fmt}") == ["scalar é"]


def test_many_items(tmp_path):
    items = [f"cell_{i}_{'é' * (i % 5)}" for i in range(50_000)]
    path = write(tmp_path / "a", items, 4096, compressors=[ZstdCodec(level=0)])
    assert bt.read_strings(path) == items


# ---------------------------------------------------------------------------------------------
# anndata

@pytest.mark.parametrize("fmt", ["v2", "v3", "v3-autoshard"])
def test_anndata_categorical(tmp_path, fmt):
    n = 50
    cats = ["B cell", "T cell", "NK", "", "monocyte é", "細胞"]
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([cats[i % len(cats)] for i in range(n)], categories=cats),
         "batch": pd.Categorical([f"b{i % 3}" for i in range(n)], ordered=True)},
        index=[f"cell{i}" for i in range(n)])
    adata = ad.AnnData(X=np.zeros((n, 2), dtype="float32"), obs=obs)
    with ad.settings.override(zarr_write_format=2 if fmt == "v2" else 3,
                              auto_shard_zarr_v3=fmt == "v3-autoshard"):
        adata.write_zarr(tmp_path / "a.zarr")
    cat_dir = tmp_path / "a.zarr" / "obs" / "cell_type" / "categories"
    if fmt == "v3-autoshard":
        assert "sharding_indexed" in open(cat_dir / "zarr.json").read()
    back = ad.read_zarr(tmp_path / "a.zarr")
    for col in ("cell_type", "batch"):
        got = bt.read_strings(tmp_path / "a.zarr" / "obs" / col / "categories")
        assert got == list(back.obs[col].cat.categories)
    assert bt.read_strings(tmp_path / "a.zarr" / "obs" / "_index") == list(back.obs_names)


# ---------------------------------------------------------------------------------------------
# errors

def rewrite(path, edit):
    blob = bytearray(open(path, "rb").read())
    open(path, "wb").write(bytes(edit(blob)))


@pytest.mark.parametrize("fmt", ["v2", "v3", "v3-sharded"])
def test_truncated_vlen_data(tmp_path, fmt):
    layout = {"v2": dict(zarr_format=2, compressors=None), "v3": dict(compressors=None),
              "v3-sharded": dict(compressors=None, shards=(8,))}[fmt]
    path = write(tmp_path / "a", make_strings(16), 4, **layout)
    victim = chunk_files(path)[0]
    if fmt == "v3-sharded":
        # shorten inner chunk 0's byte range in the index (and fix the index checksum)
        def edit(blob):
            index = list(struct.unpack("<4Q", blob[-36:-4]))
            index[1] -= 3
            payload = struct.pack("<4Q", *index)
            blob[-36:] = payload + struct.pack("<I", crc32c.crc32c(payload))
            return blob
        rewrite(victim, edit)
        problems = ("inner chunk 0: vlen-utf8: truncated data",)
    else:
        rewrite(victim, lambda blob: blob[:-3])
        problems = ("vlen-utf8: truncated data",)
    with raises_naming(victim, *problems):
        bt.read_strings(path)


def test_item_count_mismatch_and_trailing_bytes(tmp_path):
    path = write(tmp_path / "a", make_strings(12), 4, compressors=None)
    victim = chunk_files(path)[1]
    rewrite(victim, lambda blob: struct.pack("<I", 3) + blob[4:])
    with raises_naming(victim, "item count mismatch"):
        bt.read_strings(path)
    path = write(tmp_path / "b", make_strings(12), 4, compressors=None)
    victim = chunk_files(path)[2]
    rewrite(victim, lambda blob: blob + b"\x00\x00")
    with raises_naming(victim, "follow the last"):
        bt.read_strings(path)


def test_corrupt_compressed_chunk(tmp_path):
    path = write(tmp_path / "a", make_strings(12), 12, zarr_format=2,
                 compressors=numcodecs.Zstd(level=1))
    victim = chunk_files(path)[0]
    rewrite(victim, lambda blob: blob[:4] + b"\xff" * 8 + blob[12:])
    with raises_naming(victim, "zstd: corrupt", "zstd: truncated"):
        bt.read_strings(path)


@pytest.mark.parametrize("fmt,dtype,problem", [
    ("v2", "float32", "not a string array"), ("v3", "float32", "not a string array"),
    ("v3", "int64", "not a string array"), ("v2", "<U4", "not a string array")], ids=str)
def test_not_a_string_array(tmp_path, fmt, dtype, problem):
    arr = zarr.create_array(str(tmp_path / "a"), shape=(4,), dtype=dtype,
                            zarr_format=2 if fmt == "v2" else 3)
    arr[...] = np.zeros(4, dtype=dtype)
    meta = tmp_path / "a" / (".zarray" if fmt == "v2" else "zarr.json")
    with raises_naming(meta, problem):
        bt.read_strings(tmp_path / "a")


def test_unsupported_object_codec(tmp_path):
    write(tmp_path / "a", make_strings(4), 4, zarr_format=2)
    meta = tmp_path / "a" / ".zarray"
    meta.write_text(meta.read_text().replace("vlen-utf8", "vlen-bytes"))
    with raises_naming(tmp_path / "a" / ".zarray", "object array filters"):
        bt.read_strings(tmp_path / "a")
    arr = zarr.create_array(str(tmp_path / "b"), shape=(4, 2), dtype=str)
    with raises_naming(tmp_path / "b" / "zarr.json", "only 1-D"):
        bt.read_strings(tmp_path / "b")


def test_numeric_reader_still_rejects_strings(tmp_path):
    write(tmp_path / "a", make_strings(4), 4)
    with raises_naming(tmp_path / "a" / "zarr.json", "unsupported data type 'string'"):
        bt.zarr_info(tmp_path / "a")
