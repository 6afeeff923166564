"""biodali.synth and the biodali command: determinism, 10x-like statistics, every output format
read back by anndata, and the annbatch DatasetCollection layout."""
from __future__ import annotations

import subprocess
import sys
import types

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

from biodali import cli, synth

N_CELLS, N_GENES, SEED = 2500, 3000, 5  # 3 generation blocks, the last one partial


@pytest.fixture(scope="module")
def small():
    return synth.make_expression(N_CELLS, N_GENES, SEED)


@pytest.fixture(scope="module")
def full_genes():
    return synth.make_expression(3000, synth.DEFAULT_N_GENES, 0)


def assert_same_cells(a: ad.AnnData, b: ad.AnnData):
    assert a.shape == b.shape
    assert a.X.dtype == np.float32 and sp.issparse(a.X) and a.X.format == "csr"
    assert (a.X != b.X).nnz == 0
    assert a.obs[["cell_type", "batch", "n_counts"]].equals(b.obs[["cell_type", "batch", "n_counts"]])
    assert a.var.index.equals(b.var.index)


def test_same_seed_same_cells_other_seed_other_cells(small):
    again = synth.make_expression(N_CELLS, N_GENES, SEED)
    for name in ("data", "indices", "indptr"):
        np.testing.assert_array_equal(getattr(again.X, name), getattr(small.X, name))
    assert again.obs.equals(small.obs)
    other = synth.make_expression(N_CELLS, N_GENES, SEED + 1)
    assert other.X.nnz != small.X.nnz or (other.X != small.X).nnz > 0
    assert not other.obs["cell_type"].equals(small.obs["cell_type"])


def test_cells_do_not_depend_on_n_cells(small):
    prefix = synth.make_expression(1200, N_GENES, SEED)
    assert_same_cells(prefix, small[:1200].copy())


def test_layout_of_x_and_annotations(small):
    X = small.X
    assert X.indices.dtype == np.int32 and X.indptr.dtype == np.int32 and X.has_canonical_format
    assert list(small.obs_names[:2]) == ["cell_000000", "cell_000001"]
    assert list(small.var_names[[0, -1]]) == ["GENE00001", "GENE03000"]
    assert small.obs["n_counts"].dtype == np.float32
    np.testing.assert_array_equal(small.obs["n_counts"].to_numpy(), np.asarray(X.sum(axis=1)).ravel())
    assert list(small.obs["cell_type"].cat.categories) == [f"celltype_{t:02d}" for t in range(50)]
    assert small.obs["batch"].nunique() == synth.N_BATCHES


def test_statistics_at_default_gene_count(full_genes):
    X = full_genes.X
    nnz = np.diff(X.indptr)
    assert 2000 <= np.median(nnz) <= 4000  # 10x-like: ~2-4k detected genes per cell
    assert np.all(X.data >= 1) and np.all(X.data == np.round(X.data))  # integer counts
    totals = np.sort(np.asarray(X.sum(axis=0)).ravel())[::-1]
    assert totals[: X.shape[1] // 100].sum() > 0.3 * totals.sum()  # top 1% of genes: a big share
    detected = np.asarray((X > 0).mean(axis=0)).ravel()
    assert 50 <= np.count_nonzero(detected > 0.9) <= 1000  # a few genes in nearly every cell
    assert np.mean(detected < 0.05) > 0.5  # most genes rare
    mean = np.asarray(X.mean(axis=0)).ravel()
    var = np.asarray(X.multiply(X).mean(axis=0)).ravel() - mean**2
    assert np.median(var[mean > 1] / mean[mean > 1]) > 2  # overdispersed
    assert full_genes.obs["cell_type"].nunique() >= 45


def test_cell_type_is_learnable_from_2000_genes(full_genes):
    X = sp.diags(1e4 / full_genes.obs["n_counts"].to_numpy()) @ full_genes.X[:, :2000]
    X = np.log1p(X.toarray())
    y = full_genes.obs["cell_type"].cat.codes.to_numpy()
    train, test = np.arange(2000), np.arange(2000, 3000)
    seen = np.unique(y[train])
    centroids = np.stack([X[train][y[train] == t].mean(0) for t in seen])
    dist = ((X[test, None, :] - centroids[None]) ** 2).sum(-1)
    accuracy = np.mean(seen[dist.argmin(1)] == y[test])
    assert accuracy > 0.8, accuracy  # chance is < 0.1


CASES = {
    "zarr-v3": dict(format="zarr", zarr_format=3),
    "zarr-v2": dict(format="zarr", zarr_format=2),
    "zarr-v3-sharded": dict(format="zarr", zarr_format=3, sharded=True),
    "h5ad": dict(format="h5ad"),
}


@pytest.mark.parametrize("streamed", [False, True], ids=["anndata-writes", "streamed"])
@pytest.mark.parametrize("case", list(CASES))
def test_formats_read_back_as_make_expression(small, tmp_path, monkeypatch, case, streamed):
    if streamed:  # the path large outputs take
        monkeypatch.setattr(synth, "IN_MEMORY_MAX_CELLS", 0)
    kwargs = CASES[case]
    path = tmp_path / ("out.h5ad" if kwargs["format"] == "h5ad" else "out.zarr")
    synth.write_expression(path, N_CELLS, N_GENES, SEED, progress=False, **kwargs)
    adata = ad.read_h5ad(path) if kwargs["format"] == "h5ad" else ad.read_zarr(path)
    assert_same_cells(adata, small)
    if kwargs["format"] == "zarr":
        group = zarr.open_group(path, mode="r")
        assert group.metadata.zarr_format == kwargs["zarr_format"]
        assert (group["X/data"].shards is not None) == kwargs.get("sharded", False)
    assert not list(tmp_path.glob(".*synth-tmp*"))


def test_refuses_to_overwrite_unless_asked(tmp_path):
    path = tmp_path / "x.zarr"
    synth.write_expression(path, 10, 20, progress=False)
    with pytest.raises(FileExistsError):
        synth.write_expression(path, 10, 20, progress=False)
    synth.write_expression(path, 10, 20, seed=1, overwrite=True, progress=False)
    assert ad.read_zarr(path).n_obs == 10


def _inner_codecs(array) -> list[dict]:
    (sharding,) = array.metadata.to_dict()["codecs"]
    assert sharding["name"] == "sharding_indexed"
    return [dict(c) for c in sharding["configuration"]["codecs"]]


def test_annbatch_collection(small, tmp_path):
    path = tmp_path / "collection.zarr"
    synth.write_expression(path, N_CELLS, N_GENES, SEED, layout="annbatch", n_datasets=2,
                           jobs=2, progress=False)
    root = zarr.open_group(path, mode="r")
    assert dict(root.attrs) == {"encoding-type": "annbatch-preshuffled", "encoding-version": "0.1.0"}
    assert sorted(root.group_keys()) == ["dataset_0", "dataset_1"]
    order = synth.annbatch_order(N_CELLS, SEED, n_datasets=2)
    assert sorted(np.concatenate(order)) == list(range(N_CELLS))  # a permutation of all cells
    assert not np.array_equal(np.concatenate(order), np.arange(N_CELLS))
    names = []
    for k, cells in enumerate(order):
        group = root[f"dataset_{k}"]
        adata = ad.read_zarr(path / f"dataset_{k}")
        assert_same_cells(adata, small[cells].copy())
        assert list(adata.obs.columns) == ["cell_type", "batch", "n_counts", "src_path"]
        assert adata.obs["src_path"].dtype == "category"
        names.extend(adata.obs_names)
        x = group["X"]
        n_rows, nnz = adata.n_obs, x["data"].shape[0]
        chunk = int(64 * nnz / n_rows)
        assert x["indices"].dtype == np.uint16 and x["indptr"].dtype == np.int32
        for name in ("data", "indices", "indptr"):
            assert x[name].chunks == (chunk,) and x[name].shards[0] % chunk == 0
            codecs = _inner_codecs(x[name])
            assert codecs[0] == {"name": "bytes", "configuration": {"endian": "little"}}
            blosc = codecs[1]["configuration"]
            assert codecs[1]["name"] == "blosc" and blosc["cname"] == "lz4"
            assert blosc["clevel"] == 3 and blosc["shuffle"] == "shuffle"
            assert blosc["typesize"] == x[name].dtype.itemsize
        codes = group["obs/cell_type/codes"]
        assert codes.shards == codes.shape
        assert _inner_codecs(codes)[1] == {"name": "zstd", "configuration": {"level": 0, "checksum": False}}
    assert sorted(names) == list(small.obs_names)  # the multiset of cells matches


def test_annbatch_default_dataset_count_and_jobs_do_not_change_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "ANNBATCH_ROWS_PER_DATASET", 1000)
    paths = []
    for jobs in (1, 2):
        paths.append(tmp_path / f"jobs{jobs}.zarr")
        synth.write_expression(paths[-1], 2100, 300, 1, layout="annbatch", jobs=jobs, progress=False)
    assert sorted(zarr.open_group(paths[0], mode="r").group_keys()) == [f"dataset_{k}" for k in range(3)]
    files = sorted(p.relative_to(paths[0]) for p in paths[0].rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(paths[1]) for p in paths[1].rglob("*") if p.is_file())
    for f in files:
        assert (paths[0] / f).read_bytes() == (paths[1] / f).read_bytes(), f


def test_annbatch_chunk_and_shard_sizes_follow_annbatch():
    # formats.md: 181,000 rows and 536,625,756 non-zeros -> inner chunks of 189,746 elements,
    # shards of 134,150,422 (int32 indptr; indices uint16 on disk, int32 in memory).
    spill = types.SimpleNamespace(n_rows=181_000, nnz=536_625_756)
    kwargs = synth._annbatch_x_kwargs(spill, 64, np.int32)
    assert kwargs["chunks"] == (189_746,) and kwargs["shards"] == (134_150_422,)


def test_bad_arguments():
    with pytest.raises(ValueError, match="annbatch"):
        synth.write_expression("unused.zarr", 10, layout="annbatch", zarr_format=2)
    with pytest.raises(ValueError, match="sharded"):
        synth.write_expression("unused.h5ad", 10, format="h5ad", sharded=True)
    with pytest.raises(ValueError, match="n_datasets"):
        synth.annbatch_order(2500, n_datasets=4)  # only 3 slices


def test_cli_synth_expression(tmp_path, capsys):
    out = tmp_path / "cli.zarr"
    argv = ["synth", "expression", "--n-cells", "1200", "--n-genes", "500", "--seed", "2",
            "--out", str(out), "--quiet"]
    assert cli.main(argv) == 0
    assert_same_cells(ad.read_zarr(out), synth.make_expression(1200, 500, 2))
    assert cli.main(argv) == 2  # exists
    assert "exists" in capsys.readouterr().err
    assert cli.main(argv + ["--overwrite", "--layout", "annbatch", "--zarr-format", "2"]) == 2


def test_cli_demo_passes_its_options(monkeypatch):
    seen = []
    fake = types.ModuleType("biodali.demo")
    fake.main = seen.append
    monkeypatch.setitem(sys.modules, "biodali.demo", fake)
    monkeypatch.setattr(sys.modules["biodali"], "demo", fake, raising=False)
    assert cli.main(["demo", "--epochs", "2"]) == 0
    (args,) = seen
    assert (args.n_cells, args.batch_size, args.epochs) == (200_000, 4096, 2)
    assert str(args.data_dir).endswith(".cache/biodali/demo") and "~" not in str(args.data_dir)


def test_python_dash_m_runs_the_cli():
    proc = subprocess.run([sys.executable, "-m", "biodali.cli", "synth", "expression", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "--n-cells" in proc.stdout
