"""Python-side views of what fn.biodali.readers.anndata reads: which AnnData groups a path
stands for, and the categories its int32 codes index into."""
from __future__ import annotations

import os
from typing import Iterable, Sequence

import zarr


def expand_store_paths(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """AnnData groups in reading order: an annbatch collection stands for its dataset_N groups."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    groups = []
    for path in map(str, paths):
        root = zarr.open_group(path, mode="r")
        if root.attrs.get("encoding-type") == "annbatch-preshuffled":
            names = sorted((int(n[8:]), n) for n in root.group_keys()
                           if n.startswith("dataset_") and n[8:].isdigit())
            groups += [f"{path}/{n}" for _, n in names]
        else:
            groups.append(path)
    return groups


def obs_categories(paths, column: str) -> list[str]:
    """The categories that the reader's codes for categorical obs `column` index into.

    Stores with identical categories keep their own codes. Otherwise the reader re-codes every
    store into the union of all categories, in order of first appearance (store by store, each
    store's categories in their stored order), exactly as computed here."""
    union: dict[str, int] = {}
    for group in expand_store_paths(paths):
        categories = zarr.open_array(f"{group}/obs/{column}/categories", mode="r")[:]
        for name in _as_str(categories):
            union.setdefault(name, len(union))
    return list(union)


def _as_str(values: Iterable) -> list[str]:
    return [str(v) for v in values]
