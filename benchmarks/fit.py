"""``jaxmem fit`` on benchmark cases, each checked by brute force over a range.

For each case: the answer of ``jaxmem.fit`` (the largest admissible value that fits the budget),
the compiles it used, where the estimate put the boundary, and a brute-force check: every
admissible value in a window around the answer compiled (values ``fit`` already compiled are
not compiled twice: compiles are deterministic), the largest fitting value in the window, and
whether the fitting values in it form an interval.

    JAX_PLATFORMS=cpu python benchmarks/fit.py            # every case
    JAX_PLATFORMS=cpu python benchmarks/fit.py --only cpu # the CPU cases
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

from jaxmem.config import Config  # noqa: E402
from jaxmem.experiment import Experiment  # noqa: E402
from jaxmem.fit import Space, compiled_bytes, fit  # noqa: E402
from jaxmem.units import fmt_bytes, parse_bytes  # noqa: E402

# (name, experiment file or dict, --set overrides, field, budget or None: the target's memory)
CASES = [
    ("gpt scan, none, fp32", "experiments/quickstart.yaml",
     ["remat=none", "precision=fp32"], "data.batch_size", "512MiB"),
    ("gpt scan, full, fp32", "experiments/quickstart.yaml",
     ["remat=full", "precision=fp32"], "data.batch_size", "512MiB"),
    ("gpt scan, minimal, bf16-mixed, seq", "experiments/quickstart.yaml",
     ["remat=minimal", "precision=bf16-mixed", "model.attention=blockwise",
      "model.attention_chunk=64"], "model.seq_len", "256MiB"),
    ("gpt loop, dots, fsdp on cpu:8", "experiments/quickstart.yaml",
     ["remat=dots", "precision=fp32", "model.stack=loop", "target=cpu:8", "mesh.fsdp=8",
      "sharding=fsdp"], "data.batch_size", "128MiB"),
    ("encoder, full, 2 microbatches", "experiments/quickstart.yaml",
     ["remat=full", "precision=fp32", "model.kind=encoder", "data.microbatches=2",
      "model.vocab_size=1024"], "data.batch_size", "256MiB"),
    ("mlp, none", {"model": {"kind": "mlp", "hidden": [2048, 2048]}},
     ["remat=none"], "data.batch_size", "128MiB"),
    ("cnn, full", {"model": {"kind": "cnn", "image_size": 64}},
     ["remat=full"], "data.batch_size", "256MiB"),
    ("gpt-2 small, full, bf16-mixed", "experiments/gpt2_small.yaml",
     ["remat=full", "data.batch_size=1"], "data.batch_size", "4GiB"),
    ("plan_v5e on tpu:v5e:2x2 (libtpu's memory)", "experiments/plan_v5e.yaml",
     ["target=tpu:v5e:2x2", "mesh.fsdp=-1"], "data.batch_size", None),
]


def _config(source: str | dict, sets: list[str]) -> Config:
    """The first configuration of an experiment file, or of a raw experiment dict."""
    if isinstance(source, dict):
        return Experiment.from_dict({"name": "case", **source}, sets).grid()[0].config
    return Experiment.from_yaml(source, sets).grid()[0].config


def brute(config: Config, field: str, budget: int, result, window: int) -> dict:
    """Every admissible value within ``window`` steps of the answer, compiled."""
    space = Space(config, field)
    known = {p.value: p for p in result.probes}
    center = result.value or space.next_above(0)
    values = [center]
    lo = hi = center
    for _ in range(window):
        lo = space.next_below(lo) if lo is not None else None
        hi = space.next_above(hi) if hi is not None else None
        values += [v for v in (lo, hi) if v is not None]
    extra = 0
    fits = {}
    for v in sorted(set(values)):
        if v not in known:
            known[v] = compiled_bytes(space.config(v))
            extra += 1
        p = known[v]
        fits[v] = p.fits and p.bytes is not None and p.bytes <= budget
    fitting = [v for v, ok in fits.items() if ok]
    best = max(fitting, default=None)
    interval = all(fits[v] for v in fits if best is not None and v <= best)
    return {"values": sorted(fits), "best": best, "interval": interval, "extra": extra,
            "bytes": {v: known[v].bytes for v in sorted(fits)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=("cpu", "tpu"), default=None)
    ap.add_argument("--window", type=int, default=3, help="admissible values each side")
    args = ap.parse_args(argv)
    compiles = []
    for name, source, sets, field, budget in CASES:
        tpu = any(s.startswith("target=tpu") for s in sets)
        if args.only and (args.only == "tpu") != tpu:
            continue
        config = _config(source, sets)
        budget_bytes = parse_bytes(budget) if budget else None
        start = time.perf_counter()
        result = fit(config, field, budget_bytes)
        seconds = time.perf_counter() - start
        check = brute(config, field, result.budget_bytes, result, args.window)
        ok = check["best"] == result.value
        compiles.append(result.compiles)
        print(f"{name}: {field} = {result.value} (next {result.next_value}) within "
              f"{fmt_bytes(result.budget_bytes)}; {result.compiles} compiles, {seconds:.0f} s; "
              f"estimate said {result.estimate_value}", flush=True)
        shown = ", ".join(f"{v}: {fmt_bytes(b) if b is not None else 'refused'}"
                          for v, b in check["bytes"].items())
        print(f"  brute force over {check['values'][0]}..{check['values'][-1]} "
              f"({check['extra']} more compiles): largest fitting {check['best']} "
              f"[{'agrees' if ok else 'DISAGREES'}]; fitting values "
              f"{'an interval' if check['interval'] else 'NOT an interval'}"
              f"{'' if result.interval else ' (fit said so)'}\n  {shown}", flush=True)
    if compiles:
        print(f"compiles per case: mean {statistics.fmean(compiles):.1f}, max {max(compiles)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
