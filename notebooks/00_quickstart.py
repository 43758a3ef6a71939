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
# # 00 · Quickstart: where training memory goes
#
# A training step holds two kinds of memory on each device:
#
# * **arguments**: what lives *between* steps and is handed to the step: parameters, optimizer
#   state (AdamW keeps two moments per parameter), and the batch. It grows with model size,
#   not with batch size or sequence length.
# * **temporaries** (XLA's *temp*): what exists only *during* the step: activations kept for
#   the backward pass, gradients, workspace. It grows with batch size x sequence length x
#   depth, and it is what remat (gradient checkpointing) and mixed precision attack.
#
# XLA knows both before anything runs: `jax.jit(f).lower(...).compile().memory_analysis()`
# plans every buffer of the compiled program. jaxmem reads that plan from a compile on abstract
# shapes, so no weights are allocated and you can plan for memory you do not have.

# %%
from pathlib import Path

import jax
import jax.numpy as jnp

import jaxmem
from jaxmem.report import print_table

ROOT = Path.cwd() if (Path.cwd() / "experiments").exists() else Path.cwd().parent
print(jax.devices())

# %% [markdown]
# ## Arguments versus temporaries on one function
#
# A two-layer MLP gradient step on a batch of 1024. The arguments are the two weight matrices
# and the batch; the temporaries hold the hidden activations (kept for the backward) and the
# gradients. `ShapeDtypeStruct`s stand in for arrays: nothing is allocated.

# %%
def loss(params, x):
    h_BxH = jnp.tanh(x @ params["w1"])
    return jnp.mean((h_BxH @ params["w2"]) ** 2)


def sgd_step(params, x):
    grads = jax.grad(loss)(params, x)
    return jax.tree.map(lambda p, g: p - 0.01 * g, params, grads)


f32 = jnp.float32
params = {"w1": jax.ShapeDtypeStruct((512, 2048), f32), "w2": jax.ShapeDtypeStruct((2048, 512), f32)}
for batch in (256, 1024, 4096):
    x = jax.ShapeDtypeStruct((batch, 512), f32)
    print(f"batch {batch:5d}:", jaxmem.compiled_memory(sgd_step, params, x))

# %% [markdown]
# The argument bytes grow only by the batch itself; the temporaries grow with the batch (the
# `h` activations are batch x 2048 floats). Donating the parameters (`donate_argnums`) lets XLA
# write the new parameters into the old buffers: the *alias* bytes, subtracted in the total.

# %%
donated = jaxmem.compiled_memory(jax.jit(sgd_step, donate_argnums=0), params, x)
print(donated)
print("aliased:", donated.alias_bytes, "bytes")

# %% [markdown]
# ## The quickstart sweep
#
# `experiments/quickstart.yaml` is a 3.5M-parameter GPT trained with AdamW, swept over
# **remat** (`none`; `dots`: keep only matrix-multiply outputs; `minimal`: keep only the
# attention projections named by checkpoint names; `full`: keep only each block's input) and
# **precision** (`fp32`; `bf16-mixed`: float32 master weights, bfloat16 compute).

# %%
exp = jaxmem.Experiment.from_yaml(ROOT / "experiments" / "quickstart.yaml")
records = jaxmem.run(exp)
print_table(records, title="quickstart")

# %% [markdown]
# Reading the table:
#
# * **argument/dev** is the same in every row: the same parameters and AdamW state (bf16-mixed keeps
#   float32 master weights; only the compute is in bf16).
# * **temp/dev** falls with remat: `full` recomputes each block's forward during the backward
#   instead of keeping its activations, and pays for it in FLOPs.
# * **saved/all** is what the differentiated program asks to keep, read from the jaxpr
#   before XLA optimises it. It shows both remat and precision: bf16 activations are half the
#   bytes.
# * On the **CPU** backend, XLA computes bf16 in float32, so compiled temp does *not* fall
#   with bf16-mixed there (the table's note says so). Compile for the hardware you plan for:
#   a virtual TPU (`--set target=tpu:v5e:2x2`, with `pip install 'jaxmem[tpu-targets]'`)
#   shows the bf16 saving in temp.

# %%
by_name = {r.name: r for r in records}
none_fp32 = by_name["remat=none,precision=fp32"]
for name, r in by_name.items():
    ratio = r.compiled["temp_bytes"] / none_fp32.compiled["temp_bytes"]
    saved = r.analytic["residual_bytes"] / none_fp32.analytic["residual_bytes"]
    print(f"{name:35s} temp x{ratio:.2f}   saved x{saved:.2f}")

# %% [markdown]
# ## Next
#
# * `jaxmem run experiments/quickstart.yaml --set data.batch_size=32` and watch temp scale.
# * `jaxmem report runs/quickstart` writes the results as one HTML page to share (charts,
#   table, notes); `jaxmem.load("runs/quickstart")` gives them as a pandas DataFrame.
# * `--mode run` measures real step times in a fresh process per configuration (and, on a GPU
#   or TPU, the device's `peak_bytes_in_use`).
# * Measure your own model: `experiments/custom_model.yaml` points at
#   `examples/custom_model.py`.
