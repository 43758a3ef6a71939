"""Run-mode worker: ``python -m jaxmem.worker CONFIG.json RESULT.json`` (``jaxmem.isolate``).

Runs one configuration with real arrays in this fresh process (``jaxmem.runtime``) and answers
with the record sections, or the failure, in RESULT.json; the traceback goes to stderr.
"""

from __future__ import annotations

import sys

from jaxmem import isolate, runtime, targets
from jaxmem.distributed import Cluster
from jaxmem.errors import Unsupported, describe_failure
from jaxmem.setup import resolve


def main(argv: list[str]) -> int:
    config_path, result_path = argv
    try:
        setup = resolve(isolate.read_config(config_path))
        targets.ensure_cpu_devices([setup.target])  # before anything starts JAX's backends
        cluster = Cluster.from_env()
        if cluster is not None:
            cluster.initialize()
        sections = runtime.run(setup)
    except Unsupported as e:
        isolate.write_result(result_path, error=e)
        return 1
    except Exception as e:
        print(describe_failure(e), file=sys.stderr)
        isolate.write_result(result_path, error=e)
        return 1
    isolate.write_result(result_path, sections)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
