#!/usr/bin/env python3
"""GPU timings for `make gpu-check` (benchmarks/gpu_check.sh); each part writes one JSON.

  kernels   DALI-free: each expression kernel's device time per batch of 4096 10x-like cells
            (36,601 genes, biodali.synth's model), CUDA events around each launch after a
            warm-up, median of --repeats; the batch's outputs checked against the CPU twins;
            the device-to-device copy bandwidth as the memory floor. Needs torch + the kernel
            library (python/biodali/_kernels.py build).
  h2d       Host -> device copies of a batch-sized (95 MB) and a window-sized (380 MB) buffer from
            pageable memory, from pinned (page-locked) memory, and pinned in place with
            cudaHostRegister (what pinning the reader's windows would cost); torch only.
  pipeline  reader -> .gpu() -> normalize_densify (2,000 genes, float32) cells/s against the same
            pipeline on the CPU (all cores) and the reader alone, plus ExpressionLoader(device=
            "cuda"); needs DALI, the plugin, anndata and zarr (writes a synthetic store first).

Loads biodali modules by file path where it can, so `kernels` and `h2d` run without DALI.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4096
N_GENES = 36601
HVG = 2000


def _module(name: str, path: Path):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


def kernels_module():
    return _module("biodali_kernels_standalone", ROOT / "python" / "biodali" / "_kernels.py")


def tenx_batch(n_rows: int = BATCH, seed: int = 0):
    """n_rows cells of biodali.synth's 10x-like model (no anndata needed) as a kernels Csr."""
    K = kernels_module()
    synth = _module("biodali_synth_standalone", ROOT / "python" / "biodali" / "synth.py")
    model = synth._build_model(N_GENES, seed)
    blocks = [synth._generate_block(model, b) for b in range(-(-n_rows // synth.BLOCK_ROWS))]
    blk = synth._Block.concat(blocks).head(n_rows)
    return K.Csr(blk.data, blk.indices.astype(np.int32), blk.indptr.astype(np.int64))


def top_genes(csr, n: int = HVG) -> np.ndarray:
    """The n most dispersed columns (variance / mean of log1p counts) of the batch, sorted."""
    dense_sum = np.bincount(csr.indices, np.log1p(csr.values.astype(np.float64)), minlength=N_GENES)
    dense_sq = np.bincount(csr.indices, np.log1p(csr.values.astype(np.float64)) ** 2, minlength=N_GENES)
    mean = dense_sum / csr.num_rows
    var = dense_sq / csr.num_rows - mean ** 2
    dispersion = np.where(mean > 0, var / np.maximum(mean, 1e-12), -1)
    return np.sort(np.argsort(-dispersion, kind="stable")[:n]).astype(np.int64)


def cuda_time(torch, fn, repeats: int, warmup: int = 3) -> dict:
    """Per-call device time (ms) of fn() by CUDA events on the current stream."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(repeats)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    ms = np.array([s.elapsed_time(e) for s, e in events])
    return {"median_ms": round(float(np.median(ms)), 4), "p10_ms": round(float(np.percentile(ms, 10)), 4),
            "p90_ms": round(float(np.percentile(ms, 90)), 4), "min_ms": round(float(ms.min()), 4),
            "repeats": repeats}


def device_info(torch) -> dict:
    p = torch.cuda.get_device_properties(0)
    return {"name": p.name, "capability": f"{p.major}.{p.minor}", "multiprocessors": p.multi_processor_count,
            "memory_gib": round(p.total_memory / 2 ** 30, 1), "torch": torch.__version__,
            "cuda_runtime": torch.version.cuda}


def compare(gpu, cpu, exact: bool) -> dict:
    if gpu.shape != cpu.shape or gpu.dtype != cpu.dtype:
        return {"matches_twin": False, "why": f"shape/dtype {gpu.shape} {gpu.dtype} vs {cpu.shape} {cpu.dtype}"}
    if exact or gpu.dtype.kind in "iu":
        diff = int(np.count_nonzero(gpu.view(np.uint8) != cpu.view(np.uint8)))
        return {"matches_twin": diff == 0, "bytes_differing": diff}
    a, b = gpu.astype(np.float64), cpu.astype(np.float64)
    rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-300)
    rel[(a == 0) & (b == 0)] = 0
    worst = float(rel.max()) if rel.size else 0.0
    return {"matches_twin": worst <= 1e-6, "max_rel_diff": worst}


def run_kernels(args) -> dict:
    import torch

    K = kernels_module()
    k = K.load(args.lib)
    if not k.has_cuda or k.device_count() == 0 or not torch.cuda.is_available():
        return {"skipped": f"no CUDA device or library without CUDA ({k.path})"}
    t0 = time.perf_counter()
    csr = tenx_batch(args.cells)
    genes = top_genes(csr)
    gen_s = time.perf_counter() - t0
    nz_sum = np.bincount(csr.indices, csr.values.astype(np.float64), minlength=N_GENES)
    nz_cnt = np.bincount(csr.indices, minlength=N_GENES)
    medians = np.where(nz_cnt > 0, nz_sum / np.maximum(nz_cnt, 1), 0).astype(np.float32)  # mean as a stand-in
    d = K.DeviceCsr(csr)
    nnz, rows = csr.nnz, csr.num_rows
    v_bytes, i_bytes = nnz * csr.values.dtype.itemsize, nnz * 4
    # name: (launch, cpu twin, exact?, bytes a kernel must at least move)
    ops = {
        "normalize": (K.prepare_normalize(k, d), lambda: k.cpu_normalize(csr), False, 2 * v_bytes),
        "select_genes_2000": (K.prepare_select_genes(k, d, csr, genes),
                              lambda: (lambda r: (r[3], r[2]))(k.cpu_select_genes(csr, genes)), True, None),
        "densify_2000_f32": (K.prepare_densify(k, d, N_GENES, genes), lambda: k.cpu_densify(csr, N_GENES, genes),
                             True, v_bytes + i_bytes + rows * HVG * 4),
        "densify_all_f32": (K.prepare_densify(k, d, N_GENES), lambda: k.cpu_densify(csr, N_GENES), True,
                            v_bytes + i_bytes + rows * N_GENES * 4),
        "normalize_densify_2000_f32": (K.prepare_densify(k, d, N_GENES, genes, normalize=True),
                                       lambda: k.cpu_densify(csr, N_GENES, genes, normalize=True), False,
                                       v_bytes + i_bytes + rows * HVG * 4),
        "normalize_densify_2000_bf16": (K.prepare_densify(k, d, N_GENES, genes, "bfloat16", normalize=True),
                                        lambda: k.cpu_densify(csr, N_GENES, genes, "bfloat16", normalize=True),
                                        None, v_bytes + i_bytes + rows * HVG * 2),
        "downsample_0.5": (K.prepare_downsample(k, d, 0.5, seed=1), lambda: k.cpu_downsample(csr, 0.5, seed=1), True,
                           2 * v_bytes),
        "mask_0.15": (K.prepare_mask(k, d, 0.15, seed=1), lambda: k.cpu_mask(csr, 0.15, seed=1), True,
                      2 * v_bytes + i_bytes),
        "rank_tokens_2048": (K.prepare_rank_tokens(k, d, medians, 2048),
                             lambda: k.cpu_rank_tokens(csr, medians, 2048), True,
                             v_bytes + i_bytes + rows * 2048 * 4),
        "bin_values_51": (K.prepare_bin_values(k, d, 51), lambda: k.cpu_bin_values(csr, 51), True, v_bytes + nnz * 4),
    }
    results = {}
    for name, (launch, twin, exact, nbytes) in ops.items():
        entry = {}
        try:
            outputs = launch.run_and_fetch()
            gpu_out, flags = outputs[:-1], outputs[-1]
            t1 = time.perf_counter()
            cpu_out = twin()
            entry["cpu_twin_single_thread_ms"] = round((time.perf_counter() - t1) * 1e3, 2)
            cpu_out = cpu_out if isinstance(cpu_out, tuple) else (cpu_out,)
            checks = []
            for g, c in zip(gpu_out, cpu_out):
                if exact is None:  # half types: one 16-bit rounding step
                    worst = int(np.abs(g.view(np.int16).astype(np.int32) - c.view(np.int16)).max()) if g.size else 0
                    checks.append({"matches_twin": worst <= 1, "max_ulp16": worst})
                else:
                    checks.append(compare(g, c, exact))
            entry["check"] = checks
            entry["error_flags"] = flags
            entry.update(cuda_time(torch, launch.launch, args.repeats))
            if nbytes:
                entry["min_bytes"] = int(nbytes)
                entry["achieved_GBps"] = round(nbytes / (entry["median_ms"] * 1e-3) / 1e9, 1)
        except Exception as exc:  # record and go on: one failing kernel must not hide the others
            entry["error"] = f"{type(exc).__name__}: {exc}"
        results[name] = entry
        print(f"{name:30s} {entry.get('median_ms', '-'):>10} ms  "
              f"{'ok' if all(c.get('matches_twin') for c in entry.get('check', [{}])) else 'MISMATCH/ERROR'}",
              file=sys.stderr)
    # Memory floor: a device-to-device copy of 1 GiB (bytes read + written).
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    copy = cuda_time(torch, lambda: b.copy_(a), 10, warmup=2)
    del a, b
    return {
        "device": device_info(torch), "library": str(k.path), "cells": rows, "nnz": nnz,
        "nnz_per_cell": round(nnz / rows, 1), "n_genes": N_GENES, "hvg": HVG, "batch_generation_s": round(gen_s, 1),
        "d2d_copy_GBps": round(2 * (1 << 30) / (copy["median_ms"] * 1e-3) / 1e9, 1),
        "note": "kernel launches only: the DALI operators also upload per-row pointer tables each batch",
        "ops": results,
    }


def run_h2d(args) -> dict:
    import torch

    if not torch.cuda.is_available():
        return {"skipped": "torch sees no CUDA device"}
    cudart = torch.cuda.cudart()
    out = {"device": device_info(torch), "sizes": {}}
    # TODO(reader windows): the reader allocates windows in pageable memory; these figures decide
    # whether GPU pipelines should get pinned windows (cudaHostAlloc, or cudaHostRegister of the
    # existing 2 MiB-aligned buffers). Change the reader only if pinned wins after its cost.
    for label, nbytes in (("batch_95MB", BATCH * 2900 * 8), ("window_380MB", 16384 * 2900 * 8)):
        dev = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
        pageable = torch.ones(nbytes, dtype=torch.uint8)  # touched: no page faults in the copy
        entry = {"bytes": nbytes}
        t = cuda_time(torch, lambda: dev.copy_(pageable), args.repeats, warmup=1)
        entry["pageable"] = {**t, "GBps": round(nbytes / (t["median_ms"] * 1e-3) / 1e9, 1)}
        t0 = time.perf_counter()
        pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        pinned.fill_(1)
        entry["pinned_alloc_ms"] = round((time.perf_counter() - t0) * 1e3, 2)
        t = cuda_time(torch, lambda: dev.copy_(pinned, non_blocking=True), args.repeats, warmup=1)
        entry["pinned"] = {**t, "GBps": round(nbytes / (t["median_ms"] * 1e-3) / 1e9, 1)}
        del pinned
        # Pinning the pageable buffer in place (what registering a reader window would cost).
        ptr = pageable.data_ptr()
        t0 = time.perf_counter()
        status = cudart.cudaHostRegister(ptr, nbytes, 0)
        reg_ms = (time.perf_counter() - t0) * 1e3
        if int(status) == 0:
            t = cuda_time(torch, lambda: dev.copy_(pageable, non_blocking=True), args.repeats, warmup=1)
            t0 = time.perf_counter()
            cudart.cudaHostUnregister(ptr)
            entry["registered"] = {**t, "GBps": round(nbytes / (t["median_ms"] * 1e-3) / 1e9, 1),
                                   "register_ms": round(reg_ms, 2),
                                   "unregister_ms": round((time.perf_counter() - t0) * 1e3, 2)}
        else:
            entry["registered"] = {"error": f"cudaHostRegister returned {status}"}
        entry["faster"] = "pinned" if entry["pinned"]["median_ms"] < entry["pageable"]["median_ms"] else "pageable"
        out["sizes"][label] = entry
        print(f"h2d {label}: pageable {entry['pageable']['GBps']} GB/s, pinned {entry['pinned']['GBps']} GB/s",
              file=sys.stderr)
        del dev, pageable
    return out


def _timed_batches(run_batch, min_batches: int, min_seconds: float, warmup: int = 2) -> dict:
    for _ in range(warmup):
        run_batch()
    n, t0 = 0, time.perf_counter()
    while n < min_batches or time.perf_counter() - t0 < min_seconds:
        run_batch()
        n += 1
        if time.perf_counter() - t0 > 4 * min_seconds:
            break
    s = time.perf_counter() - t0
    return {"batches": n, "seconds": round(s, 2), "ms_per_batch": round(s / n * 1e3, 2),
            "cells_per_s": round(n * BATCH / s)}


def run_pipeline(args) -> dict:
    import torch

    sys.path.insert(0, str(ROOT / "python"))
    import biodali  # noqa: F401  (loads the plugin)
    from biodali import synth
    from nvidia.dali import fn, pipeline_def

    threads = os.cpu_count() or 2
    out = {"threads": threads, "batch": BATCH, "cells": args.cells, "chunk_size": 512, "preload_chunks": 32}
    data = Path(args.data)
    store = data / "cells.zarr"
    t0 = time.perf_counter()
    if not store.exists():
        try:
            synth.write_expression(store, args.cells, layout="annbatch", jobs=min(8, threads), progress=False)
            out["layout"] = "annbatch"
        except Exception as exc:  # fall back to anndata's own layout
            out["annbatch_layout_error"] = f"{type(exc).__name__}: {exc}"
            synth.write_expression(store, args.cells, jobs=min(8, threads), progress=False, overwrite=True)
            out["layout"] = "anndata"
    out["write_s"] = round(time.perf_counter() - t0, 1)
    genes = [int(g) for g in np.sort(np.random.default_rng(0).permutation(N_GENES)[:HVG])]
    E = fn.biodali.expression
    gpu_ok = torch.cuda.is_available()

    def reader():
        return fn.biodali.readers.anndata(path=str(store), random_shuffle=True, seed=0, chunk_size=512,
                                          preload_chunks=32, name="reader")

    def make(graph, device_id, depth):
        p = pipeline_def(graph, batch_size=BATCH, num_threads=threads, device_id=device_id,
                         prefetch_queue_depth=depth)()
        p.build()
        return p

    def reader_only():
        v, i = reader()
        return v, i

    def nd_cpu():
        v, i = reader()
        return E.normalize_densify(v, i, genes=genes, n_features=N_GENES)

    def nd_gpu():
        v, i = reader()
        return E.normalize_densify(v.gpu(), i.gpu(), genes=genes, n_features=N_GENES)

    runs = [("reader_cpu", reader_only, None, 1), ("normalize_densify_cpu", nd_cpu, None, 1)]
    if gpu_ok:
        runs.append(("normalize_densify_gpu", nd_gpu, 0, 2))
    for name, graph, device_id, depth in runs:
        try:
            pipe = make(graph, device_id, depth)

            def step(pipe=pipe):
                pipe.run()

            res = _timed_batches(step, args.min_batches, args.min_seconds)
            if device_id is not None:
                torch.cuda.synchronize()
            out[name] = {**res, "device_id": device_id, "prefetch_queue_depth": depth}
            del pipe
        except Exception as exc:
            out[name] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"{name}: {out[name]}", file=sys.stderr)
    if gpu_ok:
        try:
            from biodali.torch import ExpressionLoader

            with ExpressionLoader(str(store), BATCH, genes=genes, transform="log1p", device="cuda",
                                  num_threads=threads) as loader:
                it = iter(loader)

                def step_loader():
                    nonlocal it
                    try:
                        batch = next(it)
                    except StopIteration:
                        it = iter(loader)
                        batch = next(it)
                    return batch

                res = _timed_batches(step_loader, args.min_batches, args.min_seconds)
                torch.cuda.synchronize()
                out["expression_loader_cuda"] = res
        except Exception as exc:
            out["expression_loader_cuda"] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"expression_loader_cuda: {out['expression_loader_cuda']}", file=sys.stderr)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="part", required=True)
    k = sub.add_parser("kernels")
    k.add_argument("--lib")
    k.add_argument("--cells", type=int, default=BATCH)
    k.add_argument("--repeats", type=int, default=50)
    h = sub.add_parser("h2d")
    h.add_argument("--repeats", type=int, default=10)
    p = sub.add_parser("pipeline")
    p.add_argument("--cells", type=int, default=32768)
    p.add_argument("--data", default="/tmp/biodali-gpu-check")
    p.add_argument("--min-batches", type=int, default=16)
    p.add_argument("--min-seconds", type=float, default=8.0)
    for s in (k, h, p):
        s.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    result = {"part": args.part, "host": platform.node(), "cpus": os.cpu_count(),
              "when": time.strftime("%Y-%m-%d %H:%M:%S")}
    result.update({"kernels": run_kernels, "h2d": run_h2d, "pipeline": run_pipeline}[args.part](args))
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
