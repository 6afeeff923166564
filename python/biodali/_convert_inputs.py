"""Inputs of ``biodali convert``: h5ad files, AnnData zarr stores and annbatch collections,
opened read-only, checked, and read in blocks of rows as CSR pieces.

Every problem is raised as ``ConvertError`` naming the file and what is wrong with it."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

ANNBATCH_ENCODING_TYPE = "annbatch-preshuffled"
PROVENANCE_COLUMNS = ("src_path", "src_row")  # written by convert; an input's own are replaced


class ConvertError(Exception):
    """A problem with the inputs, the arguments or the output of ``biodali convert``."""


@dataclass
class InputGroup:
    """One AnnData group to read: a whole h5ad/zarr input, or one dataset_k of a collection."""

    label: str  # the path as given (collections: "<path>/dataset_k"); goes into obs src_path
    group: object  # h5py.Group or zarr.Group
    x_path: str  # "X" or "layers/<name>"
    n_obs: int
    var_names: pd.Index
    is_dense: bool
    value_dtype: np.dtype
    _indptr: np.ndarray | None = field(default=None, repr=False)

    @property
    def x(self):
        return self.group[self.x_path]

    def indptr(self) -> np.ndarray:
        """CSR row offsets (int64), read once; for dense X, n_vars per row (an upper bound)."""
        if self._indptr is None:
            if self.is_dense:
                self._indptr = np.arange(self.n_obs + 1, dtype=np.int64) * len(self.var_names)
            else:
                self._indptr = self._read(lambda: np.asarray(self.x["indptr"][:], dtype=np.int64),
                                          "X/indptr")
                if len(self._indptr) != self.n_obs + 1 or np.any(np.diff(self._indptr) < 0):
                    raise ConvertError(f"{self.label}: {self.x_path}/indptr is corrupt "
                                       f"({len(self._indptr)} entries for {self.n_obs} rows, or "
                                       "not non-decreasing)")
        return self._indptr

    def row_nnz_upper_bound(self) -> np.ndarray:
        return np.diff(self.indptr())

    def read_rows(self, start: int, stop: int):
        """(data, indices, lengths) of rows [start, stop): non-zeros in input column numbers."""
        if self.is_dense:
            block = self._read(lambda: np.asarray(self.x[start:stop]), f"rows {start}-{stop}")
            rows, cols = np.nonzero(block)
            lengths = np.bincount(rows, minlength=stop - start).astype(np.int64)
            return block[rows, cols], cols.astype(np.int32), lengths
        indptr = self.indptr()
        a, b = int(indptr[start]), int(indptr[stop])
        data = self._read(lambda: np.asarray(self.x["data"][a:b]), f"X/data of rows {start}-{stop}")
        indices = self._read(lambda: np.asarray(self.x["indices"][a:b]),
                             f"X/indices of rows {start}-{stop}")
        if len(data) != b - a or len(indices) != b - a:
            raise ConvertError(f"{self.label}: {self.x_path} is truncated (rows {start}-{stop} "
                               f"need elements {a}-{b})")
        return data, indices, np.diff(indptr[start:stop + 1])

    def read_obs(self, columns: list[str] | None) -> pd.DataFrame:
        """obs with the index and the requested columns this group has (None: all of them)."""
        import anndata as ad

        obs = self.group["obs"]
        names = [c for c in obs.attrs.get("column-order", []) if c not in PROVENANCE_COLUMNS]
        if columns is not None:
            names = [c for c in names if c in set(columns)]
        index = self._read(lambda: ad.io.read_elem(obs[obs.attrs.get("_index", "_index")]),
                           "obs index")
        cols = {c: self._read(lambda c=c: ad.io.read_elem(obs[c]), f"obs/{c}") for c in names}
        frame = pd.DataFrame(cols, index=pd.Index(as_object_strings(index), dtype=object))
        if len(frame) != self.n_obs:
            raise ConvertError(f"{self.label}: obs has {len(frame)} rows but {self.x_path} has "
                               f"{self.n_obs}")
        return frame

    def obs_column_names(self) -> list[str]:
        return [c for c in self.group["obs"].attrs.get("column-order", [])
                if c not in PROVENANCE_COLUMNS]

    def _read(self, read, what: str):
        try:
            return read()
        except ConvertError:
            raise
        except Exception as exc:  # noqa: BLE001  (h5py/zarr/codec errors of all kinds)
            raise ConvertError(f"{self.label}: cannot read {what}: {type(exc).__name__}: {exc}") \
                from exc


class InputSet:
    """The opened inputs, in order (collections expanded into their datasets); closes h5 files."""

    def __init__(self, paths, layer: str | None = None):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.groups: list[InputGroup] = []
        self._files = []
        try:
            for path in paths:
                self.groups += self._open(str(path), layer)
        except BaseException:
            self.close()
            raise
        if not self.groups:
            raise ConvertError("no inputs given")

    def close(self) -> None:
        for f in self._files:
            f.close()
        self._files = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @property
    def n_obs(self) -> int:
        return sum(g.n_obs for g in self.groups)

    def _open(self, path: str, layer: str | None) -> list[InputGroup]:
        p = Path(path)
        if not p.exists():
            raise ConvertError(f"{path}: no such file or directory")
        if p.is_file():
            import h5py

            if not h5py.is_hdf5(path):
                raise ConvertError(f"{path}: not an h5ad (HDF5) file nor an AnnData zarr "
                                   "directory; cannot read it")
            try:
                f = h5py.File(path, "r")
            except OSError as exc:
                raise ConvertError(f"{path}: cannot open the h5ad file: {exc}") from exc
            self._files.append(f)
            return [_anndata_group(path, f, layer)]
        import zarr

        try:
            root = zarr.open_group(path, mode="r")
        except Exception as exc:  # noqa: BLE001  (not a zarr group: various zarr errors)
            raise ConvertError(f"{path}: not an h5ad file nor a zarr group "
                               f"({type(exc).__name__}: {exc}); cannot read it") from exc
        if root.attrs.get("encoding-type") != ANNBATCH_ENCODING_TYPE:
            return [_anndata_group(path, root, layer)]
        names = sorted((int(n[8:]), n) for n in root.group_keys()
                       if n.startswith("dataset_") and n[8:].isdigit())
        if not names:
            raise ConvertError(f"{path}: an annbatch collection without any dataset_k group")
        return [_anndata_group(f"{path}/{n}", root[n], layer) for _, n in names]


def _anndata_group(label: str, group, layer: str | None) -> InputGroup:
    encoding = group.attrs.get("encoding-type")
    if encoding not in (None, "anndata"):
        raise ConvertError(f"{label}: not an AnnData store (root encoding-type {encoding!r}, "
                           "expected 'anndata')")
    missing = [k for k in ("obs", "var") if k not in group]
    if missing:
        raise ConvertError(f"{label}: not an AnnData store (no {' or '.join(missing)} group)")
    x_path = "X" if layer is None else f"layers/{layer}"
    if x_path not in group:
        if layer is None:
            raise ConvertError(f"{label}: the AnnData has no X (pass --layer NAME to convert a "
                               "layer instead)")
        layers = list(group["layers"].keys()) if "layers" in group else []
        raise ConvertError(f"{label}: no layer {layer!r} (layers: {layers})")
    x = group[x_path]
    x_encoding = x.attrs.get("encoding-type")
    if x_encoding == "csc_matrix":
        raise ConvertError(f"{label}: {x_path} is a CSC matrix; rows cannot be streamed from it. "
                           "Convert it to CSR first, e.g. adata.X = adata.X.tocsr(); "
                           "adata.write_h5ad(...)")
    if x_encoding == "csr_matrix":
        shape = tuple(int(s) for s in x.attrs["shape"])
        is_dense, value_dtype = False, np.dtype(x["data"].dtype)
    elif hasattr(x, "shape") and hasattr(x, "dtype") and len(x.shape) == 2:
        shape, is_dense, value_dtype = tuple(x.shape), True, np.dtype(x.dtype)
    else:
        raise ConvertError(f"{label}: {x_path} is neither a CSR matrix nor a 2-D dense array "
                           f"(encoding-type {x_encoding!r})")
    if value_dtype.kind not in "biuf":
        raise ConvertError(f"{label}: {x_path} holds {value_dtype} values; only numbers convert")
    var_names = _var_names(label, group)
    if len(var_names) != shape[1]:
        raise ConvertError(f"{label}: {x_path} has {shape[1]} columns but var has "
                           f"{len(var_names)} names")
    duplicated = var_names[var_names.duplicated()].unique()
    if len(duplicated):
        examples = ", ".join(map(repr, duplicated[:5]))
        raise ConvertError(
            f"{label}: {len(duplicated)} var names occur more than once ({examples}); genes are "
            "aligned by name, so they must be unique. Fix the input first, e.g. "
            "adata.var_names_make_unique() (renames duplicates to NAME-1, NAME-2, ...) or drop the "
            "duplicated genes (adata = adata[:, ~adata.var_names.duplicated()]), then write it "
            "again.")
    return InputGroup(label=label, group=group, x_path=x_path, n_obs=shape[0],
                      var_names=var_names, is_dense=is_dense, value_dtype=value_dtype)


def _var_names(label: str, group) -> pd.Index:
    import anndata as ad

    var = group["var"]
    try:
        names = ad.io.read_elem(var[var.attrs.get("_index", "_index")])
    except Exception as exc:  # noqa: BLE001
        raise ConvertError(f"{label}: cannot read the var names: {exc}") from exc
    return pd.Index(as_object_strings(names), dtype=object)


def as_object_strings(values) -> np.ndarray:
    """Names read by anndata (numpy StringDType, bytes or object arrays) as an object array."""
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        return np.char.decode(arr, "utf-8").astype(object)
    return arr.astype(object)


# ---------------------------------------------------------------------------------------------
# Aligning var by name

def output_var(groups: list[InputGroup], join: str, genes: list[str] | None = None) -> pd.Index:
    """The output genes: inner join = the genes of every input (in the first input's order);
    outer = every gene (first input's order, then each later input's new genes in its order);
    genes = exactly that list."""
    if genes is not None:
        out = pd.Index(genes, dtype=object)
        if out.has_duplicates:
            raise ConvertError(f"--genes lists {out[out.duplicated()][0]!r} more than once")
        for g in groups:
            if not g.var_names.isin(out).any():
                raise ConvertError(f"{g.label}: shares no gene with the --genes list (e.g. "
                                   f"{g.var_names[0]!r} vs {out[0]!r}); check the gene naming")
        return out
    if join not in ("inner", "outer"):
        raise ConvertError(f"var join must be 'inner' or 'outer', got {join!r}")
    out = groups[0].var_names
    for g in groups[1:]:
        if join == "inner":
            kept = out[out.isin(g.var_names)]
            if len(kept) == 0:
                raise ConvertError(
                    f"no gene is shared by every input under --var-join inner: {g.label} shares "
                    f"none with the inputs before it (e.g. {g.var_names[0]!r} vs {out[0]!r}). "
                    "Use --var-join outer (missing genes read as zeros) or harmonise the gene "
                    "names (e.g. symbols vs Ensembl IDs).")
            out = kept
        else:
            out = out.append(g.var_names[~g.var_names.isin(out)])
    return out


class VarMap:
    """Maps an input's column numbers to output column numbers and drops the others."""

    def __init__(self, input_var: pd.Index, out_var: pd.Index):
        self.mapping = out_var.get_indexer(input_var).astype(np.int32)  # -1: not in the output
        self.identity = len(input_var) == len(out_var) and bool(
            np.array_equal(self.mapping, np.arange(len(out_var))))
        self.drops = bool((self.mapping < 0).any())
        kept = self.mapping[self.mapping >= 0]
        self.keeps_order = bool(np.all(np.diff(kept) > 0))

    def apply(self, data: np.ndarray, indices: np.ndarray, lengths: np.ndarray):
        """(data, output indices as int32, lengths) of the same rows; rows stay sorted by column
        when they were (a reordering of genes sorts each row again)."""
        if self.identity:
            return data, indices, lengths
        new = self.mapping[indices]
        if not self.drops and self.keeps_order:
            return data, new, lengths
        row_ids = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
        if self.drops:
            keep = new >= 0
            data, new, row_ids = data[keep], new[keep], row_ids[keep]
            lengths = np.bincount(row_ids, minlength=len(lengths)).astype(np.int64)
        if not self.keeps_order:
            order = np.lexsort((new, row_ids))
            data, new = data[order], new[order]
        return data, new, lengths
