"""Wall time of a whole `jaxmem run` sweep: compile workers, and the persistent cache.

    python benchmarks/sweep_wall.py EXPERIMENT.yaml [--set KEY=VALUE ...] [--workers 1 2]
        [--cache-runs 2]

Runs the CLI as a user would (a fresh process per run, results into a temporary folder), once
per ``--workers`` value with the persistent compilation cache off, then ``--cache-runs`` times
with ``--workers`` set to the last value and the cache on in a fresh folder (the first of those
fills it, the others find it warm). Prints a Markdown table of wall seconds and each run's
ratio to the first, plus the rows' statuses and cache hits, to paste into
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax


def _run(experiment: str, overrides: list[str], workers: int, cache_dir: str | None,
         out: Path) -> tuple[float, list[dict]]:
    cmd = [sys.executable, "-m", "jaxmem.cli", "run", experiment, "--out", str(out),
           "--workers", str(workers), "--no-progress", "--force"]
    cmd += [a for o in overrides for a in ("--set", o)]
    cmd += ["--cache", "--cache-dir", cache_dir] if cache_dir else ["--no-cache"]
    env = {**os.environ, "JAXMEM_CACHE": "1"}
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    return wall, rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cache-runs", type=int, default=2)
    args = parser.parse_args()

    print(f"# {Path(args.experiment).stem}: sweep wall time, {datetime.date.today()}, "
          f"{os.cpu_count()} CPU cores, jax {jax.__version__}, Python {platform.python_version()}")
    print("# command: python benchmarks/sweep_wall.py " + args.experiment
          + "".join(f" --set '{o}'" for o in args.overrides)
          + " --workers " + " ".join(map(str, args.workers))
          + f" --cache-runs {args.cache_runs}")
    print()
    print("| run | workers | cache | wall s | x first | rows (status) | cache hits |")
    print("|---|---|---|---|---|---|---|")
    first = None
    with tempfile.TemporaryDirectory() as tmp:
        plans = [(f"workers={w}", w, None) for w in args.workers]
        cache_dir = str(Path(tmp) / "cache")
        plans += [(("cold" if i == 0 else "warm") + " cache", args.workers[-1], cache_dir)
                  for i in range(args.cache_runs)]
        for i, (label, workers, cache) in enumerate(plans):
            wall, rows = _run(args.experiment, args.overrides, workers, cache,
                              Path(tmp) / f"out{i}")
            first = first or wall
            statuses: dict[str, int] = {}
            for r in rows:
                statuses[r["status"]] = statuses.get(r["status"], 0) + 1
            hits = sum(bool((r.get("compiled") or {}).get("cache_hit")) for r in rows)
            counts = ", ".join(f"{k} {v}" for k, v in statuses.items())
            print(f"| {label} | {workers} | {'on' if cache else 'off'} | {wall:.1f} | "
                  f"{wall / first:.2f} | {len(rows)} ({counts}) | {hits} |", flush=True)


if __name__ == "__main__":
    main()
