"""Run mode's process boundary: one configuration, one fresh worker process.

The parent writes the configuration as JSON, starts a worker on it (``jaxmem.worker``) with the
run's allocator settings in its environment, and reads back either the record
sections or the failure. Only the worker starts the accelerator, so its device peak belongs to
this configuration alone.

Example:
  >>> import json, pathlib, tempfile
  >>> from jaxmem import isolate
  >>> path = pathlib.Path(tempfile.mkdtemp()) / "result.json"
  >>> isolate.write_result(path, error=ValueError("no"))
  >>> json.loads(path.read_text())
  {'error': 'ValueError: no'}
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from typing import Any

from jaxmem import _convert, _spawn
from jaxmem.config import Config
from jaxmem.errors import Unsupported
from jaxmem.failures import Crashed, TimedOut, classify, describe_exit


def read_request(path: str) -> tuple[Config, str | None]:
    """The configuration a parent wrote for this worker, and the folder for what the run
    leaves behind (profiles, checkpoints), if it gave one."""
    with open(path, encoding="utf-8") as f:
        request = json.load(f)
    return _convert.from_dict(Config, request["config"]), request.get("artifacts")


def write_result(path: str | os.PathLike, sections: dict[str, Any] | None = None,
                 error: BaseException | None = None) -> None:
    """What the worker answers: the record sections, or the failure (one line)."""
    if error is None:
        payload: dict[str, Any] = {"sections": sections}
    else:
        payload = {"error": str(error) if isinstance(error, Unsupported)
                   else classify(error).error}
        if isinstance(error, Unsupported):
            payload["unsupported"] = True
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f)


def run_in_subprocess(config: Config, env: dict[str, str] | None = None,
                      artifacts: str | os.PathLike | None = None) -> dict[str, Any]:
    """Runs the worker on ``config``; returns its record sections. ``artifacts``: the folder
    the run writes its profiles and checkpoints into (created by the worker when it does).

    Raises:
      Unsupported: the backend cannot do what the configuration asks.
      TimedOut: the worker ran past ``measure.timeout_s``.
      Crashed: the worker died without answering (the row names the signal).
      RuntimeError: the worker failed (its one-line error).
    """
    with tempfile.TemporaryDirectory(prefix="jaxmem-run-") as tmp:
        request, result = os.path.join(tmp, "config.json"), os.path.join(tmp, "result.json")
        with open(request, "w", encoding="utf-8") as f:
            json.dump({"config": _convert.to_dict(config),
                       "artifacts": None if artifacts is None else os.fspath(artifacts)}, f)
        try:
            proc = subprocess.run(
                _spawn.command(tmp, request, result),
                capture_output=True, text=True, timeout=config.measure.timeout_s,
                env={**os.environ, **config.measure.allocator_env(), **(env or {})},
            )
        except subprocess.TimeoutExpired:
            raise TimedOut(f"worker timed out after {config.measure.timeout_s:g} s "
                           "(measure.timeout_s)") from None
        if not os.path.exists(result):
            raise Crashed(f"worker {describe_exit(proc.returncode)}"
                          + last_words(proc.stderr or proc.stdout))
        with open(result, encoding="utf-8") as f:
            payload = json.load(f)
    if payload.get("error"):
        raise (Unsupported if payload.get("unsupported") else RuntimeError)(payload["error"])
    return payload["sections"]


def last_words(log: str, lines: int = 3) -> str:
    """The lines of a dead process's output that say why: a failed check, a fatal message,
    or else its last lines (as ``: a | b``)."""
    text = [ln.strip() for ln in (log or "").splitlines() if ln.strip()]
    telling = [ln for ln in text if "Check failed" in ln or ln.startswith("F")
               and ln[1:5].isdigit() or "Fatal" in ln or "Error" in ln]
    picked = (telling or text)[-lines:]
    return (": " + " | ".join(ln[:300] for ln in picked)) if picked else ""
