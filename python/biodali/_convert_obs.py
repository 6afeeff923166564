"""obs of ``biodali convert``: the inputs' columns combined into one table (categoricals keep
their categories, united across inputs), plus the provenance columns src_path and src_row."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ._convert_inputs import ConvertError, InputGroup


def combined_obs(groups: list[InputGroup], columns: list[str] | None,
                 also_columns: dict[str, object] | None = None) -> pd.DataFrame:
    """All inputs' obs rows in input order. columns None keeps every column any input has;
    a column an input lacks reads as missing (NaN / a missing category). also_columns (name ->
    dtype) adds columns that must exist even if no input has them (an appended collection's)."""
    if columns is not None:
        known = {c for g in groups for c in g.obs_column_names()} | set(also_columns or ())
        unknown = [c for c in columns if c not in known]
        if unknown:
            raise ConvertError(f"obs column(s) {unknown} are in no input (inputs have: "
                               f"{sorted(known)})")
    frames = [g.read_obs(columns) for g in groups]
    names = list(dict.fromkeys(
        [c for f in frames for c in f.columns] + list(also_columns or ())))
    if columns is not None:
        names = [c for c in columns if c in names]
    lengths = [len(f) for f in frames]
    out = {c: _combined_column([f[c] if c in f.columns else None for f in frames], lengths,
                               (also_columns or {}).get(c)) for c in names}
    index = pd.Index(np.concatenate([f.index.to_numpy(dtype=object) for f in frames]), dtype=object)
    obs = pd.DataFrame(out, index=index)
    labels = [g.label for g in groups]
    obs["src_path"] = pd.Categorical.from_codes(
        np.repeat(np.arange(len(groups), dtype=np.int32), lengths), categories=labels)
    obs["src_row"] = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
    return obs


def _combined_column(parts: list, lengths: list[int], dtype_hint):
    present = [p for p in parts if p is not None]
    is_categorical = any(isinstance(p.dtype, pd.CategoricalDtype) for p in present) or (
        isinstance(dtype_hint, pd.CategoricalDtype))
    if is_categorical:
        categories = pd.Index([])
        for p in present:
            cats = p.cat.categories if isinstance(p.dtype, pd.CategoricalDtype) else pd.Index(
                pd.unique(p.dropna()))
            categories = categories.append(cats[~cats.isin(categories)])
        ordered = bool(present) and all(
            isinstance(p.dtype, pd.CategoricalDtype) and p.cat.ordered
            and p.cat.categories.equals(categories) for p in present)
        codes = [np.full(n, -1, dtype=np.int32) if p is None else
                 pd.Categorical(p, categories=categories).codes.astype(np.int32)
                 for p, n in zip(parts, lengths)]
        return pd.Categorical.from_codes(np.concatenate(codes), categories=categories,
                                         ordered=ordered)
    if not present:
        kind = np.dtype(dtype_hint).kind if dtype_hint is not None else "O"
        return np.full(sum(lengths), np.nan) if kind in "iuf" else np.full(sum(lengths), None)
    numeric = all(pd.api.types.is_numeric_dtype(p.dtype) for p in present)
    filled = [pd.Series(np.asarray(p) if not pd.api.types.is_extension_array_dtype(p.dtype)
                        else p.array)
              if p is not None else pd.Series(np.full(n, np.nan) if numeric else [None] * n)
              for p, n in zip(parts, lengths)]
    combined = pd.concat(filled, ignore_index=True)
    return combined.array if pd.api.types.is_extension_array_dtype(combined.dtype) \
        else combined.to_numpy()


def existing_obs_dtypes(dataset_group) -> dict[str, object]:
    """Column name -> dtype (CategoricalDtype for categoricals) of a collection dataset's obs,
    without the provenance columns."""
    obs = dataset_group["obs"]
    out = {}
    for c in obs.attrs.get("column-order", []):
        if c in ("src_path", "src_row"):
            continue
        node = obs[c]
        encoding = node.attrs.get("encoding-type")
        if encoding == "categorical":
            out[c] = pd.CategoricalDtype()
        elif hasattr(node, "dtype"):
            out[c] = np.dtype(node.dtype) if getattr(node.dtype, "kind", "O") in "biuf" else None
        else:
            out[c] = None
    return out
