"""``biodali convert``: h5ad files, AnnData zarr stores and annbatch collections, in any mix, to
one annbatch 0.3.1 preshuffled collection, out of core.

How (memory bounded by ``max_memory``; only the obs table and ~36 bytes per row stay in memory
for the whole run, X never does):
1. Plan: every input row gets an output position (a random permutation of all rows, or the
   identity with ``shuffle=False``). Positions are cut into datasets (``dataset_size`` of
   uncompressed CSR each, as annbatch's ``dataset_size``), datasets into buckets: runs of
   consecutive positions whose rows fit in memory.
2. Scatter: inputs are read sequentially in blocks of rows, genes re-mapped to the output var,
   and each row is appended to its bucket's file on disk.
3. Write: bucket by bucket, rows are read back, put in position order in memory and streamed to
   the dataset's zarr arrays, a whole shard at a time.
Everything is written under a temporary name beside the output and renamed at the end, so an
interrupted run never leaves something that looks like a finished collection; a re-run removes
the leftovers and starts again.
"""
from __future__ import annotations

import errno
import os
import shutil
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ._collection_writer import (ANNBATCH_ENCODING, CODECS, DatasetWriter, consolidate,
                                 create_collection,
                                 finish_collection, format_nbytes, min_uint_dtype, parse_nbytes,
                                 writer_nbytes, x_chunking)
from ._convert_inputs import ConvertError, InputSet, VarMap, as_object_strings, output_var
from ._convert_obs import combined_obs, existing_obs_dtypes
from ._convert_buckets import BucketFiles, in_position_order

__all__ = ["convert", "ConvertError"]

APPEND_MARKER = "biodali-convert-append-in-progress"  # root attr while datasets are moved in
MIN_BUCKET_NBYTES = 16 << 20
MIN_BLOCK_ELEMS, MAX_BLOCK_ELEMS = 1 << 16, 1 << 25  # non-zeros per input read
_TMP_SUFFIX = ".biodali-convert-tmp"


@dataclass
class _Plan:
    order: np.ndarray  # order[p] = global row at output position p
    row_nnz: np.ndarray  # per global row: upper bound before scatter, exact after it
    dataset_bounds: np.ndarray  # position edges of the datasets (n_datasets + 1)
    bucket_bounds: np.ndarray  # position edges of the buckets, including every dataset edge
    bucket_of_row: np.ndarray  # per global row
    block_elems: int  # non-zeros read per input block in the scatter


def convert(inputs, output, *, var_join: str = "inner", genes=None, obs_columns=None,
            layer: str | None = None, chunk_rows: int = 64, shard_size="1GB",
            codec: str = "blosc-lz4", shuffle: bool = True, seed: int = 0, max_memory="4GB",
            dataset_size="4GB", append: bool = False, progress: bool = True) -> Path:
    """Converts ``inputs`` (paths of .h5ad files, AnnData zarr stores, annbatch collections) into
    the annbatch collection ``output`` and returns its path.

    var_join "inner" (genes in every input) or "outer" (all genes, missing ones are zeros);
    genes: a list of gene names (or a path to a file with one per line) giving the output var
    exactly. obs_columns: the obs columns to keep (None: all); src_path (input) and src_row
    (row in it) are always added. layer: convert layers/<layer> instead of X. chunk_rows,
    shard_size, codec: the zarr layout (annbatch's n_obs_per_chunk, shard_size, compressors).
    shuffle/seed: a full random permutation of all rows. max_memory: the bound on this process's
    memory. dataset_size: uncompressed CSR bytes per dataset_k. append: add the inputs as new
    datasets of an existing collection (shuffled among themselves; existing datasets untouched).
    Raises ConvertError for bad inputs, arguments or outputs, and when the disk fills up (the
    partial output is removed)."""
    output = Path(output)
    if chunk_rows < 1:
        raise ConvertError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if codec not in CODECS:
        raise ConvertError(f"codec must be one of {CODECS}, got {codec!r}")
    if var_join not in ("inner", "outer"):
        raise ConvertError(f"var_join must be 'inner' or 'outer', got {var_join!r}")
    try:
        shard_nbytes, max_nbytes, dataset_nbytes = (
            parse_nbytes(s) for s in (shard_size, max_memory, dataset_size))
    except ValueError as exc:
        raise ConvertError(str(exc)) from None
    if isinstance(genes, (str, os.PathLike)):
        genes = _read_gene_file(Path(genes))
    tmp_root = output.parent / f".{output.name}{_TMP_SUFFIX}"
    existing = _check_output(output, append)
    _remove_stale_tmp(tmp_root)
    input_paths = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    for path in input_paths:
        if Path(path).resolve() == output.resolve():
            raise ConvertError(f"{path}: an input is the output itself")
    with InputSet(input_paths, layer) as inset:
        if inset.n_obs == 0:
            raise ConvertError(f"the inputs hold no rows: {[g.label for g in inset.groups]}")
        tmp_root.mkdir(parents=True)
        (tmp_root / "owner.pid").write_text(str(os.getpid()))
        try:
            _convert(inset, output, existing, tmp_root, var_join, genes, obs_columns, chunk_rows,
                     shard_nbytes, codec, shuffle, seed, max_nbytes, dataset_nbytes, progress)
        except OSError as exc:
            shutil.rmtree(tmp_root, ignore_errors=True)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise ConvertError(
                    f"disk full while writing {output} ({exc}); removed the partial output "
                    f"{tmp_root}. Free space on {output.parent} (the bucket files need about "
                    "the inputs' uncompressed size, the output its compressed size) and run "
                    "again.") from exc
            raise
        except BaseException:
            shutil.rmtree(tmp_root, ignore_errors=True)
            raise
    shutil.rmtree(tmp_root, ignore_errors=True)
    return output


def _convert(inset, output, existing, tmp_root, var_join, genes, obs_columns, chunk_rows,
             shard_nbytes, codec, shuffle, seed, max_nbytes, dataset_nbytes, progress) -> None:
    groups = inset.groups
    if existing is not None:  # append: the collection's genes, dtypes and obs columns
        if genes is not None:
            raise ConvertError(f"--genes does not apply when appending: {output} keeps its "
                               "genes (inputs' other genes are dropped, missing ones are zeros)")
        first = existing[_dataset_names(existing)[0]]
        out_var = _existing_var(first)
        value_dtype = np.dtype(first["X/data"].dtype)
        index_dtype = np.dtype(first["X/indices"].dtype)
        also_columns = existing_obs_dtypes(first)
        for g in groups:
            if not g.var_names.isin(out_var).any():
                raise ConvertError(f"{g.label}: shares no gene with the collection {output}")
    else:
        out_var = output_var(groups, var_join, genes)
        value_dtype = np.result_type(*[g.value_dtype for g in groups])
        index_dtype = min_uint_dtype(len(out_var))
        also_columns = None
    var_maps = [VarMap(g.var_names, out_var) for g in groups]
    obs = combined_obs(groups, obs_columns, also_columns)
    row_nnz = np.concatenate([g.row_nnz_upper_bound() for g in groups]).astype(np.int64)
    plan = _plan(row_nnz, value_dtype, index_dtype, shuffle, seed, max_nbytes, dataset_nbytes,
                 chunk_rows)

    buckets = BucketFiles(tmp_root / "buckets", len(plan.bucket_bounds) - 1, value_dtype,
                          index_dtype)
    _scatter(groups, var_maps, plan, buckets, progress)
    collection_path = tmp_root / "collection.zarr"
    root = create_collection(collection_path)
    first_index = 0 if existing is None else 1 + max(
        int(n[8:]) for n in _dataset_names(existing))
    var_frame = pd.DataFrame(index=out_var)
    names = _write_datasets(root, first_index, obs, var_frame, plan, buckets, value_dtype,
                            index_dtype, chunk_rows, shard_nbytes, codec, progress)
    if existing is None:
        finish_collection(collection_path, root)
        os.rename(collection_path, output)
    else:
        _commit_append(output, existing, collection_path, names)


# ---------------------------------------------------------------------------------------------
# Planning

def _plan(row_nnz, value_dtype, index_dtype, shuffle, seed, max_nbytes, dataset_nbytes,
          chunk_rows) -> _Plan:
    n_rows = len(row_nnz)
    elem_nbytes = value_dtype.itemsize + index_dtype.itemsize
    # Dataset sizes as annbatch's dataset_size: bytes of the in-memory CSR (int32 indices).
    mean_row_nbytes = max(1.0, float(row_nnz.mean()) * (value_dtype.itemsize + 4) + 4)
    rows_per_dataset = max(1, int(dataset_nbytes // mean_row_nbytes))
    n_datasets = -(-n_rows // rows_per_dataset)
    dataset_bounds = np.linspace(0, n_rows, n_datasets + 1).round().astype(np.int64)

    # Memory: what is held now (obs, inputs' offsets, Python), the plan's per-row arrays, the
    # inner chunks being encoded, and one bucket (phase 2) or one read block (phase 1, ~half a
    # bucket's bytes: block_elems below).
    per_row_nbytes = 8 + 8 + 4 + 8 + 8  # order, row_nnz, bucket_of_row, + transient permutation
    held = _rss_nbytes() + n_rows * per_row_nbytes
    chunk_elems = max(1, int(chunk_rows * row_nnz.mean()))
    write_nbytes = writer_nbytes(chunk_elems, value_dtype.itemsize, index_dtype.itemsize)
    max_row_nbytes = int(row_nnz.max(initial=0)) * elem_nbytes
    bucket_nbytes = int((max_nbytes - held - write_nbytes) * 0.8)
    need_bucket = max(MIN_BUCKET_NBYTES, 2 * max_row_nbytes)
    if bucket_nbytes < need_bucket:
        need = held + write_nbytes + int(need_bucket / 0.8)
        raise ConvertError(
            f"--max-memory {format_nbytes(max_nbytes)} is too little to proceed: this run needs "
            f"at least {format_nbytes(need)} (already held: {format_nbytes(held)} for Python, "
            f"obs and {n_rows:,} rows' bookkeeping; inner chunks being encoded: "
            f"{format_nbytes(write_nbytes)}; smallest bucket: {format_nbytes(need_bucket)}). "
            "Raise --max-memory, or convert fewer inputs at a time (--append).")

    rng = np.random.default_rng(seed)
    position = rng.permutation(n_rows) if shuffle else np.arange(n_rows)
    order = np.empty(n_rows, dtype=np.int64)
    order[position] = np.arange(n_rows)
    del position
    cum = np.cumsum(row_nnz[order] * elem_nbytes)
    edges = [0]
    for start, stop in zip(dataset_bounds[:-1], dataset_bounds[1:]):
        base = cum[start - 1] if start else 0
        targets = base + np.arange(bucket_nbytes, cum[stop - 1] - base, bucket_nbytes)
        cuts = np.searchsorted(cum[start:stop], targets, side="right") + start
        edges += [int(c) for c in np.unique(cuts) if start < c < stop] + [int(stop)]
    bucket_bounds = np.asarray(edges, dtype=np.int64)
    del cum
    bucket_of_position = np.repeat(np.arange(len(bucket_bounds) - 1, dtype=np.int32),
                                   np.diff(bucket_bounds))
    bucket_of_row = np.empty(n_rows, dtype=np.int32)
    bucket_of_row[order] = bucket_of_position
    # A read block costs ~40 bytes per non-zero while it is re-mapped and split into buckets.
    block_elems = int(np.clip(bucket_nbytes // 40, MIN_BLOCK_ELEMS, MAX_BLOCK_ELEMS))
    return _Plan(order, row_nnz, dataset_bounds, bucket_bounds, bucket_of_row, block_elems)


def _rss_nbytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: assume a typical interpreter with numpy/zarr/anndata loaded
        return 300 << 20


# ---------------------------------------------------------------------------------------------
# Scatter and write

def _scatter(groups, var_maps, plan: _Plan, buckets: BucketFiles, progress: bool) -> None:
    bar = _bar(len(plan.order), progress, "convert 1/2 scatter to buckets")
    offset = 0
    try:
        for g, var_map in zip(groups, var_maps):
            bounds = np.cumsum(np.concatenate([[0], plan.row_nnz[offset:offset + g.n_obs]]))
            start = 0
            while start < g.n_obs:
                stop = int(np.searchsorted(bounds, bounds[start] + plan.block_elems, "right")) - 1
                stop = min(g.n_obs, max(stop, start + 1))
                data, indices, lengths = g.read_rows(start, stop)
                if len(indices) and (int(indices.min()) < 0 or
                                     int(indices.max()) >= len(g.var_names)):
                    raise ConvertError(f"{g.label}: {g.x_path} has column indices outside "
                                       f"[0, {len(g.var_names)}) in rows {start}-{stop}")
                data, indices, lengths = var_map.apply(data, indices, lengths)
                rows = slice(offset + start, offset + stop)
                plan.row_nnz[rows] = lengths
                buckets.scatter(plan.bucket_of_row[rows], data, indices, lengths)
                bar.update(stop - start)
                start = stop
            offset += g.n_obs
    finally:
        bar.close()


def _write_datasets(root, first_index, obs, var_frame, plan: _Plan, buckets: BucketFiles,
                    value_dtype, index_dtype, chunk_rows, shard_nbytes, codec, progress):
    from concurrent.futures import ThreadPoolExecutor

    bar = _bar(len(plan.order), progress, "convert 2/2 shuffle + write")
    pool = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="biodali-encode")
    names, writer = [], None
    try:
        for d, (start, stop) in enumerate(zip(plan.dataset_bounds[:-1], plan.dataset_bounds[1:])):
            rows = plan.order[start:stop]
            lengths = plan.row_nnz[rows]
            name = f"dataset_{first_index + d}"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
                dataset_obs = obs.iloc[rows]
            writer = DatasetWriter(root, name, dataset_obs, var_frame, int(lengths.sum()),
                                   value_dtype, index_dtype, chunk_rows, shard_nbytes, codec,
                                   pool)
            del dataset_obs
            first = int(np.searchsorted(plan.bucket_bounds, start))
            last = int(np.searchsorted(plan.bucket_bounds, stop))
            for b in range(first, last):
                p0, p1 = int(plan.bucket_bounds[b]), int(plan.bucket_bounds[b + 1])
                data, indices = buckets.read(b, int(plan.row_nnz[plan.order[p0:p1]].sum()))
                src_start, row_lengths = in_position_order(plan.order[p0:p1], plan.row_nnz)
                writer.append_rows(data, indices, src_start, row_lengths)
                del data, indices
                buckets.remove(b)
                bar.update(p1 - p0)
            writer.finish(lengths)
            writer = None
            names.append(name)
    finally:
        if writer is not None:
            writer.abort()
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    return names


def _bar(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, unit="cell", unit_scale=True, desc=desc, file=sys.stderr,
                disable=not enabled, mininterval=1.0, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# The output: existing collections, leftovers of interrupted runs, committing an append

def _check_output(output: Path, append: bool):
    """None for a new output; the open collection when appending to an existing one."""
    import zarr

    if not (output.exists() or output.is_symlink()):
        return None
    if not append:
        raise ConvertError(f"{output} already exists; pass --append (append=True) to add the "
                           "inputs to it as new datasets, or remove it / choose another output")
    try:
        root = zarr.open_group(str(output), mode="r+", zarr_format=3)
    except Exception as exc:  # noqa: BLE001
        raise ConvertError(f"{output}: cannot append, not a zarr v3 group ({exc})") from exc
    if APPEND_MARKER in root.attrs:  # an append was cut off while moving datasets in
        _roll_back_append(output, root)
    if not ANNBATCH_ENCODING.items() <= dict(root.attrs).items() or not _dataset_names(root):
        raise ConvertError(f"{output}: cannot append, not a finished annbatch collection (no "
                           f"{ANNBATCH_ENCODING} attributes or no dataset_k)")
    return root


def _dataset_names(root) -> list[str]:
    names = [n for n in root.group_keys() if n.startswith("dataset_") and n[8:].isdigit()]
    return sorted(names, key=lambda n: int(n[8:]))


def _existing_var(dataset) -> pd.Index:
    import anndata as ad

    var = dataset["var"]
    return pd.Index(as_object_strings(ad.io.read_elem(var[var.attrs.get("_index", "_index")])),
                    dtype=object)


def _commit_append(output: Path, root, collection_path: Path, names: list[str]) -> None:
    """Moves the new datasets into the collection. The marker names them while they move in, so
    that a run cut off here is rolled back by the next one."""
    root.update_attributes({APPEND_MARKER: names})
    for name in names:
        os.rename(collection_path / name, output / name)
    _rewrite_root_attrs(output, {k: v for k, v in root.attrs.items() if k != APPEND_MARKER})
    consolidate(output)


def _roll_back_append(output: Path, root) -> None:
    names = list(root.attrs[APPEND_MARKER])
    print(f"biodali convert: {output}: removing {names}, left by an append that was cut off",
          file=sys.stderr)
    for name in names:
        shutil.rmtree(output / name, ignore_errors=True)
    _rewrite_root_attrs(output, {k: v for k, v in root.attrs.items() if k != APPEND_MARKER})
    consolidate(output)


def _rewrite_root_attrs(output: Path, attrs: dict) -> None:
    """zarr's update_attributes only adds keys; replace the root's attributes as a whole."""
    import zarr

    group = zarr.open_group(str(output), mode="r+", zarr_format=3, use_consolidated=False)
    group.attrs.put(attrs)


def _remove_stale_tmp(tmp_root: Path) -> None:
    if not tmp_root.exists():
        return
    try:
        pid = int((tmp_root / "owner.pid").read_text())
    except (OSError, ValueError):
        pid = None
    if pid is not None and pid != os.getpid() and _alive(pid):
        raise ConvertError(f"{tmp_root} belongs to a biodali convert still running (pid {pid}); "
                           "wait for it, or stop it and run again")
    print(f"biodali convert: removing {tmp_root}, left by an interrupted run", file=sys.stderr)
    shutil.rmtree(tmp_root)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_gene_file(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise ConvertError(f"{path}: cannot read the gene list: {exc}") from exc
    genes = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    if not genes:
        raise ConvertError(f"{path}: the gene list is empty")
    return genes
