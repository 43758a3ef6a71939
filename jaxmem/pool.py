"""Compile mode's worker pool: configurations measured in separate, reusable processes.

Each worker (``jaxmem.worker``, serving) pays JAX's and jaxmem's imports once, then
compiles one configuration per request. The parent never dies with a worker:

* a configuration that runs past ``measure.timeout_s`` is a ``timeout`` row; its worker is
  killed and a fresh one takes the next configuration;
* a worker that dies (libtpu's abort on a failed check, a segfault, the kernel's OOM killer) is
  a ``crashed`` row naming the signal, its likely cause and the worker's last telling log line;
* closing the pool (also on Ctrl-C) kills the workers; a worker whose parent disappears ends
  itself and removes the pool's folder (``jaxmem.worker.watch_parent``).

Workers write their output to ``worker-<n>.log`` in the pool's temporary folder.

Example:
  >>> from jaxmem.pool import usable_cores
  >>> usable_cores() >= 1
  True
"""

from __future__ import annotations

import collections
import dataclasses
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from jaxmem._spawn import command
from jaxmem.failures import describe_exit
from jaxmem.isolate import last_words

Task = tuple[int, dict[str, Any], str, float]  # index, config dict, mode, timeout (s)
Answer = tuple[int, str, str | None, dict[str, Any]]  # index, status, error, sections


def usable_cores() -> int:
    """CPU cores this process may use (its affinity mask), the default pool size."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclasses.dataclass
class _Worker:
    number: int
    proc: subprocess.Popen
    requests: Connection
    answers: Connection
    log: Path
    task: Task | None = None
    started: float = 0.0


class CompilePool:
    """``workers`` compile processes; use as a context manager.

    Args:
      workers: processes at most (started as configurations need them).
      cpu_devices: CPU devices each worker makes before JAX starts (``cpu:N`` targets).
      cache_dir: JAX's persistent compilation cache folder for the workers, or None.
    """

    def __init__(self, workers: int, *, cpu_devices: int = 0, cache_dir: str | None = None):
        self.size = max(1, workers)
        self.cpu_devices = cpu_devices
        self.cache_dir = cache_dir
        self.folder = Path(tempfile.mkdtemp(prefix="jaxmem-pool-"))
        self._workers: list[_Worker] = []
        self._started = 0

    def __enter__(self) -> CompilePool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _start(self) -> _Worker:
        self._started += 1
        req_r, req_w = os.pipe()
        ans_r, ans_w = os.pipe()
        log = self.folder / f"worker-{self._started}.log"
        env = {**os.environ, "XLA_PYTHON_CLIENT_PREALLOCATE": "false"}  # compile-only use
        cmd = command(str(self.folder), "--serve", "--read-fd", str(req_r), "--write-fd",
                      str(ans_w), "--cpu-devices", str(self.cpu_devices))
        if self.cache_dir:
            cmd += ["--cache-dir", self.cache_dir]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, pass_fds=(req_r, ans_w), env=env,
                                    start_new_session=True)  # Ctrl-C reaches the parent only
        os.close(req_r)
        os.close(ans_w)
        worker = _Worker(self._started, proc, Connection(req_w, readable=False),
                         Connection(ans_r, writable=False), log)
        self._workers.append(worker)
        return worker

    def _discard(self, worker: _Worker) -> None:
        if worker.proc.poll() is None:
            worker.proc.kill()
        worker.proc.wait()
        for conn in (worker.requests, worker.answers):
            conn.close()
        self._workers.remove(worker)

    def _death(self, worker: _Worker) -> str:
        code = worker.proc.wait()
        try:
            log = worker.log.read_text(errors="replace")
        except OSError:
            log = ""
        return f"the compile worker {describe_exit(code)}" + last_words(log)

    def map(self, tasks: Iterable[Task]) -> Iterator[Answer]:
        """Answers for ``tasks``, in the order they finish."""
        pending = collections.deque(tasks)
        while pending or any(w.task for w in self._workers):
            idle = [w for w in self._workers if w.task is None]
            while pending and (idle or len(self._workers) < self.size):
                worker = idle.pop() if idle else self._start()
                worker.task = pending.popleft()
                worker.started = time.monotonic()
                try:
                    worker.requests.send(worker.task[:3])
                except (BrokenPipeError, OSError):  # it died while idle: a fresh one
                    task = worker.task
                    self._discard(worker)
                    pending.appendleft(task)
            busy = [w for w in self._workers if w.task is not None]
            if not busy:
                continue
            deadline = min(w.started + w.task[3] for w in busy)
            ready = wait([w.answers for w in busy], timeout=max(0.0, deadline - time.monotonic()))
            now = time.monotonic()
            for worker in busy:
                index, _, _, timeout = worker.task
                if worker.answers in ready:
                    try:
                        answer = worker.answers.recv()
                    except (EOFError, OSError):
                        error = self._death(worker)
                        self._discard(worker)
                        yield index, "crashed", error, {}
                        continue
                    worker.task = None
                    yield answer
                elif now >= worker.started + timeout:
                    self._discard(worker)
                    yield (index, "timeout", f"the compile ran past measure.timeout_s = "
                           f"{timeout:g} s; its worker was stopped", {})

    def close(self) -> None:
        """Ends every worker and removes the pool's folder."""
        for worker in list(self._workers):
            self._discard(worker)
        shutil.rmtree(self.folder, ignore_errors=True)
