#!/usr/bin/env bash
# Compile time of one experiment at two revisions of jaxmem: same machine, same run, the two
# revisions alternating, each run a fresh process of the project's .venv.
#
#   benchmarks/compare_revisions.sh BEFORE [AFTER=HEAD] [EXPERIMENT=experiments/plan_v5e.yaml] [ROUNDS=2]
#
# Prints, per run and configuration, trace+lower seconds, XLA compile seconds and the process's
# wall time; paste the lines into benchmarks/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
before=${1:?usage: $0 BEFORE [AFTER] [EXPERIMENT] [ROUNDS]}
after=${2:-HEAD}
experiment=${3:-experiments/plan_v5e.yaml}
rounds=${4:-2}
python=${PYTHON:-$PWD/.venv/bin/python}
work=$(mktemp -d /tmp/jaxmem-revisions.XXXXXX)
trap 'for t in "$work"/tree-*; do git worktree remove --force "$t" 2>/dev/null || true; done; rm -rf "$work"' EXIT
for rev in "$before" "$after"; do
  git worktree add --quiet --detach "$work/tree-$rev" "$rev"
done
echo "# $(date -I), $(nproc) CPU cores, $("$python" -c 'import jax; print("jax", jax.__version__)'), $experiment"
for round in $(seq "$rounds"); do
  for rev in "$before" "$after"; do
    tree="$work/tree-$rev"
    out="$work/out-$rev-$round"
    start=$(date +%s.%N)
    (cd "$tree" && JAX_PLATFORMS=cpu PYTHONPATH="$tree" "$python" -m jaxmem.cli run "$experiment" \
       --out "$out" --no-progress > "$work/log" 2>&1) || { cat "$work/log"; exit 1; }
    wall=$(echo "$(date +%s.%N) - $start" | bc)
    "$python" - "$out/results.jsonl" "$rev" "$round" "$wall" "$tree" <<'PY'
import json, sys
path, rev, rnd, wall, tree = sys.argv[1:]
for line in open(path):
    r = json.loads(line)
    c = r.get("compiled", {})
    print(f"round {rnd} | {rev[:10]} | {r['name']} | {r['status']} | lower {c.get('lower_seconds', 0):.2f} s"
          f" | compile {c.get('compile_seconds', 0):.2f} s | process wall {float(wall):.1f} s")
PY
  done
done
