# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 04 · Results you can read back: DataFrames, charts and a report to share
#
# Every `jaxmem run` appends one row per configuration to `results.jsonl` (and regenerates
# `results.csv`) as soon as the configuration is measured. This notebook reads a sweep back
# as a pandas DataFrame, draws one field against another, and writes the HTML page that
# `jaxmem report DIR` writes, the thing to attach to an issue or a planning document.

# %%
import tempfile
from pathlib import Path

from IPython.display import Image, display

import jaxmem
from jaxmem.charts import plot

out = Path(tempfile.mkdtemp()) / "remat_batch"
exp = jaxmem.Experiment.from_dict({
    "name": "remat_batch",
    "model": {"kind": "gpt", "vocab_size": 512, "seq_len": 128, "num_layers": 2,
              "d_model": 128, "num_heads": 4, "stack": "scan"},
    "sweep": {"remat": ["none", "full"], "data.batch_size": [4, 8, 16]}})
records = jaxmem.run(exp, out=out)
print(sorted(p.name for p in out.iterdir() if not p.name.startswith(".")))

# %% [markdown]
# ## A DataFrame: one row per configuration, one column per field
#
# `jaxmem.load` reads `results.jsonl` (numbers stay numbers, lists stay lists) into dotted
# columns: `config.remat.policy`, `compiled.temp_bytes`, `estimate.total_bytes`, ...

# %%
df = jaxmem.load(out)
print(len(df), "rows,", len(df.columns), "columns")
temp_mib = df.pivot(index="config.data.batch_size", columns="config.remat.policy",
                    values="compiled.temp_bytes") / 2**20
print(temp_mib.round(1))
batch = temp_mib.index.to_series()
print("temp per extra example (MiB):")
print(temp_mib.diff().div(batch.diff(), axis=0).dropna().round(2))

# %% [markdown]
# Temporaries grow linearly in the batch (the same MiB per extra example between each pair of
# rows), and remat `full` makes the slope smaller: per example it keeps each block's input
# instead of all of its activations. What it still pays per example is the logits and the
# one block recomputed at a time in the backward.

# %% [markdown]
# ## A quick chart
#
# `jaxmem plot DIR --x FIELD --y FIELD --by FIELD` (here `jaxmem.charts.plot`) draws a PNG:
# lines for a numeric x, bytes in MiB or GiB.

# %%
png = plot(out, "config.data.batch_size", "compiled.temp_bytes", by="config.remat.policy")
display(Image(filename=str(png)))

# %% [markdown]
# ## A report to share
#
# `jaxmem report DIR` (here `jaxmem.write_report`) writes one HTML file with its charts
# embedded: each configuration's memory per device split into parameters, optimizer state,
# batch and XLA's temporaries, beside the estimate's terms; the table; the notes; and the
# environment. Explanations written by `jaxmem explain --out DIR/explain` are included with
# their timelines.

# %%
report = jaxmem.write_report(out)
print(f"report written: {report.name}, {report.stat().st_size / 1024:.0f} KiB, "
      f"{report.read_text().count('data:image/png')} chart(s) embedded")
