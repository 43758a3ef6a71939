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
# # 02 · Where memory goes: reading `jaxmem explain`
#
# A compiled step's memory is a timeline: arguments are there from the start, the forward
# pass stacks up activations for the backward, the backward frees them while it makes
# gradients, and the optimizer writes the new state. XLA plans all of it before the step runs.
# `jaxmem.explain` reads that plan and says, per device, what is live at the peak and which
# line of the model made it. Nothing is allocated, so the same cells run on a laptop, for a
# virtual TPU as well.

# %%
import jaxmem
from jaxmem.explain_view import write_text
from jaxmem.units import fmt_bytes

# eight CPU devices for the sharding section; JAX fixes their number when it starts
jaxmem.targets.ensure_cpu_devices([jaxmem.targets.get("cpu:8")])

GPT = {"kind": "gpt", "vocab_size": 1024, "seq_len": 256, "num_layers": 4, "d_model": 256,
       "num_heads": 4, "stack": "scan"}


def explain(name, **sections):
    """Explains every configuration of a small GPT experiment; returns them by name."""
    exp = jaxmem.Experiment.from_dict({"name": name, "model": GPT, **sections})
    return {p.name: jaxmem.explain_program(jaxmem.build_program(jaxmem.resolve(p.config)),
                                           p.name) for p in exp.grid()}

# %% [markdown]
# ## 1. One step, read at its peak
#
# The report starts with the peak and where it is in the program order: here inside the
# backward loop over the scanned layers. Then the largest buffers live there, each with its
# category, its per-device shape, the `checkpoint_name` the model gave it and the source line
# that made it; then totals by category and by line. The buffers sum to the peak exactly.

# %%
runs = explain("remat", precision="fp32", sweep={"remat": ["none", "full"]})
none, full = runs["remat=none"], runs["remat=full"]
print(write_text(none, top=8))

# %% [markdown]
# **Saved activations** dominate: the queries, keys and values, the MLP's pre- and
# post-activation, the attention probabilities, stacked over the four layers by the scan.
# Parameters and the two AdamW moments are the fixed part.
#
# ## 2. What remat removes
#
# With `remat: full` each layer keeps only its input; the rest is recomputed in the backward.
# The peak falls by the saved activations it no longer holds, and the recomputation's
# workspace is what replaces them.

# %%
for name, e in runs.items():
    print(f"{name:<12} peak {fmt_bytes(e.peak_bytes):>11}   saved activations "
          f"{fmt_bytes(e.by_category.get('saved activation', 0)):>11}   workspace "
          f"{fmt_bytes(e.by_category.get('workspace', 0)):>11}")

# %% [markdown]
# The timeline shows the same: live bytes over the program order, loop bodies shaded, the peak
# marked. (`jaxmem explain` writes these PNGs next to the results.)

# %%
from jaxmem.explain_view import plot  # noqa: E402

plot(none, "remat_none.png")
plot(full, "remat_full.png")
print("timelines: remat_none.png, remat_full.png")

# %% [markdown]
# ## 3. What bf16 halves, and where to look for it
#
# Mixed precision keeps float32 master weights and optimizer state, and computes, and saves
# activations, in bfloat16. XLA:CPU computes bf16 in float32, so compile for the hardware you
# plan for: a virtual TPU v5e (libtpu, no TPU needed). The batch is larger here so that the
# activations outweigh what libtpu keeps in on-chip memory.

# %%
tpu = explain("precision_tpu", remat="none", target="tpu:v5e:2x2", data={"batch_size": 16},
              sweep={"precision": ["fp32", "bf16-mixed"]})
fp32, bf16 = tpu["precision=fp32"], tpu["precision=bf16-mixed"]
for name, e in tpu.items():
    saved = [b for b in e.buffers if b.category == "saved activation"]
    print(f"{name:<22} saved activations {fmt_bytes(e.by_category.get('saved activation', 0)):>11}"
          f"  dtypes {sorted({b.dtype for b in saved})}  parameters "
          f"{fmt_bytes(e.by_category['parameter'])}")
ratio = bf16.by_category.get("saved activation", 0) / fp32.by_category["saved activation"]
print(f"bf16-mixed keeps {ratio:.2f} of fp32's saved activations at the peak; peak "
      f"{fmt_bytes(fp32.peak_bytes)} -> {fmt_bytes(bf16.peak_bytes)}")

# %% [markdown]
# The parameters and moments stay float32 (mixed precision does not shrink them). The saved
# activations shrink, by about half but not exactly: LayerNorm statistics stay float32, and the
# peak itself moves to another moment of the step, where a different set of buffers is live.
#
# ## 4. What FSDP splits
#
# Over 8 devices, data parallelism keeps a full copy of the parameters and moments on every
# device; FSDP (ZeRO-3) keeps an eighth of each. The batch is split either way.

# %%
mesh = explain("fsdp", remat="full", target="cpu:8", precision="fp32",
               sweep={"cases": [{"sharding": "dp", "mesh": {"data": 8}},
                                {"sharding": "fsdp", "mesh": {"fsdp": 8}}]})
for name, e in mesh.items():
    print(f"{name:<40} parameters {fmt_bytes(e.by_category['parameter']):>10}  optimizer "
          f"{fmt_bytes(e.by_category['optimizer state']):>10}  peak {fmt_bytes(e.peak_bytes)}")

# %% [markdown]
# ## Reading your own step
#
# `jaxmem.explain(fn, *args)` takes any function and arguments (arrays or
# `jax.ShapeDtypeStruct`s); `jaxmem explain EXPERIMENT.yaml` does it for every configuration
# of an experiment, `--json` for a machine. Categories are read from JAX's operation names:
# a forward value last used in the backward is a saved activation; a backward value shaped like
# a parameter is a gradient.
