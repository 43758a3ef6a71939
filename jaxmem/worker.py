"""Worker processes: they measure configurations so that the parent never dies with them.

* Run mode, one configuration: ``main([CONFIG.json, RESULT.json])`` (``jaxmem.isolate``):
  runs it with real arrays (``jaxmem.runtime``) and answers with the record sections, or the
  failure, in RESULT.json; the traceback goes to stderr.
* Compile mode, many configurations: ``main(["--serve", ...])`` (``jaxmem.pool``): imports
  once, then compiles one configuration per request read from a pipe and answers on another,
  until the pipe closes.

Both are started by ``jaxmem._spawn.command``, which watches the parent from the worker's first
instruction: when the parent is gone (killed, even with SIGKILL) the worker removes its
temporary folder and exits at once, whatever it was doing.
"""

from __future__ import annotations

import argparse
import signal
import sys
from multiprocessing.connection import Connection
from typing import Any


def run_one(config_path: str, result_path: str) -> int:
    """Run mode: one configuration with real arrays."""
    from jaxmem import isolate, runtime, targets
    from jaxmem.distributed import Cluster
    from jaxmem.errors import Unsupported
    from jaxmem.failures import describe_failure
    from jaxmem.setup import resolve

    try:
        config, artifacts = isolate.read_request(config_path)
        setup = resolve(config)
        targets.ensure_cpu_devices([setup.target])  # before anything starts JAX's backends
        cluster = Cluster.from_env()
        if cluster is not None:
            cluster.initialize()
        sections = runtime.run(setup, artifacts)
    except Unsupported as e:
        isolate.write_result(result_path, error=e)
        return 1
    except Exception as e:
        print(describe_failure(e), file=sys.stderr)
        isolate.write_result(result_path, error=e)
        return 1
    isolate.write_result(result_path, sections)
    return 0


def serve(read_fd: int, write_fd: int, cpu_devices: int, cache_dir: str | None) -> int:
    """Compile mode: answers ``(index, config dict, mode)`` requests with ``(index, status,
    error, sections)`` until the request pipe closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides what Ctrl-C ends
    import jax

    from jaxmem import _convert, cache
    from jaxmem.config import Config
    from jaxmem.failures import describe_failure, one_line_error
    from jaxmem.measure import measure_setup
    from jaxmem.setup import resolve

    if cpu_devices:
        jax.config.update("jax_num_cpu_devices", cpu_devices)
    if cache_dir:
        cache.enable(cache_dir)
    requests, answers = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    while True:
        try:
            index, config_dict, mode = requests.recv()
        except EOFError:
            return 0
        answer: tuple[Any, ...]
        try:
            setup = resolve(_convert.from_dict(Config, config_dict))
            setup.check(mode, devices=False)  # what the parent left to the model's own code
            answer = (index, *measure_setup(setup, mode))
        except Exception as e:  # bad input only the model's code shows: this row's error
            print(describe_failure(e), file=sys.stderr, flush=True)
            answer = (index, "error", one_line_error(e), {})
        sys.stdout.flush()
        sys.stderr.flush()
        answers.send(answer)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--serve":
        parser = argparse.ArgumentParser(prog="python -m jaxmem.worker --serve")
        parser.add_argument("--serve", action="store_true")
        for flag in ("--read-fd", "--write-fd", "--cpu-devices"):
            parser.add_argument(flag, type=int, required=flag != "--cpu-devices", default=0)
        parser.add_argument("--cache-dir", default=None)
        a = parser.parse_args(argv)
        return serve(a.read_fd, a.write_fd, a.cpu_devices, a.cache_dir)
    config_path, result_path = argv
    return run_one(config_path, result_path)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
