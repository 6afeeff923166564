"""Builds biodali: one shared library (csrc/ engine + dali_plugin/ operators) placed in
python/biodali/, linked against the installed DALI, whose version is recorded beside it."""
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Command, find_packages, setup
from setuptools.command.build_py import build_py
from setuptools.command.develop import develop

ROOT = Path(__file__).resolve().parent
LIB_NAME = "libbiodali.so"
PACKAGE_DIR = ROOT / "python" / "biodali"
BUILD_DIR = ROOT / "build" / os.environ.get("BIODALI_BUILD_FLAVOR", "release")


def _dali():
    import nvidia.dali as dali
    import nvidia.dali.sysconfig as sysconfig

    return dali.__version__, sysconfig.get_compile_flags(), sysconfig.get_lib_dir()


def _cuda_include_dirs():
    """DALI's operator headers include CUDA runtime headers (and curand) even for CPU ops."""
    dirs = []
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if (Path(cuda_home) / "include" / "cuda_runtime_api.h").exists():
        dirs.append(str(Path(cuda_home) / "include"))
    for entry in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cuda_runtime/include", "nvidia/curand/include"):
            cand = Path(entry) / sub
            if cand.is_dir() and str(cand) not in dirs:
                dirs.append(str(cand))
    return dirs


def _sources():
    srcs = sorted(ROOT.glob("csrc/**/*.cc")) + sorted(ROOT.glob("dali_plugin/**/*.cc"))
    cuda = sorted(ROOT.glob("csrc/**/*.cu")) + sorted(ROOT.glob("dali_plugin/**/*.cu"))
    return srcs, cuda


def _newest_header_mtime():
    headers = list(ROOT.glob("csrc/**/*.h")) + list(ROOT.glob("dali_plugin/**/*.h"))
    return max((h.stat().st_mtime for h in headers), default=0.0)


class BuildPlugin(Command):
    """Compiles changed sources in parallel and links python/biodali/libbiodali.so."""

    description = "build the biodali DALI plugin"
    user_options = [("jobs=", "j", "parallel compile jobs")]

    def initialize_options(self):
        self.jobs = None

    def finalize_options(self):
        self.jobs = int(self.jobs or os.cpu_count() or 2)

    def run(self):
        dali_version, dali_flags, dali_lib = _dali()
        flavor_flags = os.environ.get("BIODALI_CXXFLAGS", "-O3 -DNDEBUG").split()
        common = (
            # -ffp-contract=off: no fused multiply-add, so CPU twins and CUDA kernels (-fmad=false)
            # round identically.
            ["-std=c++20", "-fPIC", "-Wall", "-Wextra", "-fvisibility=hidden", "-ffp-contract=off",
             # omp simd loops call glibc's vector math (libmvec)
             "-fopenmp-simd"]
            + flavor_flags
            # DALI's headers are not -Wextra clean: include them as system headers.
            + [("-isystem" + f[2:]) if f.startswith("-I") else f for f in dali_flags]
            + [f"-I{ROOT / 'csrc'}", f"-I{ROOT}"]
            + [f"-isystem{d}" for d in _cuda_include_dirs()]
        )
        srcs, cuda_srcs = _sources()
        nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if Path("/usr/local/cuda/bin/nvcc").exists() else None)
        header_mtime = _newest_header_mtime()
        BUILD_DIR.mkdir(parents=True, exist_ok=True)
        flags_file = BUILD_DIR / "flags.json"
        flags_key = json.dumps([common, dali_version])
        flags_changed = not flags_file.exists() or flags_file.read_text() != flags_key

        def obj_for(src):
            return BUILD_DIR / (str(src.relative_to(ROOT)).replace("/", "__") + ".o")

        def compile_one(src):
            obj = obj_for(src)
            if (not flags_changed and obj.exists()
                    and obj.stat().st_mtime >= max(src.stat().st_mtime, header_mtime)):
                return obj, None
            if src.suffix == ".cu":
                cmd = [nvcc, "-std=c++20", "-O3", "-fmad=false", "--expt-relaxed-constexpr",
                       "-Xcompiler", "-fPIC,-Wall,-Wextra,-fvisibility=hidden",
                       "-gencode", "arch=compute_80,code=sm_80",
                       "-gencode", "arch=compute_90,code=[sm_90,compute_90]"] + [
                           part for f in common if f.startswith(("-I", "-D", "-isystem"))
                           # nvcc wants "-isystem DIR" as two words
                           for part in (["-isystem", f[8:]] if f.startswith("-isystem") else [f])] + [
                       "-c", str(src), "-o", str(obj)]
            else:
                cmd = [os.environ.get("CXX", "g++")] + common + ["-c", str(src), "-o", str(obj)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                return obj, f"$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}"
            if proc.stderr.strip():
                print(proc.stderr, file=sys.stderr)
            return obj, None

        all_srcs = srcs + (cuda_srcs if nvcc else [])
        with concurrent.futures.ThreadPoolExecutor(self.jobs) as pool:
            results = list(pool.map(compile_one, all_srcs))
        errors = [err for _, err in results if err]
        if errors:
            sys.stderr.write("\n".join(errors))
            raise SystemExit("biodali: compilation failed")
        flags_file.write_text(flags_key)
        objs = [str(obj) for obj, _ in results]
        out = PACKAGE_DIR / LIB_NAME
        link = ([os.environ.get("CXX", "g++"), "-shared", "-o", str(out)] + objs + flavor_flags
                + [f"-L{dali_lib}", "-ldali", "-ldali_operators", f"-Wl,-rpath,{dali_lib}",
                   "-lblosc", "-llz4", "-lzstd", "-lz", "-lmvec", "-lm", "-lpthread"])
        if nvcc and cuda_srcs:
            cuda_home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
            cuda_lib = next((d for d in (cuda_home / "lib64", cuda_home / "lib",
                                         Path(nvcc).resolve().parent.parent / "lib64")
                             if (d / "libcudart_static.a").exists()), cuda_home / "lib64")
            # Static cudart, as DALI's own plugins: nothing to find at load time on CPU-only hosts.
            link += [f"-L{cuda_lib}", "-lcudart_static", "-ldl", "-lrt"]
        subprocess.run(link, check=True)
        (PACKAGE_DIR / "_build_info.json").write_text(json.dumps(
            {"dali_version": dali_version, "cuda_kernels": bool(nvcc and cuda_srcs)}))
        print(f"biodali: built {out} for DALI {dali_version}")


class BuildPyWithPlugin(build_py):
    def run(self):
        self.run_command("build_plugin")
        super().run()


class DevelopWithPlugin(develop):
    def run(self):
        self.run_command("build_plugin")
        super().run()


setup(
    name="biodali",
    version="0.1.0",
    description="DALI readers and GPU operators for single-cell, microscopy and genomics data",
    package_dir={"": "python"},
    packages=find_packages("python"),
    package_data={"biodali": [LIB_NAME, "_build_info.json"]},
    python_requires=">=3.10",
    entry_points={"console_scripts": ["biodali=biodali.cli:main"]},
    cmdclass={"build_plugin": BuildPlugin, "build_py": BuildPyWithPlugin, "develop": DevelopWithPlugin},
)
