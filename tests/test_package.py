"""The package loads its plugin, and refuses a plugin built for another DALI with a rebuild hint."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

import biodali
from reader_utils import make_adata, rows_of, run_reader, write_zarr


def test_operators_are_registered():
    from nvidia.dali import fn

    assert callable(fn.biodali.readers.anndata)


def test_plugin_built_for_another_dali_is_refused_with_rebuild_hint(tmp_path):
    package = Path(biodali.__file__).parent
    copy = tmp_path / "biodali"
    shutil.copytree(package, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "_build_info.json").write_text(json.dumps({"dali_version": "1.0.0"}))
    proc = subprocess.run([sys.executable, "-c", "import biodali"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "built for DALI 1.0.0" in proc.stderr
    assert "rebuild" in proc.stderr and "make build" in proc.stderr


def test_dense_nd_rows(tmp_path):
    adata = make_adata(n_obs=90, n_vars=10, with_dense=False)
    adata.obsm["images"] = np.random.default_rng(0).integers(0, 255, (90, 3, 5, 4), dtype=np.uint8)
    path = write_zarr(adata, tmp_path / "a.zarr", 3)
    batches = run_reader(path=path, array="obsm/images", batch_size=32, return_row_index=True,
                         random_shuffle=True, seed=2, chunk_size=4, preload_chunks=3)
    for row, image in zip(rows_of(batches, 1), rows_of(batches, 0)):
        assert image.shape == (3, 5, 4) and image.dtype == np.uint8
        np.testing.assert_array_equal(image, adata.obsm["images"][int(row)])
