"""Regenerates the README's measured parts from real runs: ``make readme``.

* the demo table between ``<!-- demo:start -->`` and ``<!-- demo:end -->``: what
  ``make demo`` (``experiments/quickstart.yaml``) measures, with the date, machine and versions
  (tests/test_readme.py checks it against a fresh run of the same jax version);
* the results schema between ``<!-- fields:start -->`` and ``<!-- fields:end -->``, from
  ``jaxmem.record.FIELDS``.

    python scripts/update_readme.py [--check]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DEMO = "experiments/quickstart.yaml"
#: run-to-run timings are left out of the README's table: they cannot be checked
HIDE = ("compiled.compile_seconds",)


def block(text: str, name: str) -> str:
    """The text between the ``name`` markers."""
    m = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", text, flags=re.S)
    if not m:
        raise SystemExit(f"README.md has no {name} markers")
    return m[1]


def replace_block(text: str, name: str, body: str) -> str:
    return re.sub(rf"(<!-- {name}:start -->\n).*?(<!-- {name}:end -->)",
                  lambda m: m[1] + body + m[2], text, count=1, flags=re.S)


def fields_table() -> str:
    from jaxmem.record import FIELDS

    lines = ["| field | meaning |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in FIELDS.items()]
    return "\n".join(lines) + "\n"


def demo_table(records) -> str:
    from jaxmem.report import render_text

    return render_text(records, title=f"quickstart: {len(records)} configurations", hide=HIDE)


def demo_block() -> str:
    import jax

    import jaxmem

    t0 = time.perf_counter()
    records = jaxmem.run(jaxmem.Experiment.from_yaml(ROOT / DEMO))
    seconds = time.perf_counter() - t0
    header = (f"Measured {datetime.date.today()} on {platform.machine()} with "
              f"{os.cpu_count()} CPU cores, jax {jax.__version__}, in {seconds:.0f} s "
              f"(`make readme` regenerates this; the compile-time column is left out):")
    return f"{header}\n\n```\n{demo_table(records)}\n```\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fields-only", action="store_true",
                        help="only the schema table (no compile)")
    args = parser.parse_args()
    text = README.read_text(encoding="utf-8")
    text = replace_block(text, "fields", fields_table())
    if not args.fields_only:
        text = replace_block(text, "demo", demo_block())
    README.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
