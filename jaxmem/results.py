"""Result files: ``results.jsonl`` (one nested JSON object per configuration) and ``results.csv``
(the same, flattened to dotted column names).

A run appends each configuration's row to ``results.jsonl`` as it finishes, one whole line at a
time, flushed and fsync'd, so a run that is killed keeps every finished row; ``results.csv`` is
regenerated from ``results.jsonl`` (written whole, then renamed into place) after each row, and
lags it by at most the row being written. A lock file keeps a second run out of the folder.

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

import contextlib
import csv
import fcntl
import io
import json
import os
import secrets
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from jaxmem.config import MODES
from jaxmem.errors import ConfigError
from jaxmem.record import FIELDS, STATUSES, Record

JSONL = "results.jsonl"
CSV = "results.csv"
LOCK = ".jaxmem.lock"


def columns(records: Sequence[Record]) -> list[str]:
    """CSV columns: the documented fields in :data:`FIELDS` order, then ``config.*`` ones."""
    present: dict[str, None] = {}
    for r in records:
        present.update(dict.fromkeys(r.flat()))
    fixed = [k for k in FIELDS if k in present]
    extra = [k for k in present if k not in FIELDS]
    return fixed + extra


def _line(record: Record) -> str:
    return json.dumps(record.to_dict(), allow_nan=False) + "\n"


def _csv_text(records: Sequence[Record]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns(records), extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow({k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
                         for k, v in r.flat().items()})
    return buf.getvalue()


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
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(tmp)
        raise
    return str(tmp)


def replace_text(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` whole: a temporary file beside it, renamed into place (a
    reader never sees half a file)."""
    os.replace(_write_temp(path, text), path)


def write(out_dir: str | os.PathLike, records: Sequence[Record]) -> list[Path]:
    """Writes both files whole into ``out_dir`` (created if needed); returns their paths. Each
    is written to a temporary file first and renamed into place."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    texts = ("".join(_line(r) for r in records), _csv_text(records))
    paths = [out / JSONL, out / CSV]
    temps: list[str] = []
    try:
        for path, text in zip(paths, texts, strict=True):
            temps.append(_write_temp(path, text))
    except BaseException:
        for tmp in temps:
            os.unlink(tmp)
        raise
    for tmp, path in zip(temps, paths, strict=True):
        os.replace(tmp, path)
    return paths


# ----------------------------------------------------------------------------------- reading

_SECTIONS = ("config", "env", "analytic", "estimate", "compiled", "runtime", "doctor")


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_row(row: Any) -> str | None:
    """Why ``row`` is not a row jaxmem writes, or None."""
    if not isinstance(row, dict):
        return "not a JSON object"
    types = {"experiment": str, "index": int, "name": str, "mode": str, "status": str}
    missing = [k for k in types if k not in row]
    if missing:
        return f"missing {', '.join(missing)}"
    for k, t in types.items():
        if not isinstance(row[k], t) or isinstance(row[k], bool):
            return f"{k} is not a {t.__name__}"
    if row["mode"] not in MODES:
        return f"mode {row['mode']!r} is not one of {', '.join(MODES)}"
    if row["status"] not in STATUSES:
        return f"status {row['status']!r} is not one of {', '.join(STATUSES)}"
    if not isinstance(row.get("error"), (str, type(None))):
        return "error is not a string"
    notes = row.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        return "notes is not a list of strings"
    for section in _SECTIONS:
        if not isinstance(row.get(section, {}), dict):
            return f"{section} is not an object"
    for section in ("env", "analytic", "estimate", "compiled", "runtime", "doctor"):
        for k, v in row.get(section, {}).items():
            if isinstance(v, dict):
                return f"{section}.{k} is an object"
    return None


def _rows(path: Path) -> Iterator[tuple[int, Record]]:
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line, parse_constant=_no_constants)
            except ValueError as e:
                raise ValueError(f"line {number} is not JSON ({e})") from None
            problem = _check_row(row)
            if problem:
                raise ValueError(f"line {number} is not a jaxmem result row ({problem})")
            yield number, Record.from_dict(row)


def read(path: str | os.PathLike) -> list[Record]:
    """Records from a ``results.jsonl`` file or the folder holding one, in file order.

    Raises:
      OSError: the file cannot be read.
      ValueError: a line is not a row jaxmem writes (the message names the line).
    """
    p = Path(path)
    if p.is_dir():
        p = p / JSONL
    try:
        return [record for _, record in _rows(p)]
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 text (byte {e.start})") from None


# ----------------------------------------------------------------------------------- writing

def check_out(out: str | os.PathLike) -> Path:
    """Raises ConfigError (path ``--out``) unless ``out`` is, or can become, a folder this
    process can write; creates nothing."""
    path = Path(out)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError("--out", f"{probe} is a file, not a folder", value=str(out))
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError("--out", f"{probe} is not writable", value=str(out))
    return path


class Writer:
    """Appends rows to one results folder for the length of a run (a context manager).

    Args:
      out: the folder (created if needed).
      resume: keep the folder's rows; :meth:`done` says which configurations have one.
      force: delete the folder's results first.

    Raises:
      ConfigError: another run holds the folder's lock, or it holds results and neither
        ``resume`` nor ``force`` says what to do with them, or it is not a folder.
    """

    def __init__(self, out: str | os.PathLike, *, resume: bool = False, force: bool = False):
        self.out = check_out(out)
        self.resume, self.force = resume, force
        self._lock_fd: int | None = None
        self._fd: int | None = None
        self.rows: list[Record] = []

    def __enter__(self) -> Writer:
        created = not self.out.exists()
        self.out.mkdir(parents=True, exist_ok=True)
        try:
            self._open()
        except BaseException:
            self.close()
            if created:  # leave nothing behind
                with contextlib.suppress(OSError):
                    (self.out / LOCK).unlink(missing_ok=True)
                    self.out.rmdir()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _open(self) -> None:
        self._lock_fd = os.open(self.out / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError("--out", "another jaxmem run is writing to this folder (it "
                              f"holds {LOCK}); wait for it or choose another --out",
                              value=str(self.out)) from None
        jsonl = self.out / JSONL
        if jsonl.exists() and jsonl.stat().st_size:
            if self.force:
                for name in (JSONL, CSV):
                    (self.out / name).unlink(missing_ok=True)
            elif not self.resume:
                raise ConfigError("--out", "holds the results of an earlier run; --resume "
                                  "measures only the configurations without a row, --force "
                                  "replaces them", value=str(self.out))
            else:
                self.rows = self._existing(jsonl)
        self._fd = os.open(jsonl, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)

    def _existing(self, jsonl: Path) -> list[Record]:
        """The rows already there; an unfinished last line (a write cut by a crash) is cut."""
        data = jsonl.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(jsonl, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
        try:
            return read(jsonl)
        except ValueError as e:
            raise ConfigError("--out", f"{JSONL} is damaged ({e}); --force replaces it",
                              value=str(self.out)) from None

    def done(self, key: str) -> Record | None:
        """The existing row measured with this key (``resume``), if any."""
        return next((r for r in self.rows if r.key == key), None)

    def append(self, record: Record) -> None:
        """One whole row, flushed to disk; then the CSV regenerated."""
        assert self._fd is not None, "Writer is not open"
        os.write(self._fd, _line(record).encode("utf-8"))
        os.fsync(self._fd)
        self.rows.append(record)
        replace_text(self.out / CSV, _csv_text(self.rows))

    def finish(self, keys: Sequence[str]) -> None:
        """Puts the rows in ``keys``' order (a sweep's grid order; rows finish in any order
        when several workers measure), any other rows after them; each row's line is kept
        byte for byte. Both files are replaced whole."""
        jsonl = self.out / JSONL
        lines = [ln for ln in jsonl.read_text(encoding="utf-8").splitlines(keepends=True)
                 if ln.strip()]
        by_key = dict(zip((r.key for r in self.rows), lines, strict=True))
        order = [k for k in dict.fromkeys(keys) if k in by_key]
        order += [k for k in by_key if k not in set(order)]
        replace_text(jsonl, "".join(by_key[k] for k in order))
        rows = {r.key: r for r in self.rows}
        self.rows = [rows[k] for k in order]
        replace_text(self.out / CSV, _csv_text(self.rows))

    def close(self) -> None:
        """Regenerates the CSV from every row on disk (the JSONL is the record, even when an
        interrupt came between a row and its CSV) and releases the lock."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
            rows = read(self.out / JSONL)
            if rows:
                replace_text(self.out / CSV, _csv_text(rows))
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None
