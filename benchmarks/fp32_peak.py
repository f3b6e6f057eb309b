"""Measure this CPU's fp32 peak throughput three ways and print/save JSON.

1. ``fma``: a C microbenchmark (compiled here with gcc/cc, -O2 -mavx512f or -mavx2 -mfma) running
   12 independent FMA chains per thread on every usable core: the achievable FMA peak.
2. ``clock``: the sustained core clock, from a chain of dependent 1-cycle integer adds; with the
   ISA's FMA width it gives the derived peak = cores x FMA pipes x lanes x 2 x clock.
3. ``sgemm``: a 4096^3 fp32 matrix product in OpenVINO (oneDNN) and in PyTorch (MKL), the best a
   real library reaches on a compute-bound kernel.
4. ``vnni`` (CPUs with AVX512_VNNI): 12 independent ``vpdpbusd`` chains per thread, the int8
   multiply-accumulate peak the int8 forms run against (64 u8 x s8 MACs per instruction).

    python benchmarks/fp32_peak.py [--json benchmarks/results/peak.json] [--threads N]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

FMA_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <omp.h>
#ifdef __AVX512F__
typedef __m512 vec; enum { LANES = 16 };
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define STORE _mm512_storeu_ps
#else
typedef __m256 vec; enum { LANES = 8 };
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
#define STORE _mm256_storeu_ps
#endif
static double run(long iters) {
  double total = 0;
  #pragma omp parallel reduction(+:total)
  {
    vec a[12]; vec b = SET1(1.0000001f), c = SET1(1e-7f);
    for (int i = 0; i < 12; i++) a[i] = SET1((float)i);
    for (long k = 0; k < iters; k++) {
      #pragma GCC unroll 12
      for (int i = 0; i < 12; i++) a[i] = FMA(a[i], b, c);
    }
    float s = 0; for (int i = 0; i < 12; i++) { float t[LANES]; STORE(t, a[i]); s += t[0]; }
    total += s;
  }
  return total;
}
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
int main(int argc, char **argv) {
  int threads = atoi(argv[1]); long iters = 200000000L;
  omp_set_num_threads(threads);
  run(iters / 20);
  double t0 = now(); double s = run(iters); double dt = now() - t0;
  printf("%d %.3f %g\n", LANES, (double)threads * iters * 12 * LANES * 2 / dt / 1e9, s);
  /* clock: 4 dependent 1-cycle adds per iteration on one core */
  long n = 1000000000L; unsigned long x = 0;
  t0 = now();
  for (long i = 0; i < n; i++) __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
  dt = now() - t0;
  printf("%.4f %lu\n", 4.0 * n / dt / 1e9, x);
  return 0;
}
"""


def fma_and_clock(threads: int) -> dict:
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc:
        return {"error": "no C compiler (gcc/cc) found"}
    flags = "-mavx512f" if "avx512f" in Path("/proc/cpuinfo").read_text() else "-mavx2"
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "fma.c", Path(tmp) / "fma"
        src.write_text(FMA_C)
        subprocess.run([cc, "-O2", flags, "-mfma", "-fopenmp", str(src), "-o", str(exe)], check=True)
        out = subprocess.run([str(exe), str(threads)], check=True, capture_output=True, text=True).stdout.split("\n")
    lanes, gflops, _ = out[0].split()
    clock = float(out[1].split()[0])
    lanes = int(lanes)
    return {"fma_gflops": float(gflops), "vector_lanes_fp32": lanes, "clock_ghz": clock,
            "fma_pipes_implied": float(gflops) / (threads * lanes * 2 * clock)}


VNNI_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <omp.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static long run(long iters) {
  long total = 0;
  #pragma omp parallel reduction(+:total)
  {
    __m512i acc[12]; __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(2);
    for (int i = 0; i < 12; i++) acc[i] = _mm512_set1_epi32(i);
    for (long k = 0; k < iters; k++) {
      #pragma GCC unroll 12
      for (int i = 0; i < 12; i++) acc[i] = _mm512_dpbusd_epi32(acc[i], a, b);
    }
    int t[16]; for (int i = 0; i < 12; i++) { _mm512_storeu_si512(t, acc[i]); total += t[0]; }
  }
  return total;
}
int main(int argc, char **argv) {
  int threads = atoi(argv[1]); long iters = 200000000L;
  omp_set_num_threads(threads);
  run(iters / 20);
  double t0 = now(); long s = run(iters); double dt = now() - t0;
  printf("%.3f %ld\n", (double)threads * iters * 12 * 64 / dt / 1e9, s);
  return 0;
}
"""


def vnni_peak(threads: int) -> dict:
    """int8 multiply-accumulates per second (GMAC/s) of AVX512_VNNI ``vpdpbusd`` on every thread."""
    cc = shutil.which("gcc") or shutil.which("cc")
    if not cc or "avx512_vnni" not in Path("/proc/cpuinfo").read_text():
        return {}
    with tempfile.TemporaryDirectory() as tmp:
        src, exe = Path(tmp) / "vnni.c", Path(tmp) / "vnni"
        src.write_text(VNNI_C)
        subprocess.run([cc, "-O2", "-mavx512f", "-mavx512vnni", "-fopenmp", str(src), "-o", str(exe)], check=True)
        out = subprocess.run([str(exe), str(threads)], check=True, capture_output=True, text=True).stdout.split()
    return {"vnni_int8_gmacs": float(out[0])}


def sgemm(threads: int, n: int = 4096) -> dict:
    import numpy as np

    out = {}
    try:
        import openvino as ov
        from openvino import opset13 as ops

        a = ops.parameter([n, n], np.float32)
        b = ops.constant(np.random.default_rng(0).standard_normal((n, n), dtype=np.float32))
        model = ov.Model([ops.matmul(a, b, False, False)], [a])
        compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": str(threads),
                                                          "INFERENCE_PRECISION_HINT": "f32",
                                                          "PERFORMANCE_HINT": "LATENCY"})
        req = compiled.create_infer_request()
        x = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
        for _ in range(2):
            req.infer([x])
        ts = []
        for _ in range(5):
            t = time.perf_counter()
            req.infer([x])
            ts.append(time.perf_counter() - t)
        out["openvino_sgemm_gflops"] = 2 * n**3 / min(ts) / 1e9
    except ImportError:
        pass
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    c = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=c)
    ts = []
    for _ in range(5):
        t = time.perf_counter()
        torch.mm(a, b, out=c)
        ts.append(time.perf_counter() - t)
    out["torch_sgemm_gflops"] = 2 * n**3 / min(ts) / 1e9
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--json")
    args = ap.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown")
    res = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"), "cpu": cpu,
           "threads": args.threads, "loadavg_start": os.getloadavg()}
    res.update(fma_and_clock(args.threads))
    if "clock_ghz" in res:
        pipes = 2  # Zen 4/5, Skylake-SP and later server cores: two FMA pipes per core
        res["derived_peak_gflops"] = args.threads * pipes * res["vector_lanes_fp32"] * 2 * res["clock_ghz"]
        res["derived_formula"] = (f"{args.threads} cores x {pipes} FMA pipes x {res['vector_lanes_fp32']} fp32 lanes "
                                  f"x 2 flop/FMA x {res['clock_ghz']:.2f} GHz")
    res.update(sgemm(args.threads))
    res.update(vnni_peak(args.threads))
    res["loadavg_end"] = os.getloadavg()
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
