"""Result files: ``results.jsonl`` (one nested JSON object per configuration) and ``results.csv``
(the same, flattened to dotted column names). Both are written whole or not at all.

Example:
  >>> import tempfile
  >>> from jaxmem.record import Record
  >>> from jaxmem import results
  >>> out = tempfile.mkdtemp()
  >>> _ = results.write(out, [Record("e", 0, "base", "compile", "ok", compiled={"temp_bytes": 1})])
  >>> results.read(out)[0].get("compiled.temp_bytes")
  1
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from jaxmem.record import FIELDS, Record

JSONL = "results.jsonl"
CSV = "results.csv"


def columns(records: Sequence[Record]) -> list[str]:
    """CSV columns: the documented fields in :data:`FIELDS` order, then ``config.*`` ones."""
    present: dict[str, None] = {}
    for r in records:
        present.update(dict.fromkeys(r.flat()))
    fixed = [k for k in FIELDS if k in present]
    extra = [k for k in present if k not in FIELDS]
    return fixed + extra


def _atomic_write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write(out_dir: str | os.PathLike, records: Sequence[Record]) -> list[Path]:
    """Writes both files into ``out_dir`` (created if needed); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = "".join(json.dumps(r.to_dict()) + "\n" for r in records)
    buf = io.StringIO()
    cols = columns(records)
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        row = {k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
               for k, v in r.flat().items()}
        writer.writerow(row)
    paths = [out / JSONL, out / CSV]
    _atomic_write(paths[0], jsonl)
    _atomic_write(paths[1], buf.getvalue())
    return paths


def read(path: str | os.PathLike) -> list[Record]:
    """Records from a ``results.jsonl`` file or the folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / JSONL
    with open(p, encoding="utf-8") as f:
        return [Record.from_dict(json.loads(line)) for line in f if line.strip()]
