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
# # 06 · Sharding across devices, and planning a pod from a laptop
#
# One device holds everything a training step needs. Over N devices there are choices of what
# each one holds, and each choice trades memory for communication:
#
# * **DP** (data parallel): every device holds the whole model and optimizer state, and a
#   slice of the batch; gradients are summed across devices (an all-reduce).
# * **FSDP** (fully sharded data parallel, ZeRO-3): parameters, gradients and optimizer state
#   are split N ways too; each layer's weights are gathered when used (all-gathers) and its
#   gradients scattered back (reduce-scatters).
# * **TP** (tensor parallel, Megatron): the heads and the MLP's width are split; the
#   activations are combined inside each block (all-reduces), every step, every layer.
# * **FSDP+TP**: both, over a 2-D mesh.
#
# Here on 8 CPU devices (`target: cpu:8`, what `--xla_force_host_platform_device_count=8`
# gives), then on a virtual TPU slice.

# %%
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # TPU targets below are compile-only

from pathlib import Path  # noqa: E402

import jaxmem  # noqa: E402
from jaxmem.report import print_table  # noqa: E402

ROOT = Path.cwd() if (Path.cwd() / "experiments").exists() else Path.cwd().parent

GPT = {"kind": "gpt", "vocab_size": 4096, "seq_len": 256, "num_layers": 4, "d_model": 512,
       "num_heads": 8, "stack": "scan"}


def mib(n_bytes):
    return f"{n_bytes / 2**20:7.1f} MiB"


cases = [{"sharding": "dp", "mesh": {"data": -1}},
         {"sharding": "fsdp", "mesh": {"fsdp": -1}},
         {"sharding": "tp", "mesh": {"data": 2, "tensor": 4}},
         {"sharding": "fsdp+tp", "mesh": {"fsdp": 2, "tensor": 4}}]
records = jaxmem.run(jaxmem.Experiment.from_dict({
    "name": "sharding", "target": "cpu:8", "model": GPT, "data": {"batch_size": 16},
    "optimizer": "adamw", "remat": "full", "sweep": {"cases": cases}}))
print_table(records, title="8 devices")

# %%
for r in records:
    c = r.compiled
    print(f"{r.name:40s} per device: params {mib(r.analytic['param_bytes_per_device'])}, "
          f"optimizer {mib(r.analytic['opt_state_bytes_per_device'])}, "
          f"temp {mib(c['temp_bytes'])} (of which gradients, as estimated: "
          f"{mib(r.estimate['gradients_bytes'])}), total {mib(c['total_bytes'])}")
    kinds = {k: c[f"{k}_count"] for k in ("all_reduce", "all_gather", "reduce_scatter",
                                          "all_to_all", "collective_permute")
             if c.get(f"{k}_count")}
    print(f"{'':40s} collectives (a loop body counted once): {kinds}, "
          f"{mib(c['collective_bytes'])} of results")

# %% [markdown]
# What the rows show:
#
# * **DP** keeps the whole model and AdamW's moments on every device and only all-reduces
#   the gradients.
# * **FSDP** divides parameters and optimizer state by the device count (the first two
#   columns fall to an eighth) and pays with all-gathers of the weights and reduce-scatters
#   of the gradients, layer by layer.
# * **TP** splits the weights 4 ways but replicates them over the `data` axis of 2; its
#   collectives are all-reduces of activations inside every block, which is why TP stays
#   within a node's fast interconnect.
# * **FSDP+TP** splits the state over all 8 devices both ways.
#
# The temporaries change too, mostly through the gradients: under DP every device forms the
# whole model's gradient before the all-reduce, under FSDP only its shard of it (the
# estimate's gradient term, printed beside the temporaries, follows the same order). The
# activations of each device's share of the batch are the rest.

# %% [markdown]
# ## The FSDP trap: activations left to the compiler
#
# FSDP splits the *parameters* over the devices; the *activations* should stay split by the
# batch. jaxmem's models constrain each activation to the batch sharding
# (`jax.lax.with_sharding_constraint`); with `sharding.constrain_activations: false` the
# layouts are left to XLA's sharding propagation, which only sees the parameters' sharding.
# `experiments/fsdp_trap.yaml` compiles GPT-2 small (batch 1 per chip) over a virtual TPU
# v5e 16x16 slice both ways. Compiles for 256 chips take minutes on a laptop, so unless
# `JAXMEM_NOTEBOOK_FULL=1` this cell reads the rows recorded by
# `jaxmem run experiments/fsdp_trap.yaml --out benchmarks/results/fsdp_trap`.

# %%
if os.environ.get("JAXMEM_NOTEBOOK_FULL"):
    trap = jaxmem.run(jaxmem.Experiment.from_yaml(ROOT / "experiments" / "fsdp_trap.yaml"))
    print("compiled just now")
else:
    trap = jaxmem.read_results(ROOT / "benchmarks" / "results" / "fsdp_trap")
    env = trap[0].env
    print(f"recorded rows: jax {env['jax_version']}, {env['device_kind']} x"
          f"{env['device_count']}, {trap[0].analytic['param_count'] / 1e6:.0f}M parameters")
for r in trap:
    if r.ok:
        print(f"{r.name:38s} peak {r.compiled['peak_bytes'] / 2**30:5.2f} GiB per chip: fits")
    else:
        print(f"{r.name:38s} {r.status}: needs "
              f"{r.compiled['oom_required_bytes'] / 2**30:5.2f} GiB per chip, has "
              f"{r.compiled['oom_available_bytes'] / 2**30:5.2f} GiB")
        print(f"{'':38s} libtpu: {r.error.split(': ', 2)[-1]}")

# %% [markdown]
# Without the constraints the compiler plans far more temporaries per chip than the step
# needs (the refusal, above), so the step does not fit on this slice at all, while with them
# it fits with room to spare.
# In your own model, constrain the activations at block boundaries to the batch sharding
# (`jax.lax.with_sharding_constraint`, or flax's logical partitioning rules), and compile for
# the pod before renting it: the refusal above came from a laptop.

# %% [markdown]
# ## Planning a virtual TPU slice
#
# The FSDP step of the first table, compiled for a TPU v5e slice of 2x4 chips, with libtpu's compile-only
# topology (`pip install 'jaxmem[tpu-targets]'`): nothing runs, but the compiler plans the
# memory of each chip, and refuses a step that does not fit its HBM, as it would on the
# hardware.

# %%
pod = jaxmem.run(jaxmem.Experiment.from_dict({
    "name": "v5e", "target": "tpu:v5e:2x4", "model": GPT, "data": {"batch_size": 16},
    "optimizer": "adamw", "remat": "full", "precision": "bf16-mixed",
    "sweep": {"cases": cases[1:2]}}))
for r in pod:
    print(f"{r.name:25s} {r.env['device_kind']} x{r.env['device_count']}: peak "
          f"{mib(r.compiled['peak_bytes'])} of {r.env['device_memory_bytes'] / 2**30:.1f} GiB "
          f"per chip, fits: {r.compiled['fits']}")
