"""How close ``jaxmem.estimate`` comes to XLA's compiled total, on configurations drawn at random.

Draws ``--n`` training configurations from a seeded generator (model kind gpt / encoder / mlp /
cnn; layers, width, heads, sequence, batch, vocabulary; every remat policy; fp32 / bf16-mixed;
microbatches; freezing; dp / fsdp / tp meshes on ``cpu:8``) and ``--tpu`` more on a virtual
TPU slice (``--tpu-shapes planning``, the default: at the sizes a TPU run is planned at, dp /
fsdp / fsdp+tp over its chips; ``small``: the CPU draw's shapes), compiles each on abstract
shapes, and compares the estimate's total with the figure
``fits`` uses: ``compiled.total_bytes`` on CPU and GPU, libtpu's ``compiled.peak_bytes`` on TPU
(libtpu's total leaves its temporaries out). Prints the error distribution, the share within
+-10 %, the median estimate latency, and the worst configurations with the terms that explain
the gap (from ``jaxmem.explain`` of those configurations: the category whose bytes differ most).

    JAX_PLATFORMS=cpu python benchmarks/estimate_accuracy.py --seed 1 --tpu 20 --out rows.jsonl

The compiled figures do not depend on the estimate: ``--rescore rows.jsonl`` estimates a
previous run's configurations again with the current code and compares them with its compiled
figures, in seconds (the same jax / libtpu versions assumed).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

try:
    jax.config.update("jax_num_cpu_devices", 8)
except RuntimeError:  # imported where JAX's backends already run (the tests): theirs stand
    pass

from jaxmem import _convert, results  # noqa: E402
from jaxmem.build import build_program  # noqa: E402
from jaxmem.compiled import MemoryReport, compile_timed  # noqa: E402
from jaxmem.config import Config  # noqa: E402
from jaxmem.estimate import estimate  # noqa: E402
from jaxmem.explain import explain_program  # noqa: E402
from jaxmem.measure import fits_figure  # noqa: E402
from jaxmem.setup import resolve  # noqa: E402

REMAT = ("none", "dots", "dots_no_batch", "minimal", "full", "save:query+key+value",
         "except:mlp_post_act")
MESHES = (("dp", {"data": 8}), ("fsdp", {"fsdp": 8}), ("tp", {"data": 2, "tensor": 4}),
          ("fsdp+tp", {"fsdp": 2, "tensor": 4}))


def _transformer(rng: random.Random, kind: str, tensor: int) -> dict:
    heads = rng.choice(tuple(h for h in (2, 4, 8, 12) if h % tensor == 0))
    return {"kind": kind, "num_layers": rng.randint(1, 8), "d_model": heads * rng.choice(
        (32, 48, 64)), "num_heads": heads, "seq_len": rng.choice((64, 128, 256, 512)),
        "vocab_size": rng.choice((256, 1000, 4096, 8192, 32000)),
        "mlp_ratio": rng.choice((2, 4)), "stack": rng.choice(("loop", "scan"))}


def _model(rng: random.Random, kind: str, tensor: int) -> dict:
    if kind in ("gpt", "encoder"):
        return _transformer(rng, kind, tensor)
    if kind == "mlp":
        return {"kind": "mlp", "in_features": rng.choice((256, 784, 1024)),
                "hidden": [rng.choice((512, 1024, 2048, 4096))
                           for _ in range(rng.randint(1, 4))],
                "out_features": rng.choice((10, 100, 1000))}
    n = rng.randint(1, 4)
    return {"kind": "cnn", "image_size": 2 ** n * rng.choice((4, 8, 16)),
            "channels": [rng.choice((16, 32, 64, 128)) for _ in range(n)],
            "depthwise_separable": rng.random() < 0.3}


def draw(rng: random.Random, target: str | None = None) -> dict:
    """One random training configuration (a raw dict, as YAML would give)."""
    kind = rng.choice(("gpt", "gpt", "encoder", "mlp", "cnn"))
    transformer = kind in ("gpt", "encoder")
    mesh_choice = None
    if target is None and rng.random() < 0.4:
        mesh_choice = rng.choice(MESHES if transformer else MESHES[:2])
    tensor = mesh_choice[1].get("tensor", 1) if mesh_choice else 1
    model = _model(rng, kind, tensor)
    remat = rng.choice(REMAT if transformer else ("none", "dots", "full"))
    raw = {"model": model, "remat": remat,
           "precision": rng.choice(("fp32", "bf16-mixed")),
           "optimizer": rng.choice(("adamw", "adamw", "sgd", "lion"))}
    micro = rng.choice((1, 1, 1, 2, 4))
    ways = 1
    if target is not None:
        raw["target"] = target
    elif mesh_choice is not None:
        preset, mesh = mesh_choice
        raw.update(target="cpu:8", sharding=preset, mesh=mesh)
        ways = mesh.get("data", 1) * mesh.get("fsdp", 1)
    raw["data"] = {"batch_size": ways * micro * rng.choice((1, 2, 4, 8)), "microbatches": micro}
    if transformer and model["stack"] == "loop" and rng.random() < 0.15:
        raw["freeze"] = {"embeddings": True}
    return raw




def _slice_meshes(target: str) -> tuple:
    """Meshes over all chips of a TPU target (``tpu:v5e:2x2`` has 4): none, dp, fsdp and,
    with at least 4 chips, fsdp x 2-way tensor parallelism."""
    chips = math.prod(int(n) for n in target.rsplit(":", 1)[1].split("x"))
    meshes = [None, ("dp", {"data": chips}), ("fsdp", {"fsdp": chips})]
    if chips >= 4:
        meshes.append(("fsdp+tp", {"fsdp": chips // 2, "tensor": 2}))
    return tuple(meshes)


def draw_planning(rng: random.Random, target: str) -> dict:
    """One random training configuration at the sizes a TPU run is planned at (mostly
    hundreds of MiB to GiB per chip; small CNNs and sharded steps can fall below): under
    ~300 MiB libtpu keeps a step's temporaries in the chip's on-chip memory and its reported
    peak departs from the HBM buffers by up to ~150 MiB (RESULTS.md), so a 10 % comparison
    there measures that, not the estimate. Nothing is filtered by size."""
    kind = rng.choice(("gpt", "gpt", "encoder", "mlp", "cnn"))
    transformer = kind in ("gpt", "encoder")
    meshes = _slice_meshes(target)
    mesh_choice = rng.choice(meshes if transformer else meshes[:3])
    tensor = mesh_choice[1].get("tensor", 1) if mesh_choice else 1
    if transformer:
        heads = rng.choice(tuple(h for h in (8, 12, 16) if h % tensor == 0))
        model = {"kind": kind, "num_layers": rng.randint(2, 12),
                 "d_model": heads * rng.choice((64, 128)), "num_heads": heads,
                 "seq_len": rng.choice((512, 1024, 2048)),
                 "vocab_size": rng.choice((8192, 32000, 50304)), "mlp_ratio": 4,
                 "stack": rng.choice(("loop", "scan"))}
        per_device = rng.choice((2, 4, 8, 16))
    elif kind == "mlp":
        model = {"kind": "mlp", "in_features": rng.choice((1024, 4096)),
                 "hidden": [rng.choice((4096, 8192, 16384)) for _ in range(rng.randint(2, 6))],
                 "out_features": 1000}
        per_device = rng.choice((256, 1024, 2048))
    else:
        n = rng.randint(2, 4)
        model = {"kind": "cnn", "image_size": rng.choice((128, 224)),
                 "channels": [rng.choice((64, 128, 256)) for _ in range(n)],
                 "depthwise_separable": rng.random() < 0.3}
        per_device = rng.choice((16, 32, 64))
    raw = {"model": model, "remat": rng.choice(REMAT if transformer else ("none", "dots", "full")),
           "precision": rng.choice(("fp32", "bf16-mixed")),
           "optimizer": rng.choice(("adamw", "adamw", "sgd", "lion")), "target": target}
    ways = 1
    if mesh_choice is not None:
        preset, mesh = mesh_choice
        raw.update(sharding=preset, mesh=mesh)
        ways = mesh.get("data", 1) * mesh.get("fsdp", 1)
    micro = rng.choice((1, 1, 1, 2, 4))
    raw["data"] = {"batch_size": ways * micro * per_device, "microbatches": micro}
    if transformer and model["stack"] == "loop" and rng.random() < 0.15:
        raw["freeze"] = {"embeddings": True}
    return raw


def measure(raw: dict) -> dict:
    config = _convert.from_dict(Config, raw)
    setup = resolve(config)
    start = time.perf_counter()
    est = estimate(config)
    latency = time.perf_counter() - start
    program = build_program(setup)
    compiled, lower_s, compile_s = compile_timed(program.step, *program.abstract_args)
    report = MemoryReport.from_compiled(compiled, lower_seconds=lower_s,
                                        compile_seconds=compile_s)
    # the figure fits is decided by: libtpu's own peak on TPU (its total leaves temps out)
    reference = fits_figure(report)[1]
    return {"config": raw, "estimate": est.to_dict()["terms"], "estimate_bytes": est.total_bytes,
            "compiled_bytes": reference, "total_bytes": report.total_bytes,
            "peak_bytes": report.peak_bytes, "platform": report.platform,
            "error": est.total_bytes / reference - 1, "latency_s": latency}


_CATEGORY_OF_TERM = {"parameters": ("parameter",), "optimizer state": ("optimizer state",),
                     "batch": ("batch",), "saved activations": ("saved activation",),
                     "gradients": ("gradient",), "peak transients": ("workspace",)}


def why(row: dict) -> str:
    """The term whose estimate differs most from explain's category at the peak."""
    ex = explain_program(build_program(resolve(_convert.from_dict(Config, row["config"]))))
    gaps = []
    for term, cats in _CATEGORY_OF_TERM.items():
        got = sum(ex.by_category.get(c, 0) for c in cats)
        est = row["estimate"].get(term, 0)
        if term == "saved activations":
            est += row["estimate"].get("gathered parameters", 0)
        gaps.append((abs(est - got), term, est, got))
    _, term, est, got = max(gaps)
    return f"{term}: estimated {est / 2**20:.1f} MiB, {got / 2**20:.1f} MiB live at the peak"


def _short(raw: dict) -> str:
    m = raw["model"]
    shape = {k: v for k, v in m.items() if k != "kind"}
    rest = {k: v for k, v in raw.items() if k not in ("model",)}
    return f"{m['kind']} {json.dumps(shape, separators=(',', ':'))} " + json.dumps(
        rest, separators=(",", ":"))


def rescore(row: dict) -> dict:
    """``row`` (a previous run's) with the estimate made again by this code; the compiled
    figures, which the estimate does not change, are kept."""
    start = time.perf_counter()
    est = estimate(_convert.from_dict(Config, row["config"]))
    latency = time.perf_counter() - start
    return {**row, "estimate": est.to_dict()["terms"], "estimate_bytes": est.total_bytes,
            "error": est.total_bytes / row["compiled_bytes"] - 1, "latency_s": latency}


#: what a configuration is grouped by in the breakdown: a name and the group of a raw config
FACTORS: dict[str, Callable[[dict], str]] = {
    "model": lambda raw: raw["model"]["kind"],
    "stack": lambda raw: raw["model"].get("stack", "-"),
    "sharding": lambda raw: raw.get("sharding", "none"),
    "remat": lambda raw: raw.get("remat", "none"),
    "precision": lambda raw: raw.get("precision", "fp32"),
    "optimizer": lambda raw: raw.get("optimizer", "adamw"),
    "microbatches": lambda raw: str(raw.get("data", {}).get("microbatches", 1)),
}


def breakdown(rows: list[dict]) -> dict[str, dict[str, tuple[int, int, float]]]:
    """For each factor, each of its groups: ``(rows, rows within +-10 %, median error)``.
    Each factor's groups partition the rows."""
    out: dict[str, dict[str, tuple[int, int, float]]] = {}
    for factor, group_of in FACTORS.items():
        groups: dict[str, list[float]] = {}
        for r in rows:
            groups.setdefault(group_of(r["config"]), []).append(r["error"])
        out[factor] = {g: (len(e), sum(abs(x) <= 0.10 for x in e), statistics.median(e))
                       for g, e in sorted(groups.items())}
    return out


def summarize(rows: list[dict], worst: int) -> None:
    """The error distribution per group, the latency, and the worst rows with why."""
    for group in ("cpu", "tpu"):
        errs = [r["error"] for r in rows if r["group"] == group]
        if not errs:
            continue
        within = sum(abs(e) <= 0.10 for e in errs) / len(errs)
        q = statistics.quantiles(errs, n=20) if len(errs) > 1 else errs * 19
        print(f"{group}: {len(errs)} configurations, within +-10%: {within:.0%}; error median "
              f"{statistics.median(errs):+.1%}, 5%..95% {q[0]:+.1%}..{q[-1]:+.1%}, "
              f"min {min(errs):+.1%}, max {max(errs):+.1%}; mean |error| "
              f"{statistics.fmean(abs(e) for e in errs):.1%}")
    small = [r for r in rows if r["compiled_bytes"] < 2 * 2**20]
    if small:  # where a few hundred KiB of XLA's small buffers are more than 10 %
        ok = sum(abs(r["error"]) <= 0.10 for r in small)
        print(f"{len(small)} configurations under 2 MiB, {ok} of them within +-10%")
    print("within +-10% by factor (rows, median error):")
    for factor, groups in breakdown(rows).items():
        print(f"  {factor:12s} " + "; ".join(
            f"{g} {ok}/{n} ({med:+.1%})" for g, (n, ok, med) in groups.items()))
    lat = sorted(r["latency_s"] for r in rows)
    print(f"estimate latency: median {1e3 * statistics.median(lat):.1f} ms, max "
          f"{1e3 * lat[-1]:.1f} ms (first call includes imports' warm-up)")
    print(f"worst {worst}:")
    for r in sorted(rows, key=lambda r: -abs(r["error"]))[:worst]:
        print(f"  {r['error']:+7.1%} {_short(r['config'])}\n           why: {why(r)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--n", type=int, default=100, help="configurations on cpu / cpu:8")
    ap.add_argument("--tpu", type=int, default=20, help="configurations on the TPU target")
    ap.add_argument("--tpu-target", default="tpu:v5e:2x2")
    ap.add_argument("--tpu-shapes", choices=("planning", "small"), default="planning",
                    help="planning: the sizes a TPU run is planned at (hundreds of MiB to GiB "
                    "per chip); small: the CPU draw's shapes")
    ap.add_argument("--only", choices=("cpu", "tpu"), default=None,
                    help="compile only this group's configurations (all are drawn, so a "
                    "seed's rows are the same as in a full run)")
    ap.add_argument("--worst", type=int, default=10)
    ap.add_argument("--out", default=None, help="write every row as JSON lines here")
    ap.add_argument("--rescore", default=None, metavar="ROWS",
                    help="estimate again the configurations of a previous run's --out file "
                    "and compare with its compiled figures (nothing drawn or compiled but the "
                    "worst rows' explain)")
    args = ap.parse_args(argv)
    if args.rescore:
        with open(args.rescore) as f:
            rows = [rescore(json.loads(line)) for line in f if line.strip()]
        print(f"{args.rescore}: {len(rows)} rows estimated again", flush=True)
    else:
        rows = collect(args)
    if args.out:
        results.replace_text(Path(args.out), "".join(json.dumps(r) + "\n" for r in rows))
    summarize(rows, args.worst)
    return 0


def collect(args: argparse.Namespace) -> list[dict]:
    """Draw the configurations, estimate and compile each."""
    rng = random.Random(args.seed)
    draws = [(draw(rng), "cpu") for _ in range(args.n)]
    tpu_draw = draw_planning if args.tpu_shapes == "planning" else draw
    draws += [(tpu_draw(rng, args.tpu_target), "tpu") for _ in range(args.tpu)]
    print(f"seed {args.seed}: {args.n} configurations on cpu/cpu:8, {args.tpu} on "
          f"{args.tpu_target} ({args.tpu_shapes} shapes)"
          + (f"; compiling the {args.only} ones only" if args.only else ""), flush=True)
    rows = []
    for i, (raw, group) in enumerate(draws):
        if args.only and group != args.only:
            continue
        try:
            row = {**measure(raw), "group": group}
        except Exception as e:  # noqa: BLE001 - a configuration that cannot compile is listed
            print(f"  [{i}] skipped ({type(e).__name__}: {str(e).splitlines()[0][:120]})")
            continue
        rows.append(row)
        print(f"  [{i}] {row['error']:+7.1%}  est {row['estimate_bytes'] / 2**20:9.1f} MiB  "
              f"compiled {row['compiled_bytes'] / 2**20:9.1f} MiB  {_short(raw)}", flush=True)
    return rows


if __name__ == "__main__":
    sys.exit(main())
