"""The ``biodali`` command: ``biodali synth expression ...``, ``biodali convert ...`` and
``biodali demo``.

Subcommands import their module only when run, so ``biodali --help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_synth(sub) -> None:
    synth = sub.add_parser("synth", help="write deterministic synthetic datasets")
    kinds = synth.add_subparsers(dest="kind", required=True, metavar="KIND")
    expr = kinds.add_parser(
        "expression", help="single-cell expression (10x-like counts) as AnnData or annbatch",
        description="Writes N synthetic cells x G genes: CSR float32 integer counts, obs "
                    "cell_type/batch/n_counts. Same arguments give the same bytes.")
    expr.add_argument("--n-cells", type=_positive_int, required=True)
    expr.add_argument("--n-genes", type=_positive_int, default=36601)
    expr.add_argument("--seed", type=int, default=0)
    expr.add_argument("--out", type=Path, required=True, help="output .zarr directory or .h5ad")
    expr.add_argument("--format", choices=("zarr", "h5ad"), default=None,
                      help="default: h5ad if --out ends in .h5ad, else zarr")
    expr.add_argument("--zarr-format", type=int, choices=(2, 3), default=3)
    expr.add_argument("--sharded", action="store_true",
                      help="zarr v3 shards (anndata's auto sharding) for every array")
    expr.add_argument("--layout", choices=("anndata", "annbatch"), default="anndata",
                      help="annbatch: a preshuffled annbatch DatasetCollection (zarr v3)")
    expr.add_argument("--chunk-rows", type=_positive_int, default=64,
                      help="annbatch: rows per inner chunk (x the mean row length)")
    expr.add_argument("--n-datasets", type=_positive_int, default=None,
                      help="annbatch: number of dataset_k groups (default: one per 181,000 cells)")
    expr.add_argument("--jobs", type=_positive_int, default=1, help="generator processes")
    expr.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    expr.add_argument("--quiet", action="store_true", help="no progress bar")
    expr.set_defaults(func=_run_synth_expression)


def _run_synth_expression(args) -> int:
    from biodali import synth

    fmt = args.format or ("h5ad" if args.out.suffix == ".h5ad" else "zarr")
    try:
        path = synth.write_expression(
            args.out, args.n_cells, n_genes=args.n_genes, seed=args.seed, format=fmt,
            zarr_format=args.zarr_format, sharded=args.sharded, layout=args.layout,
            chunk_rows=args.chunk_rows, n_datasets=args.n_datasets, jobs=args.jobs,
            overwrite=args.overwrite, progress=not args.quiet)
    except (ValueError, FileExistsError) as exc:  # bad argument combinations, existing --out
        print(f"biodali synth: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _add_convert(sub) -> None:
    conv = sub.add_parser(
        "convert", help="h5ad / AnnData zarr / annbatch collections -> a shuffled annbatch collection",
        description="Converts INPUTs (h5ad files, AnnData zarr stores, annbatch collections, in "
                    "any mix) into one annbatch 0.3.1 preshuffled collection (zarr v3, sharded), "
                    "out of core: a full random permutation of all rows with memory bounded by "
                    "--max-memory. obs keeps the inputs' columns plus src_path and src_row.")
    conv.add_argument("inputs", nargs="+", metavar="INPUT")
    conv.add_argument("--output", "-o", type=Path, required=True, help="the collection (.zarr)")
    conv.add_argument("--var-join", choices=("inner", "outer"), default="inner",
                      help="inner: genes in every input; outer: all genes, missing ones are zeros")
    conv.add_argument("--genes", type=Path, default=None,
                      help="file with one gene name per line: exactly the output var, in order")
    conv.add_argument("--obs-columns", nargs="*", default=None, metavar="COLUMN",
                      help="obs columns to keep (default: all; none given: only provenance)")
    conv.add_argument("--layer", default=None, help="convert layers/LAYER instead of X")
    conv.add_argument("--chunk-rows", type=_positive_int, default=64,
                      help="rows per inner chunk (x the mean row length), annbatch's default 64")
    conv.add_argument("--shard-size", default="1GB", help="uncompressed bytes per shard (1GB)")
    conv.add_argument("--dataset-size", default="4GB",
                      help="uncompressed CSR bytes per dataset_k (annbatch's dataset_size)")
    conv.add_argument("--codec", choices=("blosc-lz4", "zstd"), default="blosc-lz4")
    conv.add_argument("--no-shuffle", dest="shuffle", action="store_false",
                      help="keep the inputs' row order")
    conv.add_argument("--seed", type=int, default=0)
    conv.add_argument("--max-memory", default="4GB", help="bound on this process's memory")
    conv.add_argument("--append", action="store_true",
                      help="add the inputs to an existing collection as new datasets")
    conv.add_argument("--quiet", action="store_true", help="no progress bars")
    conv.set_defaults(func=_run_convert)


def _run_convert(args) -> int:
    from biodali import convert

    try:
        path = convert.convert(
            args.inputs, args.output, var_join=args.var_join, genes=args.genes,
            obs_columns=args.obs_columns, layer=args.layer, chunk_rows=args.chunk_rows,
            shard_size=args.shard_size, codec=args.codec, shuffle=args.shuffle, seed=args.seed,
            max_memory=args.max_memory, dataset_size=args.dataset_size, append=args.append,
            progress=not args.quiet)
    except convert.ConvertError as exc:
        print(f"biodali convert: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _add_demo(sub) -> None:
    demo = sub.add_parser("demo", help="stream a synthetic collection through the reader, print cells/s and check coverage (the training demo is examples/train_cell_type.py, `make demo`)")
    demo.add_argument("--n-cells", type=_positive_int, default=200_000)
    demo.add_argument("--batch-size", type=_positive_int, default=4096)
    demo.add_argument("--data-dir", type=Path, default=Path("~/.cache/biodali/demo").expanduser())
    demo.add_argument("--epochs", type=_positive_int, default=1)
    demo.set_defaults(func=_run_demo)


def _run_demo(args) -> int:
    from biodali import demo

    result = demo.main(args)
    return result if isinstance(result, int) else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="biodali", description="biodali: DALI readers and operators for biological data")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_synth(sub)
    _add_convert(sub)
    _add_demo(sub)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
