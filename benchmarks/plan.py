"""``jaxmem plan`` on the issue's acceptance cases; every figure printed is measured here.

* ``gpt2``: GPT-2 small for a 16 GiB device (this machine's CPU backend, ``--budget 16GiB``),
  each candidate at its largest batch: the chosen configuration's batch and the naive
  baseline's (float32, no remat, data parallel, no accumulation), both found by compile, and
  the estimated FLOPs per example of each (goal: >= 4x the batch at <= 1.25x the FLOPs).
* ``pod``: GPT-2 small over a virtual TPU v5e 16x16 (``experiments/plan_v5e.yaml``): candidates
  searched, the best verified by compile, and the plan's wall time against one plain compile
  of the chosen configuration in the same process (goal: <= 2x).
* ``llama``: Llama 3 8B (published shape) planned on a virtual v5p-256 and, with the
  gpu-targets extra, a virtual 8 x H100 node: the chosen configuration's per-device bytes and
  the wall time (goal: <= 90 s per configuration compiled).

    JAX_PLATFORMS=cpu python benchmarks/plan.py                 # every case
    JAX_PLATFORMS=cpu python benchmarks/plan.py --only pod
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jaxmem  # noqa: E402
from jaxmem.build import build_program  # noqa: E402
from jaxmem.compiled import compile_timed  # noqa: E402
from jaxmem.plan import plan  # noqa: E402
from jaxmem.setup import resolve  # noqa: E402
from jaxmem.units import fmt_bytes, parse_bytes  # noqa: E402


def _show(name: str, p: jaxmem.Plan) -> None:
    c = p.chosen
    print(f"[{name}] {p.searched} candidates estimated ({sum(p.skipped.values())} refused), "
          f"{p.compiles} compiles, {p.seconds:.1f} s")
    if c is None:
        print(f"[{name}] nothing fits")
        return
    flops, cost = p.relative(c)
    print(f"[{name}] chosen: {' '.join(c.changes) or '(as configured)'}")
    print(f"[{name}]   estimate {fmt_bytes(c.estimate_bytes)}, compiled "
          f"{fmt_bytes(c.compiled_bytes) if c.compiled_bytes else '-'} of "
          f"{fmt_bytes(p.budget_bytes)}; FLOPs/example x{flops:.2f}, cost/example x{cost:.2f} "
          "the baseline's")


def gpt2() -> None:
    config = jaxmem.Experiment.from_yaml("experiments/gpt2_small.yaml").config
    p = plan(config, parse_bytes("16GiB"), vary="data.batch_size")
    _show("gpt2", p)
    b = p.baseline
    flops, _ = p.relative(p.chosen)
    print(f"[gpt2] batch {p.chosen.value} vs the baseline's {b.value} (both by compile): "
          f"x{p.chosen.value / b.value:.2f} the batch at x{flops:.2f} the FLOPs per example")


def pod() -> None:
    config = jaxmem.Experiment.from_yaml("experiments/plan_v5e.yaml").config
    resolve(config).memory  # noqa: B018 - libtpu's figure, once (cached), outside both timings
    start = time.perf_counter()
    p = plan(config)
    wall = time.perf_counter() - start
    _show("pod", p)
    if p.chosen is None:
        return
    start = time.perf_counter()
    program = build_program(resolve(p.chosen.config))
    compile_timed(program.step, *program.abstract_args)
    plain = time.perf_counter() - start
    print(f"[pod] plan {wall:.1f} s vs one plain compile of the chosen configuration "
          f"{plain:.1f} s: x{wall / plain:.2f}")


def llama() -> None:
    for path, sets in (("experiments/plan_llama8b_v5p.yaml", []),
                       ("experiments/plan_llama8b_h100x8.yaml", [])):
        try:
            config = jaxmem.Experiment.from_yaml(path, sets).config
            resolve(config).memory  # noqa: B018
        except jaxmem.ConfigError as e:
            print(f"[llama] {path}: skipped ({e})")
            continue
        start = time.perf_counter()
        p = plan(config, space=jaxmem.SearchSpace(verify=1))
        wall = time.perf_counter() - start
        _show(f"llama {config.target.name}", p)
        print(f"[llama {config.target.name}] {wall:.1f} s wall, {p.compiles} compiles: "
              f"{wall / max(p.compiles, 1):.1f} s per configuration compiled")


CASES = {"gpt2": gpt2, "pod": pod, "llama": llama}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CASES), action="append")
    args = parser.parse_args()
    for name in args.only or list(CASES):
        CASES[name]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
