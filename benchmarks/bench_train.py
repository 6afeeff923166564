"""End-to-end training benchmark: the demo's model (examples/train_cell_type.py's MLP on
log1p-normalized expression of 2,000 highly variable genes, predicting cell_type) trained for a
fixed number of steps, fed by biodali.torch.ExpressionLoader vs by annbatch.Loader with the same
transform done in torch on its scipy CSR batches, same machine, side by side.

    flock /tmp/biodali-bench.lock .venv/bin/python benchmarks/bench_train.py     # 1M-cell collection

Needs the annbatch env (../shared/tools/annbatch-env/setup.sh) plus a torch it can import, which
the env leaves out; a CPU-usable torch for its Python 3.13 goes into a folder of its own, which
the annbatch contender appends to sys.path (the env's venv is left as it is; ~4.6 GB, PyPI's
torch brings its CUDA libraries along):

    ../shared/tools/annbatch-env/run.sh pip install --target /opt/annbatch-torch torch==2.13.0

Steps: gene subset (biodali.gene_stats.highly_variable_genes over 20,000 cells, as the demo
chooses its genes) -> the collection read once (warm page cache, as bench_reader.py) -> for run
1..R: the annbatch contender, then the biodali one, each its own process printing one JSON line
(contenders/train_common.py) -> results/train-<YYYYMMDD-HHMM>.json (every run) and
results/train-latest.md (medians), printed at the end.

Larger than RAM (``--page-cache cold-per-epoch``): the collection is not read ahead; its cached
pages are dropped (posix_fadvise DONTNEED on every file) before every contender process and, in
the contenders, at the start of every later epoch of their loader, so every epoch reads from
storage. A run of --steps steps at batch B covers steps x B / n_obs epochs (200 x 1024 on the 1M
collection: a fifth of one); ``--drop-every N`` also drops every N steps, a stand-in for epoch
boundaries in short runs. Drop time is left out of the timings. The markdown then goes to
results/train-cold-latest.md.

    .venv/bin/python benchmarks/bench_train.py --page-cache cold-per-epoch
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
from bench_reader import (GIB, child_env, cold_page_cache, git_describe,  # noqa: E402
                          machine_info, run_json, warm_page_cache)

DEFAULT_DATA = "/opt/benchdata/expr-1m-annbatch.zarr"
DEFAULT_ANNBATCH_PYTHON = "../shared/tools/annbatch-env/run.sh python"
DEFAULT_TORCH_SITE = "/opt/annbatch-torch"
CONTENDERS = ("annbatch", "biodali")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="annbatch DatasetCollection (default %(default)s)")
    p.add_argument("--annbatch-python", default=DEFAULT_ANNBATCH_PYTHON,
                   help="command running a Python that imports annbatch (default: %(default)s)")
    p.add_argument("--torch-site", default=DEFAULT_TORCH_SITE,
                   help="folder with a torch for the annbatch Python ('' if it has its own; "
                        "default %(default)s, a path inside the annbatch env's chroot)")
    p.add_argument("--biodali-python", default=sys.executable)
    p.add_argument("--n-genes", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=1024, help="the demo's batch size")
    p.add_argument("--chunk-size", type=int, default=512)
    p.add_argument("--preload-chunks", type=int, default=32)
    p.add_argument("--steps", type=int, default=200, help="timed steps per run")
    p.add_argument("--warmup-steps", type=int, default=10)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="run r (1-based) uses seed + r - 1")
    p.add_argument("--headroom-gib", type=float, default=4.0)
    p.add_argument("--allow-low-memory", action="store_true")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per contender process")
    p.add_argument("--page-cache", choices=["warm", "cold-per-epoch"], default="warm",
                   help="warm: read the collection once first (after dropping its pages); "
                        "cold-per-epoch: drop its cached pages before every contender process and "
                        "at every later epoch start, never read it ahead (default %(default)s)")
    p.add_argument("--drop-every", type=int, default=0, metavar="N",
                   help="cold-per-epoch: also drop the pages every N steps (warm-up steps counted), "
                        "an epoch boundary for runs shorter than an epoch (default: 0, never)")
    p.add_argument("--out", default=str(HERE / "results"))
    args = p.parse_args(argv)
    if args.drop_every and args.page_cache != "cold-per-epoch":
        p.error("--drop-every needs --page-cache cold-per-epoch")
    args.cold = args.page_cache == "cold-per-epoch"
    return args


def write_genes(data: str, n_genes: int) -> str:
    """The demo's gene choice, saved as .npy outside the repository."""
    import numpy as np

    from biodali.gene_stats import highly_variable_genes

    genes = np.array(highly_variable_genes(data, n_genes, max_cells=20_000), dtype=np.int64)
    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"biodali-bench-train-hvg-{n_genes}.npy"
    np.save(path, genes)
    return str(path)


def contender_cmd(args, name: str, seed: int) -> list[str]:
    common = ["--data", args.data, "--genes-file", args.genes_file, "--batch-size", str(args.batch_size),
              "--chunk-size", str(args.chunk_size), "--preload-chunks", str(args.preload_chunks),
              "--steps", str(args.steps), "--warmup-steps", str(args.warmup_steps), "--seed", str(seed),
              *(["--drop-cache-per-epoch"] if args.cold else []),
              *(["--drop-every", str(args.drop_every)] if args.drop_every else [])]
    if name == "annbatch":
        site = ["--torch-site", args.torch_site] if args.torch_site else []
        return shlex.split(args.annbatch_python) + [str(HERE / "contenders" / "train_annbatch.py"),
                                                    *common, *site]
    return shlex.split(args.biodali_python) + [str(HERE / "contenders" / "train_biodali.py"), *common]


def short(res: dict) -> str:
    if "error" in res:
        return f"FAILED ({res['error']}): {res.get('stderr_tail', '').strip().splitlines()[-1:]}"
    return (f"{res['samples_per_s']:,.0f} samples/s, waiting for data {res['wait_share']:.0%}, "
            f"loss {res['final_loss']:.3f}, peak RSS {res['peak_rss_bytes'] / GIB:.2f} GiB")


def summary(runs: list[dict]) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return {}
    med = {k: statistics.median(r[k] for r in ok) for k in
           ("samples_per_s", "wait_share", "seconds", "peak_rss_bytes", "cpu_seconds")}
    med["per_run_samples_per_s"] = [round(r["samples_per_s"]) for r in ok]
    return med


def _cache_words(report: dict) -> str:
    a = report["args"]
    if not a.get("cold"):
        return "warm page cache"
    n_obs = report.get("n_obs") or 0
    epochs = (a["warmup_steps"] + a["steps"]) * a["batch_size"] / n_obs if n_obs else 0
    words = ("**cold page cache per epoch** (the collection's cached pages dropped with "
             "posix_fadvise(DONTNEED) before every contender process and at every later epoch "
             f"start; a run covers {epochs:.2f} epochs")
    if a.get("drop_every"):
        words += f"; also dropped every {a['drop_every']} steps, as a stand-in epoch boundary"
    return words + "; drop time left out of the timings)"


def render_markdown(report: dict) -> str:
    a, m = report["args"], report["machine"]
    s = report["summary"]
    lines = [f"# Training benchmark: biodali vs annbatch, "
             f"{'cold page cache per epoch' if a.get('cold') else 'warm page cache'} ({report['started']})", "",
             f"`{a['data']}` ({report.get('n_obs', '?'):,} cells), {_cache_words(report)}; the demo's MLP "
             f"({a['n_genes']} HVG -> 256 -> 256 -> 50, Adam), batch {a['batch_size']}, chunk_size "
             f"{a['chunk_size']} x preload {a['preload_chunks']}, {a['steps']} timed steps after "
             f"{a['warmup_steps']} warm-up steps, median of {a['runs']} runs (annbatch then biodali "
             f"each run); {m['affinity_cpus']} cores ({m['cpu_model']}), load average at start "
             f"{m['loadavg_at_start'][0]:.2f}.", "",
             "| loader | samples/s | waiting for data | per-run samples/s | peak RSS | CPU s / wall s |",
             "|---|---:|---:|---|---:|---:|"]
    for name in CONTENDERS:
        x = s.get(name) or {}
        if not x:
            lines.append(f"| {name} | failed | | | | |")
            continue
        lines.append(f"| {name} | {x['samples_per_s']:,.0f} | {x['wait_share']:.0%} | "
                     f"{', '.join(f'{v:,}' for v in x['per_run_samples_per_s'])} | "
                     f"{x['peak_rss_bytes'] / GIB:.2f} GiB | {x['cpu_seconds'] / x['seconds']:.2f} |")
    if s.get("annbatch") and s.get("biodali"):
        lines += ["", f"biodali / annbatch samples/s: **{s['biodali']['samples_per_s'] / s['annbatch']['samples_per_s']:.2f}x**"]
    lines += ["", "Waiting for data = the share of the timed wall time the training thread spent in "
              "`next(batches)`: for annbatch that includes the transform (normalize_total + log1p, "
              "gene subset, dense float32; scipy, then torch.from_numpy), which runs in the training "
              "thread; biodali computes it on DALI's threads while the model trains. CPU s / wall s: "
              "cores kept busy (of the machine's).", "",
              "Produced by:", "", "```", report["command_line"], "```", "",
              f"Raw runs: `{report['json_file']}`", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    args.data = str(Path(args.data).resolve())
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now()
    report = {"started": started.strftime("%Y-%m-%d %H:%M"),
              "command_line": f"cd {shlex.quote(os.getcwd())} && " + shlex.join([sys.executable, *sys.argv]),
              "machine": machine_info(), "git": git_describe()}
    sys.path.insert(0, str(HERE / "contenders"))
    import _common

    report["n_obs"], report["n_vars"] = _common.x_shape(args.data)
    # In a spawned process: children inherit the parent's ru_maxrss as a floor (see bench_reader).
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        args.genes_file = pool.apply(write_genes, (args.data, args.n_genes))
    report["args"] = dict(vars(args))
    if args.cold:
        report["page_cache"] = cold_page_cache(Path(args.data))
        files = _common.collection_files(args.data)
    else:
        report["page_cache"] = warm_page_cache(Path(args.data), args.headroom_gib, args.allow_low_memory,
                                               fresh=True)
    env = child_env(args.data)
    report["runs"] = {name: [] for name in CONTENDERS}
    for run in range(1, args.runs + 1):
        for name in CONTENDERS:
            print(f"run {run}/{args.runs} {name}:", file=sys.stderr, flush=True)
            if args.cold:
                drop_seconds = _common.drop_page_cache(files)
                cached = _common.cached_bytes(files)
            res = run_json(contender_cmd(args, name, args.seed + run - 1), args.timeout, env)
            res["run"] = run
            if args.cold:
                res["harness_drop_seconds"] = drop_seconds
                res["cached_bytes_after_harness_drop"] = cached
            report["runs"][name].append(res)
            print(f"  {short(res)}", file=sys.stderr, flush=True)
    report["summary"] = {name: summary(runs) for name, runs in report["runs"].items()}
    report["finished"] = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    json_file = out_dir / f"train-{started.strftime('%Y%m%d-%H%M')}.json"
    report["json_file"] = str(json_file.relative_to(REPO) if json_file.is_relative_to(REPO) else json_file)
    json_file.write_text(json.dumps(report, indent=1) + "\n")
    md = render_markdown(report)
    (out_dir / ("train-cold-latest.md" if args.cold else "train-latest.md")).write_text(md)
    print(md)
    return 1 if any("error" in r for runs in report["runs"].values() for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
