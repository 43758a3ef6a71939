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
# # 07 · Inference memory: weights, the KV cache, pruning, and a serving budget
#
# Serving a model holds no gradients, no optimizer state and no activations for a backward:
# what remains is the **weights**, the **KV cache** (the keys and values of every token seen
# so far, for every sequence being served), and the workspace of one step. This notebook
# measures each on a small GPT, compiled on abstract shapes: nothing is allocated.

# %%
import jaxmem
from jaxmem.report import print_table

GPT = {"kind": "gpt", "vocab_size": 8192, "seq_len": 1024, "num_layers": 8, "d_model": 512,
       "num_heads": 8, "stack": "scan"}
LAYERS, WIDTH = GPT["num_layers"], GPT["d_model"]


def mib(n_bytes):
    return f"{n_bytes / 2**20:8.2f} MiB"


def run(name, **sections):
    records = jaxmem.run(jaxmem.Experiment.from_dict({"name": name, "model": GPT, **sections}))
    return {r.name: r for r in records}

# %% [markdown]
# ## 1. Weights: float32, bfloat16, int8
#
# A forward pass (`task: inference`) with the weights stored three ways. `int8` is
# weight-only quantisation: one byte per weight plus a float32 scale per output channel,
# dequantised on the fly inside the matrix multiply.

# %%
weights = run("weights", task="inference", data={"batch_size": 1},
              sweep={"inference.weights": ["float32", "bfloat16", "int8"]})
f32 = weights["inference.weights=float32"].analytic["param_bytes"]
for name, r in weights.items():
    p = r.analytic["param_bytes"]
    print(f"{name:28s} weights {mib(p)} (x{p / f32:.2f})   compiled: argument "
          f"{mib(r.compiled['argument_bytes'])}, temp {mib(r.compiled['temp_bytes'])}")

# %% [markdown]
# The weights halve in bfloat16 and fall to about a quarter in int8 (the scales, biases and
# LayerNorms stay in float32), and the compiled arguments follow. The temporaries are the
# forward's workspace over the whole sequence (here 1024 tokens: the logits alone are
# 1024 x 8192 values). On this CPU the bfloat16 row's temporaries *grow*: XLA:CPU computes
# bf16 in float32 and keeps converted copies of the weights (the table note in the other
# notebooks says so); compile for a GPU or TPU target (`target: tpu:v5e:2x2`) for the figure
# that hardware would use. That is also why the rest of this notebook stays in float32.

# %% [markdown]
# ## 2. The KV cache: batch x context
#
# To generate token t+1, attention needs the keys and values of tokens 1..t. Keeping them
# (the KV cache) costs, per sequence:
#
# 2 (keys and values) x layers x context x width x bytes per value (4 in float32, 2 in bf16)
#
# and a server holds one per sequence in flight. `task: decode` compiles one generation step
# over a full cache.

# %%
decode = run("decode", task="decode",
             sweep={"data.batch_size": [1, 8, 32], "inference.context": [256, 1024]})
weights_b = decode["data.batch_size=1,inference.context=256"].analytic["param_bytes"]
for name, r in decode.items():
    c = r.config
    by_hand = 2 * LAYERS * c["inference"]["context"] * WIDTH * 4 * c["data"]["batch_size"]
    cache = r.analytic["kv_cache_bytes"]
    print(f"{name:42s} cache {mib(cache)} (by hand {mib(by_hand)}), "
          f"{cache / weights_b:5.2f}x the weights")

# %% [markdown]
# The cache grows linearly in both the batch and the context: 32 sequences of 1024 tokens
# hold several times the weights in keys and values (the last line). That is why
# serving systems page the cache, share it between requests with a common prefix, shrink it
# with grouped-query attention (fewer key/value heads: `model.kind: llama`,
# `num_kv_heads`), or quantise it.

# %%
print_table(list(decode.values()), title="decode step (KV cache/all: every sequence's)")

# %% [markdown]
# ## 3. Pruning: masked versus structured
#
# Pruning half of the MLP's weights by magnitude can be done two ways:
#
# * **masked**: the weights stay, a mask beside them zeroes the pruned ones. The matrix
#   multiplies are as large as before, and the mask costs memory: no saving.
# * **structured**: whole MLP columns are removed, so the matrices really are narrower.

# %%
pruned = run("pruning", task="inference", data={"batch_size": 1},
             sweep={"inference.prune": ["none", "masked", "structured"]})
base = pruned["inference.prune=none"]
for name, r in pruned.items():
    print(f"{name:28s} model state {mib(r.analytic['param_bytes'] + r.analytic['rest_bytes'])}"
          f"  compiled total {mib(r.compiled['total_bytes'])} "
          f"(x{r.compiled['total_bytes'] / base.compiled['total_bytes']:.2f})")

# %% [markdown]
# Only the structured variant is smaller. Sparse weights save memory only when the storage
# format or the kernels skip the zeros; a mask alone never does.

# %% [markdown]
# ## 4. What a serving budget allows
#
# A budget per device, minus the weights and the step's fixed workspace, is what the
# sequences in flight can use. The cache formula gives a lower bound on each sequence's
# share; the step also needs some workspace per sequence (attention over its cache, the
# cache's update). Two compiles measure both: the decode step at 1 and at 8 sequences of
# 1024 tokens (from the sweep above) give the fixed part and the cost of one more sequence.

# %%
BUDGET = 512 * 2**20  # bytes per device for this toy model; use your accelerator's memory
CONTEXT = 1024
total = {b: decode[f"data.batch_size={b},inference.context={CONTEXT}"].compiled["total_bytes"]
         for b in (1, 8, 32)}
per_sequence = (total[8] - total[1]) / 7
fixed = total[1] - per_sequence
cache_only = 2 * LAYERS * CONTEXT * WIDTH * 4
print(f"one more sequence costs {mib(per_sequence)} (its cache alone: {mib(cache_only)}); "
      f"fixed: {mib(fixed)} (the weights are {mib(f32)})")
print(f"the line predicts {mib(fixed + 32 * per_sequence)} at 32 sequences; "
      f"compiled: {mib(total[32])}")
fits = int((BUDGET - fixed) // per_sequence)
print(f"budget {mib(BUDGET)} -> {fits} sequences of {CONTEXT} tokens")
check = run("budget", task="decode", inference={"context": CONTEXT},
            sweep={"data.batch_size": [fits, fits + 1]})
for name, r in check.items():
    t = r.compiled["total_bytes"]
    print(f"{name:22s} compiled {mib(t)}: {'fits' if t <= BUDGET else 'does not fit'}")

# %% [markdown]
# A decode step's memory is a straight line in the number of sequences: the weights and a
# fixed workspace, plus a slope a little above the cache formula. Two compiles find the line,
# and the answer is checked at the boundary (the two compiles above). For a training step it
# is not a straight line (see `05_estimate_by_hand` and `03_planning`); there `jaxmem fit
# --vary data.batch_size --budget ...` searches with the compiler. On a real serving stack,
# add the framework's own overhead and leave headroom for the allocator.
