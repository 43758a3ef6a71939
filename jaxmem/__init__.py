"""jaxmem: measure and plan JAX/XLA training memory before you rent the hardware.

Example:
  >>> import jaxmem
  >>> exp = jaxmem.Experiment.from_dict({"name": "mini", "model": {"kind": "mlp", "hidden": [64]}})
  >>> record, = jaxmem.run(exp)
  >>> record.status, record.get("compiled.temp_bytes") > 0
  ('ok', True)
"""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from jaxmem import analytic, optim, precision, remat, sharding, targets
from jaxmem.build import build_program
from jaxmem.compiled import MemoryReport, compiled_memory
from jaxmem.config import (
    Config,
    DataConfig,
    MeasureConfig,
    MeshConfig,
    ModelConfig,
    OptimizerConfig,
    PrecisionConfig,
    RematConfig,
    TargetConfig,
)
from jaxmem.cost import Cost, step_cost
from jaxmem.errors import ConfigError
from jaxmem.estimate import Estimate, estimate
from jaxmem.experiment import Experiment, GridPoint
from jaxmem.explain import Explanation, explain, explain_program
from jaxmem.fit import FitResult, fit
from jaxmem.frame import load
from jaxmem.html_report import write as write_report
from jaxmem.models import BuildOptions, Workload
from jaxmem.plan import Plan, plan
from jaxmem.program import Program
from jaxmem.record import Record
from jaxmem.results import read as read_results
from jaxmem.runner import run
from jaxmem.search_space import SearchSpace
from jaxmem.setup import Setup, resolve

try:
    __version__ = _version("jaxmem")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = [
    "BuildOptions",
    "Config",
    "Cost",
    "ConfigError",
    "DataConfig",
    "Experiment",
    "Estimate",
    "Explanation",
    "FitResult",
    "GridPoint",
    "MeasureConfig",
    "MemoryReport",
    "MeshConfig",
    "ModelConfig",
    "OptimizerConfig",
    "Plan",
    "PrecisionConfig",
    "Program",
    "Record",
    "SearchSpace",
    "RematConfig",
    "Setup",
    "TargetConfig",
    "Workload",
    "analytic",
    "build_program",
    "compiled_memory",
    "estimate",
    "explain",
    "explain_program",
    "fit",
    "load",
    "optim",
    "plan",
    "precision",
    "read_results",
    "remat",
    "resolve",
    "run",
    "sharding",
    "step_cost",
    "targets",
    "write_report",
    "__version__",
]
