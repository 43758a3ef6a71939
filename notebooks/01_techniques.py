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
# # 01 · The usual fixes for out-of-memory, measured
#
# When a training step does not fit, people reach for remat, mixed precision, smaller
# microbatches, chunked losses, freezing, or a lighter optimizer, often one after another on
# a rented machine. Each of them attacks a different part of memory. Here each one is a
# configuration key, compiled side by side on abstract shapes: nothing is allocated, so the
# same cells run on a laptop.

# %%
import jaxmem
from jaxmem.residuals import residual_report
from jaxmem.report import print_table, residual_table, wide_console

GPT = {"kind": "gpt", "vocab_size": 1024, "seq_len": 256, "num_layers": 4, "d_model": 256,
       "num_heads": 4, "stack": "scan"}


def sweep(name, **sections):
    records = jaxmem.run(jaxmem.Experiment.from_dict({"name": name, "model": GPT, **sections}))
    print_table(records, title=name)
    return {r.name: r for r in records}

# %% [markdown]
# ## 1. Remat: what is kept for the backward
#
# The backward pass needs intermediates of the forward. A remat policy chooses which ones are
# kept; the rest is recomputed. `jaxmem residuals` (here `residual_report`) lists what a policy
# keeps, by checkpoint name and source line.

# %%
remat = sweep("remat", sweep={"remat": ["none", "dots", "minimal", "full"]})

# %%
config = jaxmem.Experiment.from_dict({"model": GPT, "remat": "minimal"}).config
residuals, note = residual_report(config)
wide_console().print(residual_table(residuals, title="remat=minimal keeps", note=note))

# %% [markdown]
# `minimal` keeps the q/k/v and attention-output projections and recomputes the rest: the
# MLP's wide activations are gone from the list. `full` keeps only each block's input and pays
# for it with a second forward pass (FLOPs go up).

# %% [markdown]
# ## 2. Mixed precision: half the bytes per activation, same master weights
#
# `bf16-mixed` keeps float32 parameters and optimizer state but computes (and keeps
# activations) in bfloat16. The *saved/all* column halves. On the CPU backend XLA computes
# bf16 in float32, so its compiled temp does not fall; compile for the hardware you plan for
# (`target: tpu:v5e:2x2`) to see the saving there.

# %%
precision = sweep("precision", sweep={"precision": ["fp32", "bf16-mixed"]})
ratio = (precision["precision=bf16-mixed"].analytic["residual_bytes"]
         / precision["precision=fp32"].analytic["residual_bytes"])
print(f"bf16-mixed keeps {ratio:.2f}x the activation bytes of fp32")

# %% [markdown]
# ## 3. Gradient accumulation: the same update from smaller pieces
#
# Splitting a batch of 32 into microbatches processed one after another gives the same
# gradient (the mean of the microbatch means) while only one microbatch's activations exist.

# %%
accumulation = sweep("accumulation", data={"batch_size": 32},
                     sweep={"data.microbatches": [1, 4]})
one, four = accumulation["data.microbatches=1"], accumulation["data.microbatches=4"]
print(f"temp: {one.compiled['temp_bytes'] / 2**20:.1f} MiB -> "
      f"{four.compiled['temp_bytes'] / 2**20:.1f} MiB")
print(f"FLOPs as XLA counts them: {one.compiled['flops'] / 1e9:.1f}G -> "
      f"{four.compiled['flops'] / 1e9:.1f}G, but the 4 microbatches run in a loop whose body "
      f"XLA counts once: x4 = {4 * four.compiled['flops'] / 1e9:.1f}G, "
      f"{4 * four.compiled['flops'] / one.compiled['flops']:.2f}x the single batch's "
      "(x4 also counts the optimizer update four times)")

# %% [markdown]
# Read the FLOPs column with care: the `>=` marks a lower bound. XLA's cost analysis counts
# the body of a loop once, and accumulation *is* a loop over microbatches, so the row with 4
# microbatches shows about a quarter of the FLOPs. The line above multiplies it back: about
# the same work, only the activations of one microbatch at a time are live. What
# accumulation costs is time (smaller matrix multiplies use the device less well), not FLOPs.

# %% [markdown]
# ## 4. Chunked cross-entropy: the logits that never exist
#
# With a large vocabulary the logits (batch x length x vocabulary floats) can be the biggest
# tensor of the step. Computing the loss a chunk of tokens at a time, and recomputing each
# chunk's logits in the backward, removes them.

# %%
big_vocab = dict(GPT, vocab_size=32768, num_layers=2)
chunks = jaxmem.run(jaxmem.Experiment.from_dict({
    "name": "chunking", "model": big_vocab, "remat": "full", "optimizer": "sgd",
    "sweep": {"model.loss_chunks": [1, 8]}}))
print_table(chunks, title="chunked cross-entropy")
print("full logits:", 8 * 256 * 32768 * 4 / 2**20, "MiB")

# %% [markdown]
# ## 5. The optimizer's share, and freezing
#
# AdamW keeps two moments per parameter (twice the parameters' bytes), SGD none, Adafactor a
# row and a column per matrix.

# %%
optimizers = sweep("optimizers", remat="full",
                   sweep={"optimizer": ["adamw", "sgd", "adafactor"]})

# %% [markdown]
# Freezing parameters (fine-tuning only part of a model) removes their gradients and their
# optimizer moments. Here the embeddings and the first two of the four blocks (freezing
# blocks by index needs the Python-loop stack).

# %%
frozen = sweep("freezing", remat="full", model=dict(GPT, stack="loop"),
               sweep={"freeze": [{}, {"blocks": 2, "embeddings": True}]})
for name, r in frozen.items():
    print(f"{name:35s} optimizer state {r.analytic['opt_state_bytes'] / 2**20:5.2f} MiB, "
          f"compiled total {r.compiled['total_bytes'] / 2**20:6.1f} MiB")

# %% [markdown]
# ## 6. Serving: weights and the KV cache
#
# A forward pass keeps no activations for a backward and no optimizer state. For generation,
# the keys and values of every earlier token are cached: that cache grows with batch x context
# and soon outweighs the weights.

# %%
decode = jaxmem.run(jaxmem.Experiment.from_dict({
    "name": "decode", "task": "decode", "model": GPT,
    "sweep": {"data.batch_size": [1, 64], "inference.weights": ["float32", "int8"]}}))
print_table(decode, title="decode")

# %% [markdown]
# ## Where to go next
#
# Every technique has an experiment file in `experiments/` (`remat.yaml`, `precision.yaml`,
# `accumulation.yaml`, `freezing.yaml`, `optimizers.yaml`, `chunking.yaml`, `attention.yaml`,
# `offload.yaml`, `inference.yaml`, `decode.yaml`, `allocator.yaml`); run one with
# `jaxmem run experiments/<file>.yaml`, change it with `--set`.
