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
# # 05 · Estimating a training step's memory by hand
#
# Before any tool, memory can be counted with a pencil: how many numbers the step has to hold,
# times the bytes of each. This notebook counts a small GPT's training step that way (the
# parameters, their gradients, Adam's two moments, the batch, and the activations each layer
# keeps for the backward under two remat policies), then holds the count against
# `jaxmem.estimate` (the same idea, with more terms) and against XLA's compiled plan, and looks
# at where and why they differ.

# %%
import jaxmem
from jaxmem.analytic import transformer_layer_bytes

V, L, N, D, H = 1024, 256, 4, 256, 4  # vocabulary, sequence, layers, width, heads
B, R = 8, 4                           # batch (sequences), MLP ratio
F32 = 4                               # bytes per float32 value


def mib(n_bytes):
    return f"{n_bytes / 2**20:7.2f} MiB"


MODEL = {"kind": "gpt", "vocab_size": V, "seq_len": L, "num_layers": N, "d_model": D,
         "num_heads": H, "stack": "scan"}


def config_for(remat):
    """The configuration counted here: AdamW, float32, one device."""
    return jaxmem.Experiment.from_dict({"model": MODEL, "data": {"batch_size": B},
                                        "optimizer": "adamw", "precision": "fp32",
                                        "remat": remat}).config

# %% [markdown]
# ## 1. Parameters
#
# A GPT block has two LayerNorms (a scale and a bias each: 2D values each), the attention's
# q/k/v and output projections (4 matrices of D x D, with biases), and the MLP (D -> RD -> D,
# with biases). Around the blocks: the token embedding (V x D, reused as the output layer:
# *tied*), learned positions (L x D) and a final LayerNorm.
#
# per block: 4D² + 4D (attention) + 2RD² + RD + D (MLP) + 4D (LayerNorms)

# %%
per_block = 4 * D * D + 4 * D + 2 * R * D * D + R * D + D + 4 * D
P = V * D + L * D + N * per_block + 2 * D
print(f"parameters by hand: {P:,} = embeddings {V * D + L * D:,} + {N} blocks x "
      f"{per_block:,} + final norm {2 * D}")

# %% [markdown]
# ## 2. Parameters, gradients, Adam: 16 bytes per parameter
#
# In float32 every parameter costs 4 bytes, its gradient 4 more, and AdamW's first and second
# moments 8 more (plus one step counter). These live whatever the batch.

# %%
params_b, grads_b, adam_b = F32 * P, F32 * P, 2 * F32 * P + 4
batch_b = 2 * B * L * 4  # inputs and targets, int32 token ids
print("parameters", mib(params_b))
print("gradients ", mib(grads_b))
print("AdamW m, v", mib(adam_b))
print("batch     ", mib(batch_b))

# %% [markdown]
# ## 3. Activations kept for the backward
#
# Per layer and per token, a transformer keeps (Korthikanti et al., 2022, without dropout):
# the inputs of both LayerNorms and of the q/k/v projection (3D values), q, k and v (3D), the
# attention context (D), the MLP input (D) and the GELU's input and output (2RD): (8 + 2R)D
# values per token; plus the softmax probabilities, H x L values per token. Each LayerNorm
# also keeps its mean and reciprocal standard deviation: 2 float32 per token, twice per layer.
#
# * `remat: none` keeps all of it for every layer;
# * `remat: full` keeps only each block's input (D values per token) and recomputes the rest
#   of one block at a time in the backward, so one block's full set is live again at a time.
#
# The output layer's logits (V values per token) are kept by the loss in both cases.

# %%
tokens = B * L
per_layer = (8 + 2 * R) * D * tokens * F32 + H * L * tokens * F32 + 2 * 2 * tokens * F32
assert (8 + 2 * R) * D * tokens * F32 + H * L * tokens * F32 == transformer_layer_bytes(
    L, B, D, H, bytes_per_value=F32, mlp_ratio=R)  # the library's formula is the same
logits = tokens * V * F32
kept = {"none": N * per_layer + logits,
        "full": N * D * tokens * F32 + per_layer + logits}
print("one layer's activations", mib(per_layer))
print("logits                 ", mib(logits))
for policy, k in kept.items():
    print(f"kept with remat={policy:4s}  {mib(k)}")

by_hand = {policy: params_b + grads_b + adam_b + batch_b + k for policy, k in kept.items()}
for policy, total in by_hand.items():
    print(f"by hand, remat={policy}: {mib(total)}")

# %% [markdown]
# ## 4. The same count by `jaxmem.estimate`, and XLA's plan
#
# `jaxmem.estimate` does this count from shape formulas for any configuration, in
# milliseconds (printed below), with terms a pencil usually forgets: the transient buffers at the peak (the
# logits' gradient, the largest layer gradient being formed) and how the backend computes
# lower precisions. The compiled figure is XLA's own buffer plan (`memory_analysis()`:
# arguments + outputs + temporaries - what is updated in place), from a compile on abstract
# shapes.

# %%
records = {r.name: r for r in jaxmem.run(jaxmem.Experiment.from_dict({
    "model": MODEL, "data": {"batch_size": B}, "sweep": {"remat": ["none", "full"]}}))}
print(f"parameters: by hand {P:,}, the model {records['remat=none'].analytic['param_count']:,}")
estimates = {policy: jaxmem.estimate(config_for(policy)) for policy in ("none", "full")}
for policy, est in estimates.items():
    compiled = records[f"remat={policy}"].compiled["total_bytes"]
    print(f"\nremat={policy}: by hand {mib(by_hand[policy])}, estimate {mib(est.total_bytes)}, "
          f"compiled {mib(compiled)} (by hand {by_hand[policy] / compiled - 1:+.0%}, "
          f"estimate {est.total_bytes / compiled - 1:+.0%}; the estimate took "
          f"{est.seconds * 1e3:.1f} ms)")
    for t in est.terms:
        print(f"   {t.name:20s} {mib(t.bytes)}  {t.detail}")

# %% [markdown]
# ## 5. Where the pencil and XLA differ
#
# `jaxmem.explain_program` asks XLA for the buffers live at the step's peak and sorts them by
# what they hold. Side by side with the hand count for `remat: none`:

# %%
explained = jaxmem.explain_program(jaxmem.build_program(config_for("none")), "remat=none")
hand = {"parameter": params_b, "optimizer state": adam_b, "gradient": grads_b,
        "batch": batch_b, "saved activation": kept["none"], "workspace": 0, "output": 0}
print(f"{'category':18s} {'by hand':>12s} {'XLA, at the peak':>18s}")
for category in dict.fromkeys([*hand, *explained.by_category]):
    print(f"{category:18s} {mib(hand.get(category, 0)):>12s} "
          f"{mib(explained.by_category.get(category, 0)):>18s}")
print(f"{'total':18s} {mib(sum(hand.values())):>12s} {mib(explained.peak_bytes):>18s}")
for category in ("gradient", "saved activation", "workspace"):
    extra = explained.by_category.get(category, 0) - hand[category]
    print(f"XLA holds {mib(extra)} {'more' if extra >= 0 else 'less'} {category} than the pencil")


def largest(category, n):
    """The largest buffers of a category at the peak, grouped by source line and shape."""
    groups = {}
    for b in explained.buffers:
        if b.category == category:
            key = (b.source, b.checkpoint_name or "", b.dtype, tuple(b.shape))
            groups[key] = groups.get(key, 0) + b.bytes
    for (source, name, dtype, shape), size in sorted(groups.items(), key=lambda kv: -kv[1])[:n]:
        print(f"   {mib(size)} {dtype}{list(shape)} {name:13s} {source}")


print("saved activations at the peak (a scanned stack keeps each as one [layers, ...] array):")
largest("saved activation", 10)
print("workspace at the peak:")
largest("workspace", 4)

# %% [markdown]
# Reading the two columns and the lists:
#
# * **Parameters, optimizer state and batch** agree exactly: they are the step's arguments,
#   and arithmetic on shapes is all there is to them.
# * **Saved activations**: the formula's terms appear in the list, with their checkpoint
#   names (`mlp_pre_act` and `mlp_post_act` are the GELU's input and output, `key` and `value`
#   the attention's) and the model's source lines, stacked over the layers by the scan. Lines
#   that match none of the formula's terms are what XLA keeps beyond it: open the source line
#   to see which value it is. The difference printed above is their sum.
# * **Gradients** are the parameters' shapes once more, plus what the backward loop holds
#   while it forms one layer's gradients.
# * **Workspace** is what the pencil leaves out altogether: buffers that only exist while one
#   layer's backward runs (in the list, one layer's attention scores, batch x heads x L x L,
#   and buffers of the residual stream's and weights' sizes). `jaxmem.estimate` calls it *peak transients*; with it, its total is closer to
#   the compiled one than the hand count (the percentages printed in section 4).
#
# Rules of thumb that survive: 16 bytes per parameter for float32 AdamW training; about
# (8 + 2R)·D + H·L values per token per layer without remat, D with full remat plus one
# layer's worth; and the workspace of one layer's backward on top. For your own model, ask
# `jaxmem estimate` first (milliseconds), then `jaxmem run` (one compile) and `jaxmem explain`
# (what is live at the peak, and from which line).
