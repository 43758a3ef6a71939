"""Results as a pandas DataFrame: :func:`load`.

One row per configuration, one column per dotted field (``compiled.temp_bytes``,
``config.remat.policy``, ``doctor.sets``), read from ``results.jsonl`` so that numbers stay
numbers, missing values are NaN/None, and lists stay lists (the CSV flattens them to text).
pandas comes with the ``report`` extra (``pip install 'jaxmem[report]'``, included in ``dev``).

Example:
  >>> import jaxmem
  >>> exp = jaxmem.Experiment.from_dict({"model": {"kind": "mlp", "hidden": [64]},
  ...                                    "sweep": {"remat": ["none", "full"]}})
  >>> df = jaxmem.load(jaxmem.run(exp))
  >>> list(df["config.remat.policy"]), bool(df["compiled.temp_bytes"].dtype.kind in "iu")
  (['none', 'full'], True)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from jaxmem import results
from jaxmem.record import Record

if TYPE_CHECKING:
    import pandas


def load(source: str | os.PathLike | Sequence[Record]) -> pandas.DataFrame:
    """The rows of a results folder (or its ``results.jsonl``, or records in memory) as a
    DataFrame, in file order, indexed like the sweep (``index``).

    Raises:
      ImportError: pandas is missing (the ``report`` extra).
      OSError, ValueError: as :func:`jaxmem.results.read`.
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError("jaxmem.load needs pandas: pip install 'jaxmem[report]'") from None
    records = (list(source) if isinstance(source, Sequence) and not isinstance(source, str)
               else results.read(source))
    frame = pd.DataFrame([r.flat() for r in records])
    if "index" in frame:
        frame = frame.set_index("index", drop=False).rename_axis(None)
    return frame
