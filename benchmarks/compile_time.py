"""Compile time of an experiment's training steps (default: GPT-2 small).

    python benchmarks/compile_time.py [EXPERIMENT.yaml] [--repeats N] [--set KEY=VALUE ...]

For every grid point, builds the program afresh (no in-process cache hit) ``--repeats`` times
and prints the median trace+lower and compile seconds, and XLA's per-device memory, as a
Markdown table to paste into benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import time

import jax

import jaxmem
from jaxmem.compiled import compile_timed
from jaxmem.units import fmt_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", nargs="?", default="experiments/gpt2_small.yaml")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    exp = jaxmem.Experiment.from_yaml(args.experiment, args.overrides)
    device = jaxmem.targets.get(exp.config.target.name).devices()[0]
    print(f"# {exp.name}: compile time, {datetime.date.today()}, compiled for "
          f"{device.device_kind} ({exp.config.target.name}), {os.cpu_count()} CPU cores, "
          f"jax {jax.__version__}, Python {platform.python_version()}")
    print(f"# command: python benchmarks/compile_time.py {args.experiment} "
          f"--repeats {args.repeats}" + "".join(f" --set {o}" for o in args.overrides))
    print()
    print("| configuration | params | lower s (median) | compile s (median) | temp / device "
          "| total / device |")
    print("|---|---|---|---|---|---|")
    t_all = time.perf_counter()
    for point in exp.grid():
        lowers, compiles = [], []
        try:
            for _ in range(args.repeats):
                program = jaxmem.build_program(point.config)
                compiled, lower_s, compile_s = compile_timed(program.step,
                                                             *program.abstract_args)
                lowers.append(lower_s)
                compiles.append(compile_s)
        except Exception as e:  # e.g. a TPU target's compile-time out-of-memory
            print(f"| {point.name} | error: {str(e).splitlines()[0][:160]} | | | | |")
            continue
        report = jaxmem.MemoryReport.from_compiled(compiled, lower_seconds=lower_s,
                                                   compile_seconds=compile_s)
        params = jaxmem.analytic.tree_count(program.params)
        print(f"| {point.name} | {params / 1e6:.1f}M | {statistics.median(lowers):.2f} "
              f"| {statistics.median(compiles):.2f} | {fmt_bytes(report.temp_bytes)} "
              f"| {fmt_bytes(report.total_bytes)} |", flush=True)
    print(f"\nwall time, all repeats: {time.perf_counter() - t_all:.1f} s")


if __name__ == "__main__":
    main()
