"""Run mode's process boundary: one configuration, one fresh worker process.

The parent writes the configuration as JSON, starts ``python -m jaxmem.worker CONFIG RESULT``
with the run's allocator settings in its environment, and reads back either the record
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
import sys
import tempfile
from typing import Any

from jaxmem import _convert
from jaxmem.config import Config
from jaxmem.errors import Unsupported, one_line_error

WORKER = "jaxmem.worker"


def read_config(path: str) -> Config:
    """The configuration a parent wrote for this worker."""
    with open(path, encoding="utf-8") as f:
        return _convert.from_dict(Config, json.load(f))


def write_result(path: str | os.PathLike, sections: dict[str, Any] | None = None,
                 error: BaseException | None = None) -> None:
    """What the worker answers: the record sections, or the failure (one line)."""
    if error is None:
        payload: dict[str, Any] = {"sections": sections}
    else:
        payload = {"error": str(error) if isinstance(error, Unsupported)
                   else one_line_error(error)}
        if isinstance(error, Unsupported):
            payload["unsupported"] = True
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f)


def run_in_subprocess(config: Config, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Runs the worker on ``config``; returns its record sections.

    Raises:
      Unsupported: the backend cannot do what the configuration asks.
      RuntimeError: the worker failed, timed out, or died without answering.
    """
    with tempfile.TemporaryDirectory(prefix="jaxmem-") as tmp:
        request, result = os.path.join(tmp, "config.json"), os.path.join(tmp, "result.json")
        with open(request, "w", encoding="utf-8") as f:
            json.dump(_convert.to_dict(config), f)
        try:
            proc = subprocess.run(
                [sys.executable, "-m", WORKER, request, result],
                capture_output=True, text=True, timeout=config.measure.timeout_s,
                env={**os.environ, **config.measure.allocator_env(), **(env or {})},
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"worker timed out after {config.measure.timeout_s:g} s") from None
        if not os.path.exists(result):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise RuntimeError(f"worker exited with {proc.returncode}: " + " | ".join(tail))
        with open(result, encoding="utf-8") as f:
            payload = json.load(f)
    if payload.get("error"):
        raise (Unsupported if payload.get("unsupported") else RuntimeError)(payload["error"])
    return payload["sections"]
