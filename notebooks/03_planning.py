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
# # 03 · Planning: what to change so it fits
#
# The question people bring is rarely "how much memory does this step take" but "what do I
# change so that it fits, and what does that cost". This notebook answers it three ways, each
# verified by the compiler on abstract shapes (nothing is allocated):
#
# 1. `jaxmem.fit`: the largest batch that fits a budget;
# 2. `jaxmem.plan`: the cheapest combination of remat, precision, sharding, accumulation and
#    optimizer-state settings that fits;
# 3. the out-of-memory doctor: what `jaxmem run` says under a row that does not fit.
#
# Shapes are small so that it runs in a minute on a laptop; the same calls plan a TPU pod
# (`experiments/plan_v5e.yaml`, `experiments/plan_llama8b_v5p.yaml`).

# %%
import jaxmem
from jaxmem.units import fmt_bytes

GPT = {"kind": "gpt", "vocab_size": 2048, "seq_len": 256, "num_layers": 4, "d_model": 256,
       "num_heads": 4, "stack": "scan"}
BUDGET = 256 * 2**20  # pretend the device has 256 MiB

config = jaxmem.Experiment.from_dict({"model": GPT, "data": {"batch_size": 8},
                                   "target": "cpu:1"}).config
program = jaxmem.build_program(config)
compiled = jaxmem.compiled_memory(program.step, *program.abstract_args)
estimate = jaxmem.estimate(config)
print(f"batch 8, float32, no remat: compiled {fmt_bytes(compiled.total_bytes)}, "
      f"estimated {fmt_bytes(estimate.total_bytes)} in {1e3 * estimate.seconds:.1f} ms; "
      f"budget {fmt_bytes(BUDGET)}")

# %% [markdown]
# The compiled figure is XLA's own plan of the step (arguments + outputs + temporaries). The
# estimate adds the same things up from shape formulas in about a millisecond, without
# tracing: that is what lets a search look at hundreds of configurations. It is not exact,
# which is why every answer below is checked by a compile.
#
# ## 1. The largest batch that fits
#
# `fit` asks the estimate where the boundary is, compiles there, scales the estimate's
# activations and gradients by the error that compile showed, and then checks both sides: the
# answer fits, the next admissible value does not. Memory is not always monotone in the batch
# (XLA picks different algorithms for different shapes), so it also compiles the value past the
# next one (if it fits again the search goes on) and says when the fitting batches it compiled
# are not an interval.

# %%
result = jaxmem.fit(config, "data.batch_size", BUDGET)
print(f"largest batch: {result.value} ({fmt_bytes(result.bytes_at(result.value))}); "
      f"{result.next_value} does not fit; the estimate predicted {result.estimate_value}; "
      f"{result.compiles} compiles")
for p in result.probes:
    print(f"  batch {p.value:4d}: {fmt_bytes(p.bytes) if p.bytes else 'refused':>10}  "
          f"{'fits' if p.fits else 'does not fit'}")

# %% [markdown]
# Each probe is one compile. A bisection from batch 1 to 1024 would take about ten; starting
# where the estimate says, and correcting it by the first compile, takes the handful printed
# above.
#
# ## 2. The cheapest configuration that fits
#
# `plan` combines the choices of a search space (by default every remat policy, precision,
# sharding preset and mesh over the target's devices, microbatch count, optimizer-state dtype
# and offload) and ranks the candidates that fit by an explicit cost model: matmul FLOPs
# including what remat recomputes, collective bytes over the mesh's links, host transfers,
# optimizer traffic (`jaxmem.cost`). With `vary`, each candidate is taken at the largest batch
# it fits, and the chosen one's batch and the naive baseline's (float32, no remat, no
# accumulation) are found by compile.

# %%
space = jaxmem.SearchSpace(remat=("none", "dots", "full"), precision=("fp32", "bf16-mixed"),
                           microbatches=(1, 4), state_dtype=("auto",), offload=(False,))
p = jaxmem.plan(config, BUDGET, space=space, vary="data.batch_size")
flops, cost = p.relative(p.chosen)
print(f"{p.searched} candidates estimated in {p.seconds:.1f} s, {p.compiles} compiles")
print(f"chosen: {' '.join(p.chosen.changes) or '(as configured)'}")
print(f"  batch {p.chosen.value} by compile ({fmt_bytes(p.chosen.compiled_bytes)}) vs the "
      f"baseline's {p.baseline.value}: x{p.chosen.value / p.baseline.value:.1f} the batch")
print(f"  FLOPs per example x{flops:.2f}, estimated cost per example x{cost:.2f} the baseline's")
for c in p.ranked[:5]:
    f, k = p.relative(c)
    print(f"  {c.value:4d}  x{f:.2f} FLOPs  x{k:.2f} cost  {' '.join(c.changes)}")
full = next(c for c in p.ranked if c.config.remat.policy == "full" and c.fits_estimate)
f, k = p.relative(full)
print(f"best with full remat: batch {full.value} (estimate), x{f:.2f} FLOPs, x{k:.2f} cost")

# %% [markdown]
# Read the ranking against the techniques it combines. `full` remat keeps only each block's
# input, so its batch is the largest, but its backward recomputes each block's forward: the
# last line prints what that costs in FLOPs per example against the baseline, which is why it
# does not rank first when throughput is the objective. Gradient accumulation (`microbatches`)
# multiplies the batch a step processes at almost no extra FLOPs: only one microbatch's
# activations are alive at a time. On this CPU backend `bf16-mixed` saves little activation
# memory (XLA:CPU computes 16-bit floats in float32); on a TPU or GPU target it halves them.
#
# ## 3. The out-of-memory doctor
#
# When a row of `jaxmem run` does not fit its target (the compiler refused it, or its compiled
# figure is above the device's memory), the row gets a `doctor` section: what the step needs,
# what the device has, and the planner's cheapest change that fits, verified by compile. Here
# an MLP with 2.4 billion parameters is trained with Adam on one TPU v5e chip: parameters,
# gradients and two moments in float32 are far more than its 16 GiB, and libtpu, the TPU
# compiler, refuses the step at compile time on this machine.

# %%
big = {"kind": "mlp", "in_features": 1024, "hidden": [49152, 49152]}
exp = jaxmem.Experiment.from_dict({"name": "too_big", "target": "tpu:v5e:2x2", "model": big,
                                   "data": {"batch_size": 64}})
(row,) = jaxmem.run(exp)
d = row.doctor
print(f"status: {row.status}")
print(f"needs {fmt_bytes(d['needs_bytes'])}, has {fmt_bytes(d['has_bytes'])}; fits with: "
      + " ".join(f"--set {s}" for s in d["sets"]) + f" ({d['why']})")

# %% [markdown]
# The suggestion is a command line: apply it and the step compiles within the chip's memory.

# %%
(fixed,) = jaxmem.run(jaxmem.Experiment.from_dict(exp.to_dict(), d["sets"]))
print(f"with the doctor's change: {fixed.status}, libtpu's peak "
      f"{fmt_bytes(fixed.compiled['peak_bytes'])} of {fmt_bytes(d['has_bytes'])}, "
      f"fits: {fixed.compiled['fits']}")
