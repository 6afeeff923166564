"""biodali convert: every input row lands exactly once in the collection with the same values and
obs (checked against anndata's reading of the inputs, through src_path/src_row), var joins,
annbatch's layout, append, interruption, bad inputs; biodali's reader reads the output."""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

from biodali import cli, convert as convert_mod, synth
from biodali._collection_writer import DatasetWriter, _ShardWriter, parse_nbytes, x_chunking
from biodali._convert_buckets import BucketFiles
from biodali.convert import ConvertError, convert
from reader_utils import make_adata, rows_of, run_reader, write_zarr

QUIET = {"progress": False}


def _dense(X):
    return X.toarray() if sp.issparse(X) else np.asarray(X)


def read_collection(path) -> ad.AnnData:
    root = zarr.open_group(str(path), mode="r")
    assert root.attrs["encoding-type"] == "annbatch-preshuffled"
    assert root.attrs["encoding-version"] == "0.1.0"
    names = sorted((n for n in root.group_keys() if n.startswith("dataset_")),
                   key=lambda n: int(n[8:]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        parts = [ad.read_zarr(f"{path}/{n}") for n in names]
        return ad.concat(parts, join="outer", merge="same")


def read_input(label: str) -> ad.AnnData:
    return ad.read_h5ad(label) if label.endswith(".h5ad") else ad.read_zarr(label)


def assert_rows_from_inputs(out: ad.AnnData, labels: list[str], layer: str | None = None):
    """Each input row appears once, with its values re-indexed to out's var (absent genes are
    zeros) and its obs; nothing else is in out."""
    src_path = out.obs["src_path"].astype(str).to_numpy()
    src_row = out.obs["src_row"].to_numpy()
    assert set(src_path) <= set(labels)
    assert sp.issparse(out.X) and out.X.has_sorted_indices
    for label in labels:
        src = read_input(label)
        sel = np.flatnonzero(src_path == label)
        rows = src_row[sel]
        np.testing.assert_array_equal(np.sort(rows), np.arange(src.n_obs))
        col = src.var_names.get_indexer(out.var_names)
        values = _dense(src.X if layer is None else src.layers[layer])[rows]
        expected = np.where(col >= 0, values[:, np.maximum(col, 0)], 0)
        np.testing.assert_array_equal(_dense(out.X[sel]), expected)
        assert list(out.obs_names[sel]) == list(src.obs_names[rows])
        for c in src.obs.columns:
            if c in ("src_path", "src_row"):
                continue
            np.testing.assert_array_equal(out.obs[c].to_numpy()[sel], src.obs[c].to_numpy()[rows])
    assert len(out) == sum(int((src_path == label).sum()) for label in labels)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Three inputs with overlapping genes: a (CSR h5ad, g0..g49), b (zarr v2, g49..g10 reversed,
    so its genes map to out columns in reverse), c (dense X h5ad, g0..g29 + x0..x4)."""
    d = tmp_path_factory.mktemp("inputs")
    a = make_adata(300, 50, seed=1)
    a.write_h5ad(d / "a.h5ad")
    b = make_adata(200, 40, seed=2)
    b.var_names = [f"g{i}" for i in range(49, 9, -1)]
    b.obs["cell_type"] = b.obs["cell_type"].cat.rename_categories({"NK": "NKT"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_zarr(b, d / "b.zarr", zarr_format=2)
    c = make_adata(150, 35, seed=3, with_dense=False)
    c.var_names = [f"g{i}" for i in range(30)] + [f"x{i}" for i in range(5)]
    c.X = c.X.toarray()
    c.obs["depth"] = np.arange(150, dtype=np.int64)
    c.write_h5ad(d / "c.h5ad")
    return {k: str(d / f"{k}.h5ad" if k != "b" else d / "b.zarr") for k in "abc"}


@pytest.fixture(scope="module")
def synth_inputs(tmp_path_factory):
    """Same genes in an h5ad, an AnnData zarr store and an annbatch collection (synth's)."""
    d = tmp_path_factory.mktemp("synth")
    kw = dict(n_genes=300, progress=False)
    synth.write_expression(d / "s.h5ad", 700, seed=1, format="h5ad", **kw)
    synth.write_expression(d / "s.zarr", 500, seed=2, sharded=True, **kw)
    synth.write_expression(d / "coll.zarr", 2500, seed=3, layout="annbatch", n_datasets=2, **kw)
    return [str(d / "s.h5ad"), str(d / "s.zarr"), str(d / "coll.zarr")]


def test_outer_join_of_mixed_inputs_keeps_every_row_once(inputs, tmp_path):
    out = convert(list(inputs.values()), tmp_path / "out.zarr", var_join="outer", **QUIET)
    result = read_collection(out)
    assert list(result.var_names) == [f"g{i}" for i in range(50)] + [f"x{i}" for i in range(5)]
    assert_rows_from_inputs(result, list(inputs.values()))
    # categories of the inputs united; the dense input's column missing elsewhere is NaN
    assert set(result.obs["cell_type"].cat.categories) == {"B", "T", "NK", "NKT", "mono"}
    from_c = result.obs["src_path"] == inputs["c"]
    assert result.obs["depth"][~from_c].isna().all()
    assert not np.array_equal(result.obs["src_row"][result.obs["src_path"] == inputs["a"]],
                              np.arange(300))  # shuffled


def test_inner_join_keeps_shared_genes_in_first_input_order(inputs, tmp_path):
    out = convert(list(inputs.values()), tmp_path / "out.zarr", var_join="inner", **QUIET)
    result = read_collection(out)
    assert list(result.var_names) == [f"g{i}" for i in range(10, 30)]
    assert_rows_from_inputs(result, list(inputs.values()))


def test_gene_list_sets_the_var_exactly(inputs, tmp_path):
    genes = tmp_path / "genes.txt"
    genes.write_text("x3\ng12\n# a comment\ng40\nnot_measured\ng0\n")
    out = convert([inputs["a"], inputs["c"]], tmp_path / "out.zarr", genes=genes, **QUIET)
    result = read_collection(out)
    assert list(result.var_names) == ["x3", "g12", "g40", "not_measured", "g0"]
    assert _dense(result.X[:, 3]).sum() == 0
    assert_rows_from_inputs(result, [inputs["a"], inputs["c"]])


def test_h5ad_zarr_and_collection_inputs_with_annbatch_layout(synth_inputs, tmp_path):
    out = convert(synth_inputs, tmp_path / "out.zarr", dataset_size="300KB", **QUIET)
    labels = synth_inputs[:2] + [f"{synth_inputs[2]}/dataset_{k}" for k in range(2)]
    result = read_collection(out)
    assert_rows_from_inputs(result, labels)
    root = zarr.open_group(str(out), mode="r")
    names = sorted(root.group_keys())
    assert len(names) > 1 and all(n.startswith("dataset_") for n in names)
    for name in names:  # one permutation of all rows: every dataset mixes every input
        codes = root[f"{name}/obs/src_path/codes"][:]
        assert set(codes.tolist()) == set(range(len(labels)))
    ds = root["dataset_0"]
    data, indices, indptr = ds["X/data"], ds["X/indices"], ds["X/indptr"]
    assert ds.attrs["encoding-type"] == "anndata" and ds["X"].attrs["encoding-type"] == "csr_matrix"
    assert data.dtype == np.float32 and indices.dtype == np.uint16 and indptr.dtype == np.int32
    n, nnz = ds["X"].attrs["shape"][0], data.shape[0]
    assert data.chunks == (int(64 * nnz / n),) and data.shards is not None
    blosc = data.metadata.codecs[0].codecs[1].to_dict()["configuration"]
    assert (blosc["cname"], blosc["clevel"], blosc["shuffle"]) == ("lz4", 3, "shuffle")
    assert ds["obs/src_path"].attrs["encoding-type"] == "categorical"
    assert list(ds["obs/src_path/categories"][:]) == labels  # all inputs, in every dataset
    assert ds["obs/cell_type/codes"].shards is not None


def test_biodali_reader_reads_the_output(synth_inputs, tmp_path):
    out = str(convert(synth_inputs[:2], tmp_path / "out.zarr", dataset_size="300KB", **QUIET))
    result = read_collection(out)
    X = result.X.tocsr()
    batches = run_reader(path=out, batch_size=256, obs_columns=["cell_type"],
                         return_row_index=True, random_shuffle=False)
    rows = [int(r) for r in rows_of(batches, 3)]
    assert rows[:X.shape[0]] == list(range(X.shape[0]))
    codes = result.obs["cell_type"].cat.codes.to_numpy()
    for row, v, i, c in zip(rows, rows_of(batches, 0), rows_of(batches, 1), rows_of(batches, 2)):
        lo, hi = X.indptr[row], X.indptr[row + 1]
        np.testing.assert_array_equal(v, X.data[lo:hi])
        np.testing.assert_array_equal(i, X.indices[lo:hi])
        assert c == codes[row]


def test_no_shuffle_keeps_input_order_and_seed_fixes_the_order(inputs, tmp_path):
    paths = list(inputs.values())
    kept = read_collection(convert(paths, tmp_path / "kept.zarr", shuffle=False, **QUIET))
    n = [300, 200, 150]
    np.testing.assert_array_equal(kept.obs["src_row"], np.concatenate([np.arange(k) for k in n]))
    np.testing.assert_array_equal(kept.obs["src_path"].astype(str), np.repeat(paths, n))
    one = read_collection(convert(paths, tmp_path / "s1.zarr", seed=1, **QUIET)).obs
    again = read_collection(convert(paths, tmp_path / "s1b.zarr", seed=1, **QUIET)).obs
    other = read_collection(convert(paths, tmp_path / "s2.zarr", seed=2, **QUIET)).obs
    assert one["src_row"].equals(again["src_row"])
    assert not one["src_row"].equals(other["src_row"])


def test_small_buckets_blocks_shards_and_datasets(inputs, tmp_path, monkeypatch):
    """Many buckets, read blocks, inner chunks, shards and datasets: still every row once."""
    monkeypatch.setattr(convert_mod, "_rss_nbytes", lambda: 0)
    monkeypatch.setattr(convert_mod, "MIN_BUCKET_NBYTES", 0)
    monkeypatch.setattr(convert_mod, "MIN_BLOCK_ELEMS", 500)
    buckets_read = []
    read = BucketFiles.read
    monkeypatch.setattr(BucketFiles, "read",
                        lambda self, b, nnz: buckets_read.append(b) or read(self, b, nnz))
    paths = list(inputs.values())
    out = convert(paths, tmp_path / "out.zarr", var_join="outer", max_memory="33KB",
                  shard_size="8KB", dataset_size="15KB", chunk_rows=4, **QUIET)
    root = zarr.open_group(str(out), mode="r")
    n_datasets = len(list(root.group_keys()))
    assert n_datasets >= 4 and len(buckets_read) >= 2 * n_datasets
    assert buckets_read == list(range(len(buckets_read)))
    data = root["dataset_0/X/data"]
    assert data.shards[0] < data.shape[0]
    assert_rows_from_inputs(read_collection(out), paths)


def test_layer_and_zstd_codec(inputs, tmp_path):
    out = convert([inputs["a"]], tmp_path / "out.zarr", layer="counts", codec="zstd", **QUIET)
    codecs = zarr.open_array(f"{out}/dataset_0/X/data", mode="r").metadata.codecs[0].codecs
    assert codecs[1].to_dict()["name"] == "zstd"
    assert_rows_from_inputs(read_collection(out), [inputs["a"]], layer="counts")
    batches = run_reader(path=str(out), batch_size=64, random_shuffle=False)
    assert len(rows_of(batches, 0)) >= 300


def _tree_digest(path: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(path)).encode() + p.read_bytes())
    return h.hexdigest()


def test_append_adds_datasets_without_rewriting(inputs, tmp_path):
    out = convert([inputs["a"], inputs["b"]], tmp_path / "out.zarr", var_join="outer", **QUIET)
    before = _tree_digest(out / "dataset_0")
    convert([inputs["c"]], out, append=True, **QUIET)
    assert _tree_digest(out / "dataset_0") == before
    root = zarr.open_group(str(out), mode="r")
    assert sorted(root.group_keys()) == ["dataset_0", "dataset_1"]
    result = read_collection(out)
    assert list(result.var_names) == [f"g{i}" for i in range(50)]  # c's x0..x4 dropped
    assert_rows_from_inputs(result, list(inputs.values()))
    assert "depth" in result.obs  # new column, missing in the old dataset


def test_append_to_a_collection_annbatch_laid_out(synth_inputs, tmp_path):
    out = tmp_path / "coll.zarr"
    shutil.copytree(synth_inputs[2], out)
    before = {n: _tree_digest(out / n) for n in ("dataset_0", "dataset_1")}
    convert([synth_inputs[0]], out, append=True, **QUIET)
    assert {n: _tree_digest(out / n) for n in before} == before
    new = ad.read_zarr(out / "dataset_2")
    assert list(new.obs.columns) == ["cell_type", "batch", "n_counts", "src_path", "src_row"]
    assert new.X.indices.dtype == np.uint16
    assert_rows_from_inputs(new, [synth_inputs[0]])
    batches = run_reader(path=str(out), batch_size=512, random_shuffle=False)
    assert len(rows_of(batches, 0)) >= 2500 + 700


def test_append_refuses_a_gene_list(inputs, tmp_path):
    out = convert([inputs["a"]], tmp_path / "out.zarr", **QUIET)
    with pytest.raises(ConvertError, match="--genes does not apply when appending"):
        convert([inputs["b"]], out, append=True, genes=["g1"], **QUIET)


def test_chunk_and_shard_sizes_follow_annbatch():
    # formats.md: 181,000 rows and 536,625,756 non-zeros -> inner chunks of 189,746 elements,
    # shards of 134,150,422 (float32 values, int32 indptr and in-memory indices, 1 GiB shards).
    assert x_chunking(181_000, 536_625_756, 64, 1 << 30, 4, 4) == (189_746, 134_150_422)
    assert parse_nbytes("1GB") == parse_nbytes("1GiB") == 1 << 30  # annbatch: binary units
    assert parse_nbytes("1.5mb") == 3 << 19 and parse_nbytes(1000) == 1000


def test_existing_output_needs_append(inputs, tmp_path):
    out = convert([inputs["a"]], tmp_path / "out.zarr", **QUIET)
    before = _tree_digest(out)
    with pytest.raises(ConvertError, match="already exists; pass --append"):
        convert([inputs["b"]], out, **QUIET)
    assert _tree_digest(out) == before


_KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from biodali import convert
    from biodali._collection_writer import DatasetWriter, _ShardWriter, parse_nbytes, x_chunking
    original = DatasetWriter.append_rows
    def append_then_die(self, *args):
        original(self, *args)
        os.kill(os.getpid(), signal.SIGKILL)  # as a user's kill -9 or an OOM kill would
    DatasetWriter.append_rows = append_then_die
    convert.convert(sys.argv[1:-1], sys.argv[-1], append=os.environ.get("APPEND") == "1",
                    progress=False)
""")


def _run_killed(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    proc = subprocess.run([sys.executable, "-c", _KILL_SCRIPT, *args], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr


def test_killed_run_leaves_no_output_and_a_rerun_completes(inputs, tmp_path):
    out = tmp_path / "out.zarr"
    paths = list(inputs.values())
    _run_killed([*paths[:2], str(out)])
    assert not out.exists()  # only the temporary name was written
    assert (tmp_path / ".out.zarr.biodali-convert-tmp").exists()
    convert(paths[:2], out, **QUIET)
    assert not (tmp_path / ".out.zarr.biodali-convert-tmp").exists()
    assert_rows_from_inputs(read_collection(out), paths[:2])
    # an append killed mid-way leaves the collection as it was; the rerun appends once
    before = _tree_digest(out)
    _run_killed([paths[2], str(out)], {"APPEND": "1"})
    assert _tree_digest(out) == before
    convert([paths[2]], out, append=True, **QUIET)
    assert_rows_from_inputs(read_collection(out), paths)


def test_error_mid_write_removes_the_partial_output(inputs, tmp_path, monkeypatch):
    def fail(self, *args):
        raise RuntimeError("stop here")

    monkeypatch.setattr(DatasetWriter, "finish", fail)
    with pytest.raises(RuntimeError, match="stop here"):
        convert([inputs["a"]], tmp_path / "out.zarr", **QUIET)
    assert list(tmp_path.iterdir()) == []


def test_append_cut_off_while_moving_datasets_in_is_rolled_back(inputs, tmp_path):
    out = convert([inputs["a"]], tmp_path / "out.zarr", **QUIET)
    before = read_collection(out)
    # the state a run killed between its renames leaves: a moved dataset and the marker
    zarr.open_group(str(out), mode="r+").update_attributes(
        {convert_mod.APPEND_MARKER: ["dataset_1", "dataset_2"]})
    os.rename(convert([inputs["b"]], tmp_path / "other.zarr", **QUIET) / "dataset_0",
              out / "dataset_1")
    convert([inputs["c"]], out, append=True, var_join="outer", **QUIET)
    root = zarr.open_group(str(out), mode="r")
    assert sorted(root.group_keys()) == ["dataset_0", "dataset_1"]
    assert convert_mod.APPEND_MARKER not in root.attrs
    result = read_collection(out)
    assert len(result) == before.n_obs + 150
    assert_rows_from_inputs(result, [inputs["a"], inputs["c"]])


@pytest.mark.parametrize("where", ["scatter", "write"])
def test_disk_full_is_reported_and_cleaned_up(inputs, tmp_path, monkeypatch, where):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    target = (BucketFiles, "scatter") if where == "scatter" else (_ShardWriter, "_write_next")
    monkeypatch.setattr(*target, full)
    with pytest.raises(ConvertError, match="disk full") as info:
        convert([inputs["a"], inputs["b"]], tmp_path / "out.zarr", var_join="outer", **QUIET)
    assert "removed the partial output" in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_disk_full_on_a_real_small_filesystem(inputs, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    paths = [inputs["a"], inputs["b"], inputs["c"]]
    done = convert(paths, tmp_path / "fits.zarr", var_join="outer", **QUIET)
    needed_kib = int(subprocess.run(["du", "-sk", str(done)], capture_output=True, text=True,
                                    check=True).stdout.split()[0])
    mnt = tmp_path / "small"
    mnt.mkdir()
    size = f"size={max(8, needed_kib // 2)}k"  # room for half of the output
    if subprocess.run(["mount", "-t", "tmpfs", "-o", size, "tmpfs", str(mnt)]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        with pytest.raises(ConvertError, match="disk full"):
            convert(paths, mnt / "out.zarr", var_join="outer", **QUIET)
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


# ---------------------------------------------------------------------------------------------
# Bad inputs and arguments: an error naming the file and the problem

def _not_anndata_zarr(path):
    zarr.open_group(str(path), mode="w").create_array("x", shape=(3,), dtype="i4")
    return path


def _truncated_h5ad(path, source):
    data = Path(source).read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


@pytest.mark.parametrize("make, message", [
    (lambda d, i: d / "missing.h5ad", "no such file"),
    (lambda d, i: (d / "t.h5ad").write_text("not hdf5") and d / "t.h5ad", "not an h5ad"),
    (lambda d, i: _not_anndata_zarr(d / "z.zarr"), "not an AnnData store"),
    (lambda d, i: (d / "empty").mkdir() or d / "empty", "not an h5ad file nor a zarr group"),
    (lambda d, i: _truncated_h5ad(d / "cut.h5ad", i["a"]), "cut.h5ad"),
])
def test_unreadable_or_non_anndata_input(inputs, tmp_path, make, message):
    bad = make(tmp_path, inputs)
    with pytest.raises(ConvertError, match=message) as info:
        convert([inputs["a"], bad], tmp_path / "out.zarr", **QUIET)
    assert str(bad) in str(info.value)
    assert not (tmp_path / "out.zarr").exists()


def test_duplicate_var_names_say_how_to_fix(tmp_path):
    a = make_adata(20, 5, with_dense=False)
    a.var_names = ["g0", "g1", "g1", "g3", "g0"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a.write_h5ad(tmp_path / "dup.h5ad")
    with pytest.raises(ConvertError, match=r"dup\.h5ad.*2 var names.*var_names_make_unique"):
        convert([tmp_path / "dup.h5ad"], tmp_path / "out.zarr", **QUIET)


def test_no_shared_genes_under_inner_join(inputs, tmp_path):
    other = make_adata(20, 5, with_dense=False)
    other.var_names = [f"ENSG{i}" for i in range(5)]
    other.write_h5ad(tmp_path / "other.h5ad")
    with pytest.raises(ConvertError, match=r"no gene is shared.*other\.h5ad.*--var-join outer"):
        convert([inputs["a"], tmp_path / "other.h5ad"], tmp_path / "out.zarr", **QUIET)


def test_too_little_max_memory(inputs, tmp_path):
    with pytest.raises(ConvertError, match=r"--max-memory 1.00 MiB is too little.*Raise --max-memory"):
        convert([inputs["a"]], tmp_path / "out.zarr", max_memory="1MB", **QUIET)
    assert list(tmp_path.iterdir()) == []


def test_csc_and_missing_layer(tmp_path):
    a = make_adata(20, 5, with_dense=False)
    a.X = sp.csc_matrix(a.X)
    a.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(ConvertError, match="CSC matrix.*tocsr"):
        convert([tmp_path / "csc.h5ad"], tmp_path / "out.zarr", **QUIET)
    with pytest.raises(ConvertError, match="no layer 'raw'"):
        convert([tmp_path / "csc.h5ad"], tmp_path / "out.zarr", layer="raw", **QUIET)


def test_inputs_without_rows(inputs, tmp_path):
    make_adata(300, 50)[:0].copy().write_h5ad(tmp_path / "empty.h5ad")
    with pytest.raises(ConvertError, match="no rows"):
        convert([tmp_path / "empty.h5ad"], tmp_path / "out.zarr", **QUIET)
    out = convert([tmp_path / "empty.h5ad", inputs["a"]], tmp_path / "out.zarr", **QUIET)
    assert_rows_from_inputs(read_collection(out), [str(tmp_path / "empty.h5ad"), inputs["a"]])


def test_corrupt_indices_are_reported(inputs, tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_bytes(Path(inputs["a"]).read_bytes())
    with h5py.File(bad, "r+") as f:
        f["X/indices"][5] = 999
    with pytest.raises(ConvertError, match=r"bad\.h5ad.*column indices outside"):
        convert([bad], tmp_path / "out.zarr", **QUIET)


def test_cli(inputs, tmp_path, capsys):
    out = tmp_path / "out.zarr"
    assert cli.main(["convert", inputs["a"], inputs["b"], "-o", str(out), "--quiet",
                     "--var-join", "outer", "--obs-columns", "cell_type"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    result = read_collection(out)
    assert list(result.obs.columns) == ["cell_type", "src_path", "src_row"]
    assert cli.main(["convert", inputs["a"], "-o", str(out), "--quiet"]) == 2
    assert "already exists" in capsys.readouterr().err
