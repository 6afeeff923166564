"""Benchmark: ``biodali convert`` vs annbatch's ``DatasetCollection.add_adatas``, side by side.

The same h5ad inputs (default 4 x 250,000 synthetic 10x-like cells from ``biodali synth``,
cached in --inputs-dir) go through both, interleaved run by run (annbatch, then biodali), each
in its own process tree, with the page cache dropped before each run when running as root (the
inputs are ~24 GB, more than the page cache holds anyway). Measured per run: wall time, peak
RSS of the process tree (sum over processes, polled every 0.1 s) and the kernel's max RSS of
the largest process (wait4 ru_maxrss), output size. After the runs, annbatch (its own env)
reads biodali's output as a collection and checks one full Loader epoch against the inputs'
totals (rows, non-zeros, sum of values).

    flock /tmp/biodali-bench.lock .venv/bin/python benchmarks/bench_convert.py

Writes results/convert-<YYYYMMDD-HHMM>.json (every run, machine, versions, git) and
results/convert-latest.md, and prints the markdown.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_reader import _median, git_describe, machine_info  # noqa: E402  (one harness)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--inputs-dir", type=Path, default=Path("/opt/benchdata/convert-in"))
    p.add_argument("--n-cells", type=int, default=1_000_000, help="total over the inputs")
    p.add_argument("--n-inputs", type=int, default=4)
    p.add_argument("--out-dir", type=Path, default=Path("/opt/benchdata/convert-out"))
    p.add_argument("--runs", type=int, default=3, help="runs per contender (median reported)")
    p.add_argument("--annbatch-runs", type=int, default=None, help="default: --runs")
    p.add_argument("--annbatch-python", default=str(REPO.parent / "shared/tools/annbatch-env/run.sh")
                   + " python", help="command running a Python that imports annbatch 0.3.1")
    p.add_argument("--max-memory", default="4GB", help="biodali convert --max-memory")
    p.add_argument("--dataset-size", default="4GB", help="both: annbatch's dataset_size")
    p.add_argument("--no-drop-caches", action="store_true")
    p.add_argument("--no-check", action="store_true", help="skip annbatch reading biodali's output")
    p.add_argument("--results", type=Path, default=HERE / "results")
    return p.parse_args(argv)


def ensure_inputs(args) -> list[Path]:
    per = args.n_cells // args.n_inputs
    args.inputs_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(args.n_inputs):
        path = args.inputs_dir / f"synth-{per // 1000}k-seed{k + 1}.h5ad"
        if not path.exists():
            print(f"generating {path}", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "biodali.cli", "synth", "expression",
                            "--n-cells", str(per), "--seed", str(k + 1), "--format", "h5ad",
                            "--jobs", "2", "--quiet", "--out", str(path)], check=True)
        paths.append(path)
    return paths


def input_totals(paths: list[Path]) -> dict:
    """Rows, non-zeros and the float64 sum of X's values over the inputs (cached beside them)."""
    import h5py
    import numpy as np

    cache = paths[0].parent / "totals.json"
    key = [[str(p), p.stat().st_size, p.stat().st_mtime] for p in paths]
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("key") == key:
            return cached["totals"]
    rows = nnz = 0
    total = 0.0
    for p in paths:
        with h5py.File(p, "r") as f:
            rows += int(f["X"].attrs["shape"][0])
            n = int(f["X/indptr"][-1])
            nnz += n
            for a in range(0, n, 1 << 26):
                total += float(f["X/data"][a:min(n, a + (1 << 26))].sum(dtype=np.float64))
    totals = {"rows": rows, "nnz": nnz, "sum": total}
    cache.write_text(json.dumps({"key": key, "totals": totals}))
    return totals


def _tree_rss_bytes(root_pid: int) -> int:
    """Sum of VmRSS over root_pid and its descendants (from /proc)."""
    pids, total = [root_pid], 0
    while pids:
        pid = pids.pop()
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    pids += [int(c) for c in f.read().split()]
        except (OSError, ValueError):
            continue
    return total


def drop_caches(enabled: bool) -> bool:
    if not enabled or os.geteuid() != 0:
        return False
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def measure(cmd: list[str], env=None) -> dict:
    """Runs cmd; wall time, polled peak RSS of its process tree, wait4 max RSS, stdout."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)
    peak = [0]
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_bytes(proc.pid))
            done.wait(0.1)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    out_chunks, err_chunks = [], []
    readers = [threading.Thread(target=lambda s=s, c=c: c.append(s.read()), daemon=True)
               for s, c in ((proc.stdout, out_chunks), (proc.stderr, err_chunks))]
    for r in readers:
        r.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t0
    done.set()
    poller.join()
    for r in readers:
        r.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    stderr = "".join(err_chunks)
    return {"returncode": proc.returncode, "ok": proc.returncode == 0, "seconds": seconds,
            "peak_tree_rss_bytes": peak[0],
            "wait4_maxrss_bytes": usage.ru_maxrss * 1024, "stdout": "".join(out_chunks),
            "stderr_tail": stderr[-600:]}


def du_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def run_contender(name: str, args, inputs: list[Path], run: int) -> dict:
    out = args.out_dir / f"{name}-1m.zarr"
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(args.out_dir / f".{out.name}.biodali-convert-tmp", ignore_errors=True)
    dropped = drop_caches(not args.no_drop_caches)
    if name == "annbatch":
        cmd = [*shlex.split(args.annbatch_python), str(HERE / "contenders/annbatch_convert.py"),
               *map(str, inputs), "--output", str(out), "--dataset-size", args.dataset_size,
               "--seed", str(run)]
    else:
        cmd = [sys.executable, "-m", "biodali.cli", "convert", *map(str, inputs), "--output",
               str(out), "--max-memory", args.max_memory, "--dataset-size", args.dataset_size,
               "--seed", str(run), "--quiet"]
    print(f"run {run} {name}: {shlex.join(cmd)}", file=sys.stderr, flush=True)
    res = measure(cmd)
    res.update(contender=name, run=run, page_cache_dropped=dropped, command=shlex.join(cmd),
               output_bytes=du_bytes(out), n_datasets=len(list(out.glob("dataset_*"))),
               load_avg_after=os.getloadavg())
    if name == "annbatch" and res["ok"]:
        res["annbatch"] = json.loads(res["stdout"].strip().splitlines()[-1])
    if not res["ok"]:  # e.g. -9: killed by the kernel's OOM killer
        print(f"  FAILED with exit status {res['returncode']}:\n{res['stderr_tail']}",
              file=sys.stderr, flush=True)
    print(f"  {res['seconds']:.1f} s, peak RSS {res['peak_tree_rss_bytes'] / 2**30:.2f} GiB "
          f"(tree), {res['wait4_maxrss_bytes'] / 2**30:.2f} GiB (largest process)",
          file=sys.stderr, flush=True)
    return res


def annbatch_check(args, out: Path, totals: dict) -> dict:
    cmd = [*shlex.split(args.annbatch_python), str(HERE / "contenders/annbatch_read_check.py"),
           str(out), "--expect-rows", str(totals["rows"]), "--expect-nnz", str(totals["nnz"]),
           "--expect-sum", repr(totals["sum"])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    lines = proc.stdout.strip().splitlines()
    result = json.loads(lines[-1]) if lines else {"ok": False}
    result.update(returncode=proc.returncode, command=shlex.join(cmd),
                  stderr_tail=proc.stderr[-1000:])
    return result


def render_markdown(report: dict) -> str:
    a = [r for r in report["runs"] if r["contender"] == "annbatch" and r["ok"]]
    b = [r for r in report["runs"] if r["contender"] == "biodali" and r["ok"]]
    failed = [r for r in report["runs"] if not r["ok"]]
    gib = lambda v: f"{v / 2**30:.2f} GiB" if v is not None else "-"  # noqa: E731
    sec = lambda v: f"{v:.0f} s" if v is not None else "-"  # noqa: E731
    lines = [f"# biodali convert vs annbatch add_adatas ({report['timestamp']})", "",
             f"{report['totals']['rows']:,} cells in {len(report['inputs'])} h5ad inputs "
             f"({sum(report['input_bytes']) / 1e9:.1f} GB), dataset_size "
             f"{report['args']['dataset_size']}, biodali --max-memory "
             f"{report['args']['max_memory']}; {report['machine']['nproc']} cores, "
             f"{report['machine']['mem_total_bytes'] / 2**30:.0f} GiB RAM; page cache dropped "
             f"before each run: {all(r['page_cache_dropped'] for r in report['runs'])}.", "",
             "| | runs | wall time (median) | per run | peak RSS, process tree (median) "
             "| max RSS, largest process | output |", "|---|---:|---:|---|---:|---:|---:|"]
    for name, runs in (("annbatch 0.3.1 add_adatas", a), ("biodali convert", b)):
        if runs:
            lines.append(
                f"| {name} | {len(runs)} | {sec(_median(runs, 'seconds'))} | "
                f"{', '.join('{:.0f}'.format(r['seconds']) for r in runs)} | "
                f"{gib(_median(runs, 'peak_tree_rss_bytes'))} | "
                f"{gib(_median(runs, 'wait4_maxrss_bytes'))} | "
                f"{runs[0]['output_bytes'] / 1e9:.2f} GB, {runs[0]['n_datasets']} datasets |")
    if a and b:
        lines += ["", f"biodali / annbatch: wall time {_median(b, 'seconds') / _median(a, 'seconds'):.2f}x, "
                      f"peak RSS {_median(b, 'peak_tree_rss_bytes') / _median(a, 'peak_tree_rss_bytes'):.2f}x."]
    for r in failed:
        lines += ["", f"FAILED: {r['contender']} run {r['run']} exited with status "
                      f"{r['returncode']} after {r['seconds']:.0f} s at a peak RSS of "
                      f"{gib(r['peak_tree_rss_bytes'])} (-9: killed, e.g. by the OOM killer)."]
    check = report.get("annbatch_reads_biodali_output")
    if check:
        lines += ["", f"annbatch reads biodali's output as its own collection: **{check.get('ok')}** "
                      f"(is_empty={check.get('is_empty')}, obs rows {check.get('obs_rows')}, one "
                      f"Loader epoch: {check.get('loader_rows')} rows, {check.get('loader_nnz')} "
                      f"non-zeros, sum {check.get('loader_sum')}; expected "
                      f"{report['totals']['rows']}, {report['totals']['nnz']}, "
                      f"{report['totals']['sum']})."]
    lines += ["", f"Command: `{report['command']}`"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    inputs = ensure_inputs(args)
    totals = input_totals(inputs)
    report = {"timestamp": datetime.now().strftime("%Y-%m-%d %H:%M"), "machine": machine_info(),
              "git": git_describe(), "args": {k: str(v) for k, v in vars(args).items()}, "inputs": list(map(str, inputs)),
              "input_bytes": [p.stat().st_size for p in inputs], "totals": totals, "runs": [],
              "command": shlex.join([Path(sys.executable).name, *sys.argv])}
    args.results.mkdir(parents=True, exist_ok=True)
    json_path = args.results / f"convert-{datetime.now().strftime('%Y%m%d-%H%M')}.json"
    save = lambda: json_path.write_text(json.dumps(report, indent=1))  # noqa: E731  (each run)
    n_annbatch = args.runs if args.annbatch_runs is None else args.annbatch_runs
    for run in range(max(args.runs, n_annbatch)):
        if run < n_annbatch:
            report["runs"].append(run_contender("annbatch", args, inputs, run))
            shutil.rmtree(args.out_dir / "annbatch-1m.zarr", ignore_errors=True)  # disk space
            save()
        if run < args.runs:
            report["runs"].append(run_contender("biodali", args, inputs, run))
            save()
    biodali_out = args.out_dir / "biodali-1m.zarr"
    if not args.no_check and biodali_out.exists():
        report["annbatch_reads_biodali_output"] = annbatch_check(args, biodali_out, totals)
    save()
    md = render_markdown(report)
    (args.results / "convert-latest.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
