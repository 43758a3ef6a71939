"""Result files: ``results.jsonl`` (one nested JSON object per configuration) and ``results.csv``
(the same, flattened to dotted column names). Each file is written whole or not at all: both are
written to temporary files first, then renamed into place.

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
import secrets
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


def _write_temp(path: Path, text: str) -> str:
    """``text`` in a new hidden file beside ``path``, created like any file the user writes
    (mode 0666 less the umask; ``tempfile.mkstemp`` would make it 0600)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    else:
        raise FileExistsError(f"no free temporary name beside {path}")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    except BaseException:
        os.unlink(tmp)
        raise
    return str(tmp)


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
    temps: list[str] = []
    try:
        for path, text in zip(paths, (jsonl, buf.getvalue()), strict=True):
            temps.append(_write_temp(path, text))
    except BaseException:
        for tmp in temps:
            os.unlink(tmp)
        raise
    for tmp, path in zip(temps, paths, strict=True):
        os.replace(tmp, path)
    return paths


def read(path: str | os.PathLike) -> list[Record]:
    """Records from a ``results.jsonl`` file or the folder holding one.

    Raises:
      OSError: the file cannot be read.
      ValueError: a line is not a jaxmem result row.
    """
    p = Path(path)
    if p.is_dir():
        p = p / JSONL
    records = []
    with open(p, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            row = json.loads(line)
            missing = [k for k in ("experiment", "index", "name", "mode", "status")
                       if not isinstance(row, dict) or k not in row]
            if missing:
                raise ValueError(f"line {number} is not a jaxmem result row "
                                 f"(missing {', '.join(missing)})")
            records.append(Record.from_dict(row))
    return records
