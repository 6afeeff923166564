"""Side-by-side reader benchmark: biodali's fn.biodali.readers.anndata vs annbatch.Loader.

Runs with the biodali venv, from anywhere (paths are resolved against the repository):

    .venv/bin/python benchmarks/bench_reader.py                      # full size, quiet machine only
    .venv/bin/python benchmarks/bench_reader.py --data /tmp/x.zarr --cells 20000 --runs 1 \\
        --batch-size 1024 --out /tmp/results                         # smoke run

Steps: (a) reads every file of the collection once so that all figures are for a warm page
cache, after checking that MemAvailable can hold the collection plus --headroom-gib; with
--page-cache fresh (the default) each file's cached pages are dropped first (posix_fadvise
DONTNEED), so the cache holds the collection as one sequential read leaves it, whatever state
earlier reads and proactive reclaim left it in (see page_cache_folios.py);
(b) for each run and each config CHUNKxPRELOAD runs the annbatch contender and the biodali
contender (in alternating order: annbatch first in odd runs), each as its own process (contenders/annbatch_loader.py under --annbatch-python,
contenders/biodali_reader.py under --biodali-python), with the same seed, batch size and
number of timed cells, and collects the JSON line each prints; (c) runs decode_ceiling.py once;
(d) writes results/reader-<YYYYMMDD-HHMM>.json (every raw run + machine info) and
results/reader-latest.md (medians per config), and prints the markdown.

Cold mode (``--page-cache cold``): nothing is warmed; instead the collection's cached pages are
dropped (posix_fadvise DONTNEED on every file) before every contender run, so each run reads
from storage; disk_probe.py runs once before the runs (random reads of the X shards at 1-16
requests in flight) and the report adds MB/s of stored X bytes (X bytes per cell x cells/s)
next to the probe's best. The markdown goes to results/reader-cold-latest.md (the warm
reader-latest.md stays).

    .venv/bin/python benchmarks/bench_reader.py --page-cache cold --runs 3 [--io-depth 16]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE / "contenders"))
import _common  # noqa: E402

DEFAULT_DATA = "/opt/benchdata/expr-1m-annbatch.zarr"
DEFAULT_ANNBATCH_PYTHON = "../shared/tools/annbatch-env/run.sh python"
GIB = 1 << 30


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="annbatch DatasetCollection (default %(default)s)")
    p.add_argument("--annbatch-python", default=DEFAULT_ANNBATCH_PYTHON,
                   help="command running a Python that imports annbatch, split with shlex and run "
                        "from the repository root (default: %(default)s)")
    p.add_argument("--biodali-python", default=sys.executable,
                   help="command running a Python that imports biodali (default: this Python)")
    p.add_argument("--configs", default="32x256,512x32",
                   help="comma-separated CHUNK_SIZExPRELOAD_NCHUNKS (default %(default)s)")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--cells", type=int, default=500_000, help="timed cells per contender run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--warmup-batches", type=int, default=4)
    p.add_argument("--seed", type=int, default=0, help="run r (1-based) uses seed + r - 1")
    p.add_argument("--num-io-threads", type=int, default=0, help="biodali num_io_threads (0: all cores)")
    p.add_argument("--prefetch-windows", type=int, default=1, help="biodali prefetch_windows")
    p.add_argument("--io-depth", type=int, default=None,
                   help="biodali reader argument io_depth (requests in flight); passed to the reader "
                        "only when given (plugins without the argument otherwise still work)")
    p.add_argument("--reader-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra biodali reader argument, repeatable (VALUE: a Python literal, else a "
                        "string), e.g. --reader-arg io_depth=8; passed only when given")
    p.add_argument("--biodali-scipy", action="store_true",
                   help="biodali contender also wraps each batch in a scipy.sparse.csr_matrix")
    p.add_argument("--transforms", type=int, default=0, metavar="N_GENES",
                   help="transforms benchmark: both contenders also normalize + log1p, keep the "
                        "N_GENES most variable genes (dispersion over dataset_0's first 20,000 "
                        "cells) and densify to float32; results go to transforms-*.json/md")
    p.add_argument("--contenders", default=None,
                   help="which to run: annbatch, biodali, biodali_chain (transforms as three separate "
                        "operators); default annbatch,biodali (+ biodali_chain with --transforms)")
    p.add_argument("--no-decode-ceiling", action="store_true")
    p.add_argument("--headroom-gib", type=float, default=4.0,
                   help="RAM the loaders need besides the cached collection (default %(default)s)")
    p.add_argument("--no-rewarm", action="store_true",
                   help="read the collection only once, not again before every contender run "
                        "(kernels that reclaim cold page cache proactively, e.g. DAMON pageout "
                        "schemes, otherwise evict parts of it between runs)")
    p.add_argument("--page-cache", choices=["fresh", "as-is", "cold"], default="fresh",
                   help="fresh: drop the collection's cached pages and read them back once before "
                        "the runs (reproducible: large folios where the kernel and filesystem use "
                        "them); as-is: only read it, keeping whatever folios the cache holds; "
                        "cold: drop its cached pages before every contender run and never read it "
                        "ahead (every run reads from storage; runs disk_probe.py once first) "
                        "(default %(default)s)")
    p.add_argument("--no-disk-probe", action="store_true", help="cold mode: skip disk_probe.py")
    p.add_argument("--probe-seconds-per-point", type=float, default=1.5,
                   help="disk probe: seconds per measurement at most (default %(default)s)")
    p.add_argument("--probe-bytes-per-point", default="384M",
                   help="disk probe: bytes per measurement at most (default %(default)s)")
    p.add_argument("--allow-low-memory", action="store_true",
                   help="go on when MemAvailable < collection + headroom (figures then not warm cache)")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per contender process")
    p.add_argument("--out", default=str(HERE / "results"), help="output folder (default %(default)s)")
    args = p.parse_args(argv)
    args.cold = args.page_cache == "cold"
    for item in args.reader_arg:
        if "=" not in item:
            p.error(f"--reader-arg: {item!r} is not KEY=VALUE")
    args.config_list = []
    for c in args.configs.split(","):
        try:
            chunk, preload = (int(v) for v in c.lower().split("x"))
        except ValueError:
            p.error(f"--configs: {c!r} is not CHUNKxPRELOAD")
        args.config_list.append((chunk, preload))
    if args.contenders is None:
        args.contenders = "annbatch,biodali" + (",biodali_chain" if args.transforms else "")
    args.contender_list = [c.strip() for c in args.contenders.split(",") if c.strip()]
    for c in args.contender_list:
        if c not in ("annbatch", "biodali", "biodali_chain"):
            p.error(f"--contenders: unknown {c!r}")
    return args


# ------------------------------------------------------------------------------ machine ----

def meminfo() -> dict:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, rest = line.split(":", 1)
            out[key] = int(rest.split()[0]) * 1024  # kB
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_describe() -> dict:
    def git(*a):
        r = subprocess.run(["git", *a], cwd=REPO, capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else None
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None}


def machine_info() -> dict:
    mem = meminfo()
    return {
        "hostname": platform.node(),
        "nproc": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "mem_total_bytes": mem.get("MemTotal"),
        "mem_available_bytes": mem.get("MemAvailable"),
        "kernel": platform.release(),
        "loadavg_at_start": os.getloadavg(),
        "harness_python": sys.version.split()[0],
    }


# ----------------------------------------------------------------------------- page cache ----

def collection_files(path: Path) -> list[Path]:
    return _common.collection_files(path)


def drop_cached_pages(files: list[Path]) -> float:
    """Asks the kernel to drop the files' cached pages (no privileges needed); returns seconds."""
    return _common.drop_page_cache(files)


def x_bytes(path: Path) -> int:
    """Stored bytes of X (data, indices, indptr; all datasets): what reading every cell reads."""
    return sum(f.stat().st_size for g in _common.dataset_groups(path)
               for f in collection_files(g / "X"))


def cold_page_cache(path: Path) -> dict:
    """Cold mode's bookkeeping: nothing is read ahead; the pages are dropped before each run."""
    files = collection_files(path)
    nbytes = sum(f.stat().st_size for f in files)
    print(f"cold page cache: collection {nbytes / GIB:.2f} GiB in {len(files)} files, dropped "
          "before every contender run", file=sys.stderr, flush=True)
    return {"mode": "cold", "files": len(files), "bytes": nbytes, "fresh": False,
            "cached_bytes_at_start": _common.cached_bytes(files)}


def run_disk_probe(data: str, seconds_per_point: float, bytes_per_point: str) -> dict:
    """disk_probe.probe() over the X shards, in a spawned process (its read buffers would
    otherwise raise the harness's RSS, which children inherit as their ru_maxrss floor)."""
    import multiprocessing

    import disk_probe

    print("disk probe (random cold reads of the X shards, 1-16 in flight):", file=sys.stderr, flush=True)
    try:
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            res = pool.apply(disk_probe.probe, (data,), dict(
                seconds_per_point=seconds_per_point,
                bytes_per_point=disk_probe.parse_size(bytes_per_point), verbose=True))
    except Exception as e:  # noqa: BLE001
        print(f"  FAILED: {e!r}", file=sys.stderr, flush=True)
        return {"error": repr(e)}
    b = res.get("best") or {}
    print(f"  best {b.get('mb_per_s', 0):,.0f} MB/s at {b.get('block_bytes', 0) / 1e6:.2f} MB x depth "
          f"{b.get('depth')} ({res['seconds_total']:.0f} s)", file=sys.stderr, flush=True)
    return res


def folio_report(data: str) -> dict:
    """page_cache_folios.py over the X shards of the collection, in its own process."""
    files = sorted(str(f) for f in Path(data).glob("*/X/*/c/*"))[:24] or \
        [str(f) for f in collection_files(Path(data))[:24]]
    res = run_json([sys.executable, str(HERE / "page_cache_folios.py"), *files], timeout=600)
    res.pop("command", None)
    return res


def warm_page_cache(path: Path, headroom_gib: float, allow_low_memory: bool, fresh: bool) -> dict:
    files = collection_files(path)
    nbytes = sum(f.stat().st_size for f in files)
    mem = meminfo()
    need = nbytes + int(headroom_gib * GIB)
    enough = mem["MemAvailable"] >= need
    msg = (f"collection {nbytes / GIB:.2f} GiB in {len(files)} files; MemAvailable "
           f"{mem['MemAvailable'] / GIB:.2f} GiB of {mem['MemTotal'] / GIB:.2f} GiB; need "
           f"{need / GIB:.2f} GiB (collection + {headroom_gib:g} GiB headroom)")
    if not enough:
        if not allow_low_memory:
            sys.exit(f"bench_reader: not enough free RAM to keep the collection in the page cache: "
                     f"{msg}. Free memory or pass --allow-low-memory (figures would then mix in "
                     f"disk reads).")
        print(f"WARNING: {msg}: the collection may not stay cached", file=sys.stderr)
    print(f"warming the page cache{' (dropped first)' if fresh else ''}: {msg}", file=sys.stderr, flush=True)
    if fresh:
        drop_cached_pages(files)
    seconds = read_files(files)
    return {"mode": "warm", "files": len(files), "bytes": nbytes, "read_seconds": seconds, "fresh": fresh,
            "read_gb_per_s": nbytes / seconds / 1e9 if seconds > 0 else None,
            "mem_available_before": mem["MemAvailable"], "enough_ram": enough}


def read_files(files: list[Path]) -> float:
    """Reads every file once (into the page cache); returns the seconds it took."""
    t0 = time.perf_counter()
    buf = bytearray(16 << 20)
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while fh.readinto(buf):
                pass
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------ contenders ----

def child_env(data: str) -> dict:
    """The annbatch env's run.sh bind-mounts /tmp, the checkout's parent and $BENCHDATA (default
    /opt/benchdata) into its chroot: point BENCHDATA at the data's folder when it is elsewhere."""
    env = dict(os.environ)
    d = Path(data)
    visible = [Path("/tmp"), REPO.parent, Path(env.get("BENCHDATA", "/opt/benchdata"))]
    if not any(d.is_relative_to(v) for v in visible):
        env["BENCHDATA"] = str(d.parent)
    return env


def run_json(cmd: list[str], timeout: float, env: dict | None = None) -> dict:
    """Runs cmd from the repository root; returns its last JSON stdout line plus bookkeeping."""
    print("  $ " + shlex.join(cmd), file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as e:
        return {"error": f"timed out after {timeout:g} s", "command": cmd,
                "stderr_tail": (e.stderr or b"")[-4000:].decode("utf-8", "replace")
                if isinstance(e.stderr, bytes) else (e.stderr or "")[-4000:]}
    wall = time.perf_counter() - t0
    result = None
    for line in reversed(r.stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                result = json.loads(line)
                break
            except json.JSONDecodeError:
                continue
    if r.returncode != 0 or result is None:
        return {"error": f"exit status {r.returncode}" + ("" if result is None else " (with output)"),
                "command": cmd, "process_seconds": wall, "stdout_tail": r.stdout[-2000:],
                "stderr_tail": r.stderr[-4000:]}
    result["command"] = cmd
    result["process_seconds"] = wall
    return result


def contender_cmd(args, name: str, chunk: int, preload: int, seed: int) -> list[str]:
    common = ["--data", str(args.data), "--chunk-size", str(chunk), "--preload-nchunks", str(preload),
              "--batch-size", str(args.batch_size), "--cells", str(args.cells),
              "--warmup-batches", str(args.warmup_batches), "--seed", str(seed),
              *(["--genes-file", args.genes_file] if args.transforms else [])]
    if name == "annbatch":
        return shlex.split(args.annbatch_python) + [str(HERE / "contenders" / "annbatch_loader.py"), *common]
    return shlex.split(args.biodali_python) + [
        str(HERE / "contenders" / "biodali_reader.py"), *common,
        "--num-io-threads", str(args.num_io_threads), "--prefetch-windows", str(args.prefetch_windows),
        *(["--io-depth", str(args.io_depth)] if args.io_depth is not None else []),
        *[a for item in args.reader_arg for a in ("--reader-arg", item)],
        *(["--scipy"] if args.biodali_scipy else []),
        *(["--chain"] if name == "biodali_chain" else [])]


def short(res: dict) -> str:
    if res.get("cached_bytes_after_drop") is not None:
        return (short({k: v for k, v in res.items() if k != "cached_bytes_after_drop"})
                + f" (cold: {res['cached_bytes_after_drop'] / (1 << 20):.1f} MiB cached after the drop)")
    if "error" in res:
        return f"FAILED ({res['error']}): {res.get('stderr_tail', '').strip().splitlines()[-1:] }"
    return (f"{res['cells_per_s']:,.0f} cells/s, peak RSS {res['peak_rss_bytes'] / GIB:.2f} GiB, "
            f"{res['nnz_per_cell']:,.0f} nnz/cell, {res['cpu_seconds'] / res['seconds']:.2f} cores busy")


# -------------------------------------------------------------------------------- report ----

def _median(runs: list[dict], key: str):
    vals = [r[key] for r in runs if "error" not in r and key in r]
    return statistics.median(vals) if vals else None


def _fmt_rate(v):
    return "n/a" if v is None else f"{v:,.0f}"


def _fmt_gib(v):
    return "n/a" if v is None else f"{v / GIB:.2f} GiB"


def _fmt_pct(v):
    return "n/a" if v is None else f"{100 * v:.0f}%"


def _fmt_mib(v):
    return "n/a" if v is None else f"{v / (1 << 20):.1f} MiB"


def _extra_reader_args(a: dict) -> str:
    extra = ([f"io_depth={a['io_depth']}"] if a.get("io_depth") is not None else []) + list(a.get("reader_arg") or [])
    return "".join(f", {e}" for e in extra)


def folio_line(cache: dict) -> str:
    def one(f):
        if not f or "error" in f or f.get("share_in_folios_ge_64k") is None:
            return f"not measured ({(f or {}).get('error', 'no data')})"
        return (f"{f['share_in_folios_ge_64k']:.0%} of cached bytes in folios >= 64 KiB, "
                f"{f['share_in_folios_ge_2m']:.0%} in 2 MiB ones")
    return (f"before the runs {one(cache.get('folios_before_runs'))}; after them "
            f"{one(cache.get('folios_after_runs'))}. Mapping 4 KiB folios costs the kernel several "
            "times more per byte than large ones (biodali maps shards; annbatch copies with pread).")


def render_markdown(report: dict) -> str:
    a = report["args"]
    m = report["machine"]
    cache = report.get("page_cache") or {}
    ceiling = report.get("decode_ceiling") or {}
    ceil_cps = ceiling.get("cells_per_s") if "error" not in ceiling else None
    versions = report.get("versions", {})
    data_line = f"- Data: `{a['data']}`"
    if isinstance(report.get("n_obs"), int):
        data_line += (f" ({report['n_obs']:,} cells x {report['n_vars']:,} genes, "
                      f"{cache.get('bytes', 0) / GIB:.2f} GiB on disk)")
    cold = cache.get("mode") == "cold"
    regime = "cold page cache" if cold else "warm page cache"
    if cold:
        cache_line = (
            "- **Cold page cache** (`--page-cache cold`): the collection's cached pages were dropped "
            "(`posix_fadvise(DONTNEED)` on every file) before every contender run and nothing was "
            "read ahead: each run reads the collection from storage"
            + (f" (median {_fmt_mib(report.get('cached_after_drop_median'))} of it still cached right "
               "after a drop)." if report.get("cached_after_drop_median") is not None else "."))
    else:
        cache_line = (
        "- **Warm page cache**: every file of the collection was read once before the runs "
        + ("after its cached pages were dropped (`--page-cache fresh`: the cache holds it as one "
           "sequential read leaves it) " if cache.get("fresh") else "(`--page-cache as-is`) ")
        + f"({cache.get('read_gb_per_s') or 0:.2f} GB/s for that first read; "
        f"enough RAM to keep it cached: {cache.get('enough_ram')})"
        + ("." if a.get("no_rewarm") else
           " and again before every contender run (kernels with proactive reclaim, such as "
           "DAMON pageout schemes, evict cold page cache between runs)."))
    lines = [
        (f"# Transforms benchmark: biodali vs annbatch + scipy, {regime} ({report['started']})"
         if report["args"].get("transforms") else
         f"# Reader benchmark: biodali vs annbatch, {regime} ({report['started']})"),
        "",
        data_line,
        cache_line,
        *([] if cold else ["- Page cache folios (`page_cache_folios.py`, X shards): " + folio_line(cache)]),
        f"- batch_size {a['batch_size']}, {a['cells']:,} timed cells per run after "
        f"{a['warmup_batches']} warm-up batches, {a['runs']} runs per config, annbatch and biodali "
        "interleaved in each run (annbatch first in odd runs, biodali first in even ones), each in its own process; shuffle on in both.",
        f"- Machine: {m['cpu_model']}, {m['nproc']} cores, {m['mem_total_bytes'] / GIB:.1f} GiB RAM, "
        f"load average at start {m['loadavg_at_start'][0]:.2f}.",
        "- annbatch: `annbatch.Loader(batch_size, chunk_size, preload_nchunks, shuffle=True, "
        "preload_to_gpu=False).use_collection(DatasetCollection(path), load_adata=X only)` with "
        f"codec pipeline `{versions.get('annbatch_codec_pipeline', '?')}`; yields scipy CSR.",
        f"- biodali: `fn.biodali.readers.anndata(random_shuffle=True, chunk_size, preload_chunks, "
        f"num_io_threads={a['num_io_threads']}, prefetch_windows={a['prefetch_windows']}"
        f"{_extra_reader_args(a)})` in a CPU "
        "DALI pipeline (num_threads = cores, prefetch_queue_depth 1); batches as CSR numpy arrays"
        + (" wrapped in scipy.sparse.csr_matrix." if a.get("biodali_scipy") else
           " (data, indices, indptr) via biodali.batch.csr_arrays, indptr from a values.shape() output."),
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.get("packages", {}).items())),
    ]
    if ceil_cps:
        lines.append(
            f"- Decode ceiling ({ceiling['num_threads']} threads, blosc decode of dataset_0's first "
            f"shard of X/data + X/indices from memory, best of 3): {ceiling['gb_per_s']:.2f} GB/s = "
            f"{ceil_cps:,.0f} cells/s at {ceiling['nnz_per_cell']:,.0f} nnz/cell.")
    elif ceiling:
        lines.append(f"- Decode ceiling: failed ({ceiling.get('error')}).")
    if m["loadavg_at_start"][0] > 0.25 * (m["nproc"] or 1):
        lines.append(f"- **Warning**: load average {m['loadavg_at_start'][0]:.2f} at start: the "
                     "machine was not quiet; timings are not representative.")
    probe = report.get("disk_probe")
    if probe and "error" not in probe and probe.get("points"):
        import disk_probe

        best = probe["best"]
        best_line = (f"Best: **{best['mb_per_s']:,.0f} MB/s** ({best['block_bytes'] / 1e6:.2f} MB blocks, "
                     f"{best['depth']} in flight)")
        if report.get("x_bytes_per_cell"):
            best_line += (f"; at {report['x_bytes_per_cell']:,.0f} stored X bytes per cell that is "
                          f"{best['mb_per_s'] * 1e6 / report['x_bytes_per_cell']:,.0f} cells/s")
        lines += ["", f"Disk probe (`disk_probe.py`: random reads of the X shards, distinct block-aligned "
                  f"ranges, buffered, page cache dropped before each measurement, median of "
                  f"{probe['repeats']}; {probe['seconds_total']:.0f} s), MB/s:", "",
                  *disk_probe.markdown_table(probe), "", best_line + "."]
    elif probe:
        lines.append(f"- Disk probe: failed ({probe.get('error')}).")
    lines.append("")
    for cfg in report["configs"]:
        chunk, preload = cfg["chunk_size"], cfg["preload_nchunks"]
        lines += [f"## chunk_size={chunk}, preload_nchunks={preload} "
                  f"(window {chunk * preload:,} rows), {regime}", "",
                  "| contender | median cells/s | per run | median peak RSS | RSS before 1st batch "
                  "| cores busy | of decode ceiling |"
                  + (" X MB/s read | storage MB/s | of probe's best |" if cold else ""),
                  "|---|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if cold else "")]
        med = {}
        for name in report["args"]["contender_list"]:
            runs = cfg["runs"][name]
            cps = _median(runs, "cells_per_s")
            med[name] = cps
            per_run = " / ".join("failed" if "error" in r else f"{r['cells_per_s']:,.0f}" for r in runs)
            busy = [r["cpu_seconds"] / r["seconds"] for r in runs if "error" not in r]
            share = cps / ceil_cps if (cps and ceil_cps) else None
            busy_s = f"{statistics.median(busy):.2f}" if busy else "n/a"
            row = (f"| {name} | {_fmt_rate(cps)} | {per_run} | "
                   f"{_fmt_gib(_median(runs, 'peak_rss_bytes'))} | "
                   f"{_fmt_gib(_median(runs, 'rss_before_first_batch_bytes'))} | {busy_s} | "
                   f"{_fmt_pct(share)} |")
            if cold:
                mbps = cps * report["x_bytes_per_cell"] / 1e6 if (cps and report.get("x_bytes_per_cell")) else None
                best = (probe or {}).get("best") or {}
                storage = [r["storage_read_bytes"] / r["seconds"] / 1e6 for r in runs
                           if "error" not in r and r.get("storage_read_bytes") is not None]
                storage_mbps = statistics.median(storage) if storage else None
                of_best = storage_mbps / best["mb_per_s"] if (storage_mbps and best.get("mb_per_s")) else None
                row += (f" {'n/a' if mbps is None else f'{mbps:,.0f}'} | "
                        f"{'n/a' if storage_mbps is None else f'{storage_mbps:,.0f}'} | {_fmt_pct(of_best)} |")
            lines.append(row)
        if med.get("annbatch") and med.get("biodali"):
            lines += ["", f"**biodali / annbatch: {med['biodali'] / med['annbatch']:.2f}x** (ratio of medians)"]
        if med.get("annbatch") and med.get("biodali_chain"):
            lines += [f"biodali_chain / annbatch: {med['biodali_chain'] / med['annbatch']:.2f}x"]
        errors = [r for name in cfg["runs"] for r in cfg["runs"][name] if "error" in r]
        if errors:
            lines += ["", f"{len(errors)} contender run(s) failed; see the JSON file for their stderr."]
        lines.append("")
    lines += ["Columns: cells/s over the timed cells (after warm-up); peak RSS = the contender "
              "process's ru_maxrss; RSS before 1st batch = after building the loader/pipeline "
              "(libraries, metadata); cores busy = process CPU time / wall time of the timed part; "
              "of decode ceiling = median cells/s / decode-ceiling cells/s."
              + (" X MB/s read = median cells/s x stored bytes of X (data + indices + indptr) per "
                 "cell, the compressed bytes an epoch reads; storage MB/s = bytes the process had "
                 "read from storage in the timed part (/proc/self/io read_bytes: read amplification "
                 "of partly needed chunks and re-reads included) per second, median of the runs; "
                 "of probe's best = that / the disk probe's best MB/s." if cold else ""), ""]
    lines += ["Produced by:", "", "```", report["command_line"], "```",
              "", f"Raw runs: `{report['json_file']}`", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------ transforms ----

def write_gene_subset(data: str, n_genes: int) -> Path:
    """The n_genes most variable columns (variance / mean over the first 20,000 cells of the
    first dataset), as a .npy of int64 column ids outside the repository (not data to commit)."""
    import anndata as ad
    import numpy as np

    group = _common.dataset_groups(data)[0]
    x = ad.io.sparse_dataset(__import__("zarr").open_group(str(group / "X"), mode="r"))[:20_000]
    x = x.astype(np.float64)
    mean = np.asarray(x.mean(axis=0)).ravel()
    var = np.asarray(x.multiply(x).mean(axis=0)).ravel() - mean ** 2
    dispersion = np.divide(var, mean, out=np.zeros_like(mean), where=mean > 0)
    genes = np.argsort(-dispersion, kind="stable")[:n_genes].astype(np.int64)
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"biodali-bench-genes-{n_genes}.npy"
    np.save(out, genes)
    return out


# ---------------------------------------------------------------------------------- main ----

def main(argv=None) -> int:
    args = parse_args(argv)
    args.data = str(Path(args.data).resolve())
    out_dir = Path(args.out).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    started = dt.datetime.now()
    report = {
        "started": started.strftime("%Y-%m-%d %H:%M"),
        "command_line": f"cd {shlex.quote(os.getcwd())} && " + shlex.join([sys.executable, *sys.argv]),
        "args": {k: v for k, v in vars(args).items()},
        "machine": machine_info(),
        "git": git_describe(),
        "page_cache_mode": "cold" if args.cold else "warm",
        "notes": ("All figures are for a cold page cache: the collection's cached pages were dropped "
                  "(posix_fadvise DONTNEED on every file) before every contender run." if args.cold else
                  "All figures are for a warm page cache: the collection was read once first and, "
                  "unless --no-rewarm, again before every contender run."),
    }
    try:
        report["n_obs"], report["n_vars"] = _common.x_shape(args.data)
    except Exception as e:  # noqa: BLE001
        sys.exit(f"bench_reader: {args.data} is not a readable AnnData/annbatch store: {e}")

    prefix = "reader"
    if args.transforms:
        prefix = "transforms"
        # In a spawned process: Linux children inherit the parent's ru_maxrss as a floor, so the
        # harness itself must stay small for the contenders' peak RSS to mean anything.
        import multiprocessing
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            args.genes_file = str(pool.apply(write_gene_subset, (args.data, args.transforms)))
        report["args"]["genes_file"] = args.genes_file
        report["transforms"] = {
            "pipeline": "normalize(target_sum=1e4, log1p) -> select_genes -> densify(float32)",
            "annbatch_side": "contenders/_common.py scipy_transforms on each scipy CSR batch",
            "n_genes": args.transforms}
    report["x_bytes"] = x_bytes(Path(args.data))
    report["x_bytes_per_cell"] = report["x_bytes"] / report["n_obs"] if report["n_obs"] else None
    files = collection_files(Path(args.data))
    if args.cold:
        report["page_cache"] = cold_page_cache(Path(args.data))
        if not args.no_disk_probe:
            report["disk_probe"] = run_disk_probe(args.data, args.probe_seconds_per_point,
                                                  args.probe_bytes_per_point)
    else:
        report["page_cache"] = warm_page_cache(Path(args.data), args.headroom_gib, args.allow_low_memory,
                                               fresh=args.page_cache == "fresh")
        report["page_cache"]["folios_before_runs"] = folio_report(args.data)

    env = child_env(args.data)
    report["configs"] = [{"chunk_size": c, "preload_nchunks": p, "runs": {n: [] for n in args.contender_list}}
                         for c, p in args.config_list]
    for run in range(1, args.runs + 1):
        seed = args.seed + run - 1
        for cfg in report["configs"]:
            # The order alternates between runs: on small VMs the process that runs right after
            # another tends to be slower, which would otherwise always hit the same contender.
            order = args.contender_list if run % 2 == 1 else args.contender_list[::-1]
            for name in order:
                print(f"run {run}/{args.runs} chunk_size={cfg['chunk_size']} "
                      f"preload_nchunks={cfg['preload_nchunks']} {name}:", file=sys.stderr, flush=True)
                drop_seconds = cached_after_drop = rewarm_seconds = None
                if args.cold:
                    drop_seconds = drop_cached_pages(files)
                    cached_after_drop = _common.cached_bytes(files)
                elif not args.no_rewarm:
                    rewarm_seconds = read_files(files)
                res = run_json(contender_cmd(args, name, cfg["chunk_size"], cfg["preload_nchunks"], seed),
                               args.timeout, env)
                res["run"] = run
                res["page_cache"] = "cold" if args.cold else "warm"
                res["rewarm_seconds"] = rewarm_seconds
                if args.cold:
                    res["drop_seconds"] = drop_seconds
                    res["cached_bytes_after_drop"] = cached_after_drop
                cfg["runs"][name].append(res)
                print(f"  {short(res)}", file=sys.stderr, flush=True)

    if args.cold:
        left = [r["cached_bytes_after_drop"] for cfg in report["configs"] for runs in cfg["runs"].values()
                for r in runs if r.get("cached_bytes_after_drop") is not None]
        report["cached_after_drop_median"] = statistics.median(left) if left else None
    else:
        report["page_cache"]["folios_after_runs"] = folio_report(args.data)

    if not args.no_decode_ceiling:
        print("decode ceiling:", file=sys.stderr, flush=True)
        report["decode_ceiling"] = run_json(
            shlex.split(args.biodali_python) + [str(HERE / "decode_ceiling.py"), "--data", args.data],
            args.timeout, env)
        dc = report["decode_ceiling"]
        print("  " + (f"{dc['gb_per_s']:.2f} GB/s, {dc['cells_per_s']:,.0f} cells/s" if "error" not in dc
                      else f"FAILED: {dc['error']}"), file=sys.stderr, flush=True)

    packages, codec_pipeline = {}, None
    for cfg in report["configs"]:
        for runs in cfg["runs"].values():
            for r in runs:
                if "error" in r:
                    continue
                for k, v in (r.get("versions") or {}).items():
                    packages.setdefault(k if r["contender"] == "biodali" or k == "annbatch"
                                        else f"{k} (annbatch env)", v)
                codec_pipeline = codec_pipeline or r.get("codec_pipeline")
    report["versions"] = {"packages": packages, "annbatch_codec_pipeline": codec_pipeline}
    report["finished"] = dt.datetime.now().strftime("%Y-%m-%d %H:%M")

    json_file = out_dir / f"{prefix}-{started.strftime('%Y%m%d-%H%M')}.json"
    n = 2
    while json_file.exists():  # two runs within a minute: keep both
        json_file = out_dir / f"{prefix}-{started.strftime('%Y%m%d-%H%M')}-{n}.json"
        n += 1
    report["json_file"] = str(json_file.relative_to(REPO) if json_file.is_relative_to(REPO) else json_file)
    json_file.write_text(json.dumps(report, indent=1) + "\n")
    md = render_markdown(report)
    (out_dir / f"{prefix}{'-cold' if args.cold else ''}-latest.md").write_text(md)
    print(md)
    failed = any("error" in r for cfg in report["configs"] for runs in cfg["runs"].values() for r in runs)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
