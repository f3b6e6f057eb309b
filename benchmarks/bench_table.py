"""Render a `gcnet bench --json` report as a Markdown table (used for docs/deploy.md).

    python benchmarks/bench_table.py benchmarks/results/cpu_2026-11-21.json
"""

from __future__ import annotations

import json
import sys

from gcnet.deploy.bench import result_cells


def table(report: dict) -> str:
    has_eval = any("mIoU" in r for r in report["results"])
    head = ["form", "median ms", "IQR ms", "min-max ms", "FPS", "GFLOP/s", "x torch-fp32",
            "max abs diff", "argmax agree %", "peak mem MB"]
    if has_eval:
        head += ["mIoU", "Δ mIoU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in report["results"]:
        if "error" in r:
            lines.append(f"| {r['form']} | failed: {r['error'].splitlines()[0]} |")
            continue
        median, iqr, lo, hi, *rest = result_cells(r, has_eval)
        lines.append("| " + " | ".join([f"`{r['form']}`", median, iqr, f"{lo}-{hi}", *rest]) + " |")
    return "\n".join(lines)


def main() -> None:
    for path in sys.argv[1:]:
        report = json.loads(open(path).read())
        cfg, m, v = report["config"], report["machine"], report["versions"]
        gpu = f"{m['cuda_device']} (CUDA {m.get('cuda_version')}), " if m.get("cuda_device") else ""
        print(f"`{report['command']}` — {report['date']}, {gpu}{m['cpu']} ({m['usable_cpus']} cores, "
              f"{m['threads']} threads, {', '.join(m['isa'])}), torch {v['torch']}, onnxruntime "
              f"{v.get('onnxruntime')}, openvino {v.get('openvino')}, nncf {v.get('nncf')}; "
              f"{cfg['model']} {cfg['num_classes']} classes, {cfg['input_size'][0]}x{cfg['input_size'][1]}, "
              f"batch {cfg['batch']}, {cfg['weights']}, {cfg['warmup']} warm-up + at least {cfg['iters']} timed runs"
              f"{' and ' + str(cfg['min_time_s']) + ' s' if cfg.get('min_time_s') else ''}; "
              f"int8 calibration: {cfg['calibration']}; load average start/end "
              f"{report['loadavg']['start'][0]:.2f}/{report['loadavg']['end'][0]:.2f}\n")
        print(table(report))
        print()


if __name__ == "__main__":
    main()
