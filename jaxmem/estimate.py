"""Per-device memory of a training step in milliseconds, from shapes alone: :func:`estimate`.

Nothing is traced or compiled. Each model kind describes its parameters and one block's forward
values (``jaxmem.models.anatomy``); this module adds the bytes up per device under the
configuration's precision, remat policy, microbatches, freezing, optimizer and sharding, for
the target's backend, as named terms:

* arguments: parameters, optimizer state, model state, batch (exact: the same shapes and
  shardings the step is compiled with);
* saved activations: what the blocks keep for the backward under the remat policy (the rule
  of ``jax.checkpoint``: saveable values the backward needs, directly or to recompute), and what
  the loss and the layers around the blocks keep;
* parameter copies in the compute dtype (mixed precision; XLA:CPU rounds a Python-loop
  transformer's to 16 bits in float32 buffers) and, under FSDP, the weights all-gathered in
  the forward, both kept for the backward;
* the gradients that are alive together (a scanned stack's stacked gradients, the accumulator
  of microbatches, else the largest one, or none where updates are fused into the gradients'
  matmuls);
* the peak's transients: the loss gradient (``B x L x V`` logits, or none beyond the kept
  logits where it is written over them), or the widest block's recomputation and activation
  gradients (one stage of the block at a time: its MLP's, its attention's), whichever is
  larger (in a Python-loop stack a stage's backward no longer holds its block's later
  stages' saved values; a float32 scanned layer's backward holds its weights copied out of
  the stack; where a float32 GPT's loss gradient is made, only the stack's gradients are
  alive, the tied table's gradient comes after, from the logits' gradient);
* on a backend that combines gradient all-reduces (XLA:CPU), a moment where parameters are
  replicated over data-parallel devices: after the backward, every gradient alive with the
  all-reduce's output (a scanned stack's are all-reduced layer by layer in its loop); under
  FSDP, the moments where ZeRO-split gradients are reduced as whole ones (and, with
  microbatches, a Python-loop stack's whole gradients held in the block's backward); and,
  for an optimizer whose in-place updates make XLA:CPU copy an MLP's kernels at the step's
  entry (adamw), a moment where the backward starts beside those copies and one at its end,
  where the first kernel's gradient is made beside the second kernel's copy.

The peak is the largest of these moments.

``total_bytes`` is comparable with the compiled figure ``fits`` uses (``compiled.total_bytes``;
on TPU libtpu's ``peak_bytes``). ``benchmarks/estimate_accuracy.py`` measures how close, on
random configurations; backend profiles (:data:`jaxmem.backends.BACKENDS`) hold what a
compiler is measured to change (XLA:TPU, for one, fuses elementwise producers into matmuls and
updates into gradient matmuls, and keeps float32 matmul operands in bfloat16; the ``Tensor``
flags say which values such rules apply to).

Example:
  >>> from jaxmem import estimate
  >>> from jaxmem.config import Config
  >>> e = estimate(Config())
  >>> e.total_bytes == sum(t.bytes for t in e.terms if t.counted)
  True
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
import time
import types
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx

from jaxmem import analytic, chain_memory, freeze, sharding
from jaxmem.backends import BACKENDS, Backend
from jaxmem.block_memory import (
    SAVEABLE_NONE,
    block_terms,
    kept_bytes,
    normalised_values,
    recomputed_kernels,
    recomputed_scores,
    redoes_matmuls,
    unfused,
    widest_after_scores,
)
from jaxmem.config import Config
from jaxmem.conv_memory import conv_forward_moments
from jaxmem.errors import ConfigError, Unsupported
from jaxmem.estimate_result import ARGUMENT_TERMS, Estimate, Term
from jaxmem.gradient_memory import live_gradients
from jaxmem.models.anatomy import Anatomy, Tensor
from jaxmem.param_memory import (
    batch_split_gradients,
    gathered_batch_moments,
    gathered_kernel_moment,
    held_block_gradients,
    param_terms,
    scanned_layer_gradients,
    tied_head_regathered,
)
from jaxmem.setup import Setup, as_setup
from jaxmem.sizing import Sizer
from jaxmem.step import make_objective

# the result types live in jaxmem.estimate_result; re-exported here
__all__ = ["ARGUMENT_TERMS", "Estimate", "Term", "estimate", "mesh_shape", "traced_anatomy"]

# ----------------------------------------------------------------------- the estimate
#: optimizer state per trainable parameter value, in units of the parameter (factored
#: moments of adafactor are a row and a column per matrix: about nothing)
STATE_PER_PARAM: dict[str, Callable[[Any], float]] = {
    "adamw": lambda c: 2.0,
    "lion": lambda c: 1.0,
    "sgd": lambda c: 1.0 if c.momentum else 0.0,
    "adafactor": lambda c: 0.0,
}


def mesh_shape(setup: Setup) -> dict[str, int]:
    """The mesh's axis sizes without asking for devices (the target's device count)."""
    return sharding.axis_sizes(setup.config.mesh, setup.target.device_count())


def _mesh(setup: Setup) -> types.SimpleNamespace:
    return types.SimpleNamespace(shape=mesh_shape(setup))


def estimate(config: Config | Setup, name: str = "") -> Estimate:
    """The per-device memory of ``config``'s training step, from shape formulas.

    Args:
      config: a configuration (or its resolved Setup) with ``task: train``.
      name: the configuration's name in the result.

    A model kind without shape formulas (``custom``) is estimated from its abstract
    parameters and the jaxpr of its loss instead (:func:`traced_anatomy`; slower).

    Raises:
      ConfigError: the mesh does not fit the target's devices, or splits what it cannot.
      Unsupported: a task other than training.

    Example:
      >>> from jaxmem import estimate
      >>> from jaxmem.config import Config
      >>> e = estimate(Config())
      >>> [t.name for t in e.terms][:3]
      ['parameters', 'optimizer state', 'batch']
    """
    start = time.perf_counter()
    setup = as_setup(config)
    c = setup.config
    if c.task != "train":
        raise Unsupported(f"the estimate covers task train, not {c.task}")
    mesh = _mesh(setup)
    ways = math.prod(mesh.shape[a] for a in sharding.BATCH_AXES)
    micro = c.data.batch_size // c.data.microbatches
    if micro % ways:
        raise ConfigError("data.batch_size", f"must be divisible by the {ways} devices of the "
                          "mesh's batch axes (data x fsdp) per microbatch", value=c.data.batch_size)
    c.model.check_sharding(mesh.shape, setup.rules)
    anatomy = c.model.anatomy(setup.build_options, micro) or traced_anatomy(setup, micro)
    built_scanned = anatomy.scanned  # a one-layer scan is estimated as a loop below
    layers = sum(b.count for b in anatomy.blocks)
    if anatomy.scanned and layers == 1:
        # XLA removes a loop of one trip: a scanned stack of one layer compiles as a Python
        # loop of one block does (the same buffers), and is estimated as one (but for the
        # forward's MLP values kept with microbatches: Backend.keeps_one_layer_scan_mlp)
        anatomy = dataclasses.replace(anatomy, scanned=False)
    python_loop = not anatomy.scanned  # a block's forward and backward in one computation
    platform = setup.target.platform()
    backend = BACKENDS.get(platform, Backend())
    stored = np.dtype(setup.precision.compute_dtype)  # the configured compute dtype
    compute = np.dtype("float32") if backend.float32_compute and stored.itemsize < 4 else stored
    size = Sizer(mesh, setup.rules, compute, np.dtype(setup.precision.param_dtype), backend,
                 rounded=stored)
    rows = micro // ways * anatomy.rows_per_example
    p = param_terms(anatomy, setup, size, rows)
    params, trainable, gathered = p.total, p.trainable, p.gathered
    state = STATE_PER_PARAM[c.optimizer.name](c.optimizer)
    state_dtype = c.optimizer.state_dtype
    state_scale = 1.0 if state_dtype == "auto" else (
        np.dtype(state_dtype).itemsize / size.param.itemsize)
    opt_state = int(trainable * state * state_scale)
    per_device = c.data.batch_size // ways
    batch = sum(size.nbytes((per_device, *shape), np.dtype(d)) for shape, d in anatomy.example)
    float32_layers = stored.itemsize == 4
    policy, undone, undone_policy = setup.remat, "", None
    if not (backend.loop_remat or anatomy.scanned) and policy.checkpoint:
        policy, undone_policy = SAVEABLE_NONE, setup.remat
        undone = f" ({platform} undoes remat {setup.remat.name} of loop blocks)"
    # what a Python-loop block's backward shares with its forward, with or without remat
    # (XLA:CPU compiles the step the same under any policy); in float32 layers only: under
    # 16-bit compute the forward's values are rounded to 16 bits
    shares = backend.shares_loop_backward and float32_layers and python_loop
    # the float32 batch cast to the configured compute dtype is the argument itself only in
    # float32: a 16-bit cast computed in float32 (XLA:CPU) holds rounded values, a buffer of
    # their own (measured on bf16-mixed CNNs: the rounded images in float32, kept for the
    # first kernel's gradient). A scanned causal stack under a checkpointing policy: its
    # backward's stages as Backend.scan_remat_stages measured (no tensor split)
    scan_stages = (backend.scan_remat_stages and anatomy.scanned and policy.checkpoint
                   and not setup.remat.name.startswith("except:")
                   and any(b.causal for b in anatomy.blocks)
                   and mesh.shape.get("tensor", 1) == 1)
    blocks = block_terms(anatomy.blocks, setup, policy, size,
                          batch_is_compute=stored == np.dtype("float32"), shares=shares,
                          kernels=dict(anatomy.params), undone=undone_policy,
                          float32_layers=float32_layers,
                          frees_stages=not anatomy.scanned, scan_stages=scan_stages,
                          slices_operands=(backend.copies_scanned_operands and anatomy.scanned
                                           and (setup.remat.checkpoint or (
                                               backend.copies_scanned_operands_without_remat
                                               and mesh.shape.get("tensor", 1) == 1))))
    outside = kept_bytes(unfused(list(anatomy.outside), backend), size, batch_is_compute=False)
    loss_values = _loss_values(anatomy, size)
    head_frozen = bool(anatomy.lm_head) and any(
        fnmatch.fnmatchcase(anatomy.lm_head, f) for f in setup.freeze_patterns)
    if (backend.one_pass_frozen_head_loss and not backend.fuses_loss_gradient
            and head_frozen):
        # a frozen LM head makes no gradient from the logits' gradient: an unfused loss
        # gradient is then one pass over the logits (no exponentials of their own, no
        # second layout for the head's gradient matmul)
        loss_values = loss_values[:1]
    loss = size.tensors(loss_values)
    # one row per device and microbatch: each weight gradient is an outer product (under
    # 16-bit compute it is rounded to 16 bits first, in a buffer of its own; under ZeRO a
    # kernel split on its output dimension multiplies the whole microbatch's rows)
    zeroed = math.prod(n for a, n in mesh.shape.items()
                       if a in sharding.BATCH_AXES and a in setup.rules.zero)
    # an update waits for every gradient under loss scaling (the finite check) and leaves
    # the device with offloaded optimizer state: no fusion into the gradients' matmuls; nor
    # (Backend.reduces_gradients_before_update) where a float32 chain's are all-reduced
    fused_updates = (backend.fuses_gradient_update and not setup.precision.loss_scaling
                     and not c.optimizer.offload and not (
                         backend.reduces_gradients_before_update and ways > 1 and zeroed == 1
                         and float32_layers and bool(anatomy.chain) and c.data.microbatches == 1))
    # an MLP chain without remat under 16-bit compute: compiled as in float32 layers, from
    # float32 rounded copies of the parameters (XLA:CPU)
    float32_chain = bool(backend.float32_chain_copies and anatomy.chain
                         and not float32_layers and not setup.remat.checkpoint)
    # under a remat policy that saves the matmul outputs, with microbatches, the chain
    # compiles as without remat, besides the 16-bit copies of the kernels its checkpointed
    # blocks' backward reads (XLA:CPU; Backend.dots_chain_rereads)
    reread_16 = reread_32 = 0
    if (backend.dots_chain_rereads and anatomy.chain and not float32_layers
            and c.data.microbatches > 1 and chain_memory.saves_dots(anatomy, setup.remat)):
        float32_chain = True
        reread_16 = chain_memory.reread_kernels(anatomy, setup, size, stored)
        reread_32 = reread_16 * compute.itemsize // stored.itemsize
    float32_math = float32_layers or float32_chain
    outer = (backend.fuses_outer_product_gradients and rows == 1 and not p.stacked
             and float32_math and zeroed == 1)
    # with microbatches, a scanned stack's gradients are 16-bit under 16-bit compute (XLA:CPU)
    stack_16 = (p.stacked * stored.itemsize // size.param.itemsize
                if backend.scan_gradients_16bit_in_microbatches and not float32_layers else 0)
    grads = live_gradients(c, backend, p, fused_updates, float32_math, outer,
                           zero_split=zeroed > 1, float32_chain=float32_chain,
                           batch_split=ways > 1, stack_16=stack_16,
                           tensor_split=mesh.shape.get("tensor", 1) > 1)
    one_device = math.prod(mesh.shape.values()) == 1
    if (c.optimizer.name in backend.holds_loop_block_gradients and python_loop and float32_layers
            and c.data.microbatches == 1 and one_device and _transformer(anatomy)):
        held = held_block_gradients(anatomy, setup, size)
        grads["block"] = (max(held, grads["block"][0]), "a block's MLP kernels' gradients, "
                          "held beside the largest outside the blocks (the updates wait)")
    # (a 16-bit chain read through float32 copies updates each parameter as its gradient
    # is made: nothing to place)
    stateless = (c.optimizer.name in backend.copies_parameters_at_entry and not state
                 and float32_layers)
    # (under FSDP too, on the ZeRO shards: Backend.copies_zero_state_at_entry)
    zero_copies = zeroed > 1 and c.optimizer.name in backend.copies_zero_state_at_entry
    state_copied = False
    if ((c.optimizer.name in backend.copies_state_at_entry or stateless) and anatomy.chain
            and float32_math and not p.stacked and c.data.microbatches == 1
            and not setup.freeze_patterns and state_dtype == "auto"
            and (one_device or zero_copies)):
        held = chain_memory.state_copies_held(anatomy, setup, size, outer,
                                              rounded=float32_chain, state=not stateless)
        one = (held, f"{c.optimizer.name}'s copies of " + ("" if stateless else "its state "
               "and of ") + "the parameters the "
               "backward reads, made at the step's entry, and the gradients, less those in "
               "donated argument buffers")
        grads = {"loss": one, "block": one}
        state_copied = zero_copies and not one_device
    elif (c.optimizer.name in backend.copies_state_with_microbatches and anatomy.chain
          and float32_layers and c.data.microbatches > 1 and not setup.freeze_patterns
          and state_dtype == "auto" and not outer):
        placed = chain_memory.same_size_state_slots(anatomy, setup, size)
        one = (2 * trainable - placed, f"the microbatch accumulators and {c.optimizer.name}'s "
               "copies of its state, made at the step's entry, less those in donated state "
               "buffers")
        grads = {"loss": one, "block": one}
    # a 16-bit chain under remat that saves no matmul output, with microbatches: lion's
    # state copies and the float32 rounded copies (the accumulators in the donated state
    # buffers), the re-read kernels widened again in the loop and the head's gradient
    # (XLA:CPU; Backend.rereads_state_copies_with_microbatches)
    reread_state = bool(c.optimizer.name in backend.rereads_state_copies_with_microbatches
                        and anatomy.chain and not float32_layers and not float32_chain
                        and c.data.microbatches > 1 and setup.remat.checkpoint
                        and not setup.freeze_patterns and state_dtype == "auto"
                        and one_device)
    if reread_state:
        reread_32 = chain_memory.reread_kernels(anatomy, setup, size, compute)
        head = chain_memory.local_bytes(anatomy.chain[-1], anatomy, setup, size, size.param)
        one = (2 * trainable + head, f"{c.optimizer.name}'s copies of its state made at the "
               "step's entry, the float32 rounded parameters (the microbatch accumulators in "
               "the donated state buffers) and the head's gradient")
        grads = {"loss": one, "block": one}
    # a microbatch's 16-bit gradients copied to float32 before they are added (XLA:CPU)
    # (the float32 chain's too, where they are all-reduced: the reducing moment below)
    widens = (backend.widens_microbatch_gradients and c.data.microbatches > 1
              and not float32_layers and not reread_state)
    widened = trainable if widens else 0
    # gradients made beside the accumulator (not outer products added as they are made)
    reread_made = bool(reread_32 and grads["block"][0] > trainable)
    if reread_made:
        # a re-read kernel's gradient is written over its float32 copy once its block's
        # backward has read it; the LM head's, made before the blocks' backward, is beside
        # them; the first kernel's, made last, once they are dead (a moment below)
        head = chain_memory.local_bytes(anatomy.chain[-1], anatomy, setup, size,
                                        size.param)
        grads = {"loss": grads["loss"],
                 "block": (trainable + head, "the microbatch accumulator and the head's "
                           "gradient (the re-read kernels' are written over their float32 "
                           "copies)")}
    # a scanned GPT's step (a tied table) under 16-bit compute with microbatches: the rounded
    # copies are float32 (the tied table's twice) and only the gradients outside the stack,
    # the tied table's two, are float32 beside the accumulator
    # (XLA:CPU; Backend.rounds_scanned_float32_in_microbatches)
    rounded_scan = bool(backend.rounds_scanned_float32_in_microbatches and widened
                        and built_scanned and layers > 1 and p.tied_table > 0
                        and stored != size.param and (zeroed == 1 or p.tied_whole))
    if rounded_scan:
        widened = trainable - p.stacked + p.tied_table
    if widened and not float32_chain:
        grads = {k: (n + widened, f"{why}, and their float32 copy") for k, (n, why) in
                 grads.items()}
    copies = 0 if stored == size.param else params * stored.itemsize // size.param.itemsize
    transformer = _transformer(anatomy)
    loop_copies = bool(copies and backend.float32_loop_copies and python_loop
                       and transformer and c.data.microbatches == 1 and zeroed == 1)
    if loop_copies:
        # rounded copies in float32 of what the matmuls read: all but the lookup tables
        # (unless split over the mesh: a split table's lookup reads a copy)
        copies = (params - p.lookups) * compute.itemsize // size.param.itemsize
    elif float32_chain and copies:
        copies = params * compute.itemsize // size.param.itemsize
    elif copies:
        # a lookup-only table is not rounded whole: its lookup rounds the rows it gathers
        # (dev rows 1036 -> 1038 of 1100, encoders' mean error down; TPU rows unchanged)
        copies = (params - p.lookups) * stored.itemsize // size.param.itemsize
    if rounded_scan:
        copies = (params - p.lookups + p.tied_table) * compute.itemsize // size.param.itemsize
    # under FSDP, the tied table gathered for its lookup too: beside the gathered table three
    # whole float32 tables live through the microbatch loop (the lookup's and the head's
    # rounded copies, the lookup's scatter-add buffer), a fourth in a block's backward
    # (XLA:CPU; Backend.rounds_gathered_tied_table)
    whole_table = bool(rounded_scan and backend.rounds_gathered_tied_table and zeroed > 1
                       and p.tied_whole)
    if whole_table:
        copies += (3 * p.tied_whole - 2 * p.tied_table) * compute.itemsize // size.param.itemsize
    if backend.narrows_scanned_float32_weights and anatomy.scanned and float32_layers:
        # the stack's weights in bfloat16, made before its loops
        copies += p.stacked_all * 2 // size.param.itemsize
    if reread_state:  # the blocks' kernels rounded to 16 bits (not the head's)
        copies = sum(chain_memory.local_bytes(k, anatomy, setup, size, stored)
                     for k in anatomy.chain[:len(anatomy.blocks)])
    # the ZeRO shards' copies, made at the entry, held to the update (16-bit compute; Backend.
    # copies_zero_parameters_at_entry)
    entry_copies = trainable if (c.optimizer.name in backend.copies_zero_parameters_at_entry
                                 and zeroed > 1 and python_loop and transformer
                                 and not float32_math and c.data.microbatches == 1) else 0
    copies += entry_copies
    saved_all = blocks.saved + outside
    # a one-layer scan with microbatches, under a policy recomputing the projections (full,
    # save:*), keeps its loop, and the forward's MLP values stay alive through the backward
    # (XLA:CPU; Backend.keeps_one_layer_scan_mlp)
    if (backend.keeps_one_layer_scan_mlp and built_scanned and layers == 1 and float32_layers
            and trainable
            and c.data.microbatches > 1 and rows >= backend.recomputed_scores_rows > 0
            and (setup.remat.name == "full" or setup.remat.name.startswith("save:"))):
        saved_all += backend.keeps_one_layer_scan_mlp * max(
            (size.tensors([t]) for t in anatomy.blocks[0].values if t.stage == "mlp"), default=0)
    # the moments of the step; the peak is the largest. (A moment where the backward ends with
    # every gradient alive made the accuracy grid's dev seeds worse without data parallelism:
    # XLA applies most updates as their gradients are made; with it, see below.)
    at_loss = "where the backward starts (the loss gradient)"
    # under FSDP, whole gradients reduced over the fsdp devices (see the moment below)
    whole = (batch_split_gradients(anatomy, setup, size, rows)
             if backend.all_reduces_zero_gradients and zeroed > 1 and not p.stacked else 0)
    # in a microbatch's backward, a Python-loop stack's whole gradients wait for the step's
    # combined reduction beside the activations (XLA:CPU; a CNN's, two convolutions or more:
    # a later one's gradient held through an earlier one's backward, loop_whole_conv_gradients);
    # counted for every trainable parameter. Not for a one-layer scan (estimated as a loop
    # otherwise): a one-layer fsdp x tp encoder went +2.3 -> +13.8 % with it
    waiting = (whole if backend.loop_whole_gradients and c.data.microbatches > 1
               and not built_scanned and (transformer or (backend.loop_whole_conv_gradients
               and sum(t.dot == "conv" for b in anatomy.blocks for t in b.values) > 1)) else 0)
    # a scanned backward loop's body copies its layer's float32 weights out of the stack
    layer_slice = (p.stacked_all // layers
                   if backend.slices_scanned_layer and anatomy.scanned and float32_layers
                   else 0)
    layer_grads = scanned_layer_gradients(p, setup, size, anatomy.scanned and not float32_layers)
    # the microbatch split (``grads.split_microbatches``: every k-th example into microbatch
    # k) as a transposed copy of the batch, read through the microbatch loop
    split_copy = batch if backend.copies_microbatch_split and c.data.microbatches > 1 else 0
    split_why = "; the batch's microbatch-major copy" if split_copy else ""
    at_loss += split_why
    in_block = (f"in the backward of a {blocks.widest} (its recomputation and activation "
                "gradients" + ("; the saved values of its later stages are freed"
                               if blocks.freed else "")
                + ("; its layer's weights copied out of the stack" if layer_slice else "")
                + ("; its layer's float32 weight gradients" if layer_grads else "")
                + ("; its kept matmul operands copied out of the stack" if blocks.sliced
                   else "")
                + ")" + split_why)
    # a single device's conv blocks under 16-bit compute: the widest block's backward is its
    # pooling's or ReLU's, before its kernel's gradient (Backend.pools_before_kernel_gradient)
    # (the values outside the blocks, the pooled features, are dead there on any mesh)
    pooled_alone = blocks.pooled and c.data.microbatches == 1 and one_device
    # (one pooled block with microbatches: the accumulators and one float32 gradient set, no
    # 16-bit copy still read; Backend.lone_conv_block_microbatch_gradients)
    lone_block = bool(backend.lone_conv_block_microbatch_gradients and blocks.pooled
                      and len(anatomy.blocks) == 1 and c.data.microbatches > 1 and one_device)
    block_copies = (blocks.transposed_kernels if pooled_alone else 0 if lone_block
                    else copies + reread_16 + reread_32 + (p.tied_whole if whole_table else 0))
    block_grads = (0 if pooled_alone else 2 * trainable if lone_block
                   else grads["block"][0] + waiting)
    moments = {
        at_loss: (saved_all, copies + reread_16 + reread_32, gathered, grads["loss"][0],
                  loss + split_copy),
        in_block: (blocks.before - blocks.freed
                   + (0 if backend.frees_outside_first or blocks.pooled or scan_stages
                      else outside),
                   block_copies, gathered, block_grads,
                   blocks.recompute + layer_slice + layer_grads + split_copy),
    }
    grads_why = {at_loss: grads["loss"][1],
                 in_block: "none (the block's kernel gradient is made after)" if pooled_alone
                 else "the microbatch accumulators and one float32 gradient set" if lone_block
                 else grads["block"][1] + (
                     "; every trainable parameter's whole (unsharded) gradient, waiting for "
                     "the combined reduction" if waiting else "")}
    if blocks.softmax_forward:  # (Backend.holds_softmax_forward)
        at_softmax = "in the last block's softmax forward"
        moments[at_softmax], grads_why[at_softmax] = (blocks.softmax_forward, copies, gathered,
                                                      0, 0), "none yet"
    if (backend.widens_rounded_chain_at_entry and anatomy.chain and not float32_layers
            and setup.remat.checkpoint and c.data.microbatches == 1):
        # XLA:CPU rounds each block's kernel to 16 bits in a buffer of its own (remat only),
        # then widens them to float32 one by one (chain_memory.widening_at_entry; lion's into
        # its state buffers, copied out at the entry: Backend.widens_into_state)
        held = (opt_state if c.optimizer.name in backend.widens_into_state
                and not setup.freeze_patterns and state_dtype == "auto" and one_device else 0)
        widest = chain_memory.widening_at_entry(anatomy, setup, size, stored, compute, held > 0)
        at_rounding = ("at the step's entry, where the blocks' kernels rounded to 16 bits are "
                       "widened to float32 one by one")
        moments[at_rounding] = (0, widest, 0, held, 0)
        grads_why[at_rounding] = "none yet" + ("; the optimizer state's copies" if held else "")
        if held and chain_memory.gradients_in_state(anatomy, setup, backend,
                                                  c.optimizer.name):
            for k in (at_loss, in_block):  # the state copies, the gradients placed
                moments[k], grads_why[k] = moments[k][:3] + (held,) + moments[k][4:], (
                    f"{c.optimizer.name}'s state copies (gradients in donated buffers)")
    if reread_state:
        at_first_grad = ("where the chain's first kernel's gradient is made (the re-read "
                         "kernels' float32 copies are dead)")
        moments[at_first_grad] = (0, copies, 0, 2 * trainable + p.first, split_copy)
        grads_why[at_first_grad] = (f"{c.optimizer.name}'s state copies, the float32 rounded "
                                    "parameters and the first kernel's gradient")
    if reread_made:
        at_first_grad = ("where the chain's first kernel's gradient is made (the re-read "
                         "kernels' float32 copies are dead)")
        moments[at_first_grad] = (0, copies + reread_16, gathered, trainable + p.first,
                                  split_copy)
        grads_why[at_first_grad] = "the microbatch accumulator and the first kernel's gradient"
    if (backend.chain_head_gradient_first and float32_chain and zeroed > 1 and copies
            and c.data.microbatches == 1  # (so no re-read kernels: dots_chain_rereads)
            and c.optimizer.name not in backend.copies_largest_gradient):
        # beside the loss gradient and the copies the backward reads (not the first kernel's)
        at_head = "where the head's gradient is made, before its activation gradient"
        moments[at_head] = (saved_all, copies - p.first, gathered, chain_memory.local_bytes(
            anatomy.chain[-1], anatomy, setup, size, compute), loss)
        grads_why[at_head] = "the head's kernel gradient"
    if (c.optimizer.name in backend.copies_chain_kernels_at_entry and anatomy.chain
            and float32_layers and not p.stacked and c.data.microbatches == 1 and not outer
            and zeroed == 1):
        # the updates overwrite the parameters in place while the backward still reads them:
        # XLA:CPU copies every trainable parameter but the chain's first kernel (which the
        # backward reads last) at the step's entry (with outer-product gradients, one row a
        # device, only the largest read back: gradient_memory)
        at_entry = (f"where the backward starts, beside {c.optimizer.name}'s copies of the "
                    "parameters its in-place updates overwrite (made at the step's entry)")
        moments[at_entry] = (saved_all, copies, gathered, p.but_first, loss)
        grads_why[at_entry] = ("no gradient yet; the copies of every trainable parameter but "
                               "the chain's first kernel")
        # a copy is held until the backward has read it: the second kernel's, until the
        # first kernel's gradient is made, at the backward's end
        at_first = (f"where the chain's first kernel's gradient is made, beside "
                    f"{c.optimizer.name}'s copy of the second kernel")
        moments[at_first] = (0, copies, gathered, p.second + p.first, 0)
        grads_why[at_first] = "the copy of the chain's second kernel and the first's gradient"
    if "head" in grads and not _loss_gradient_over_kept(anatomy):
        # a chunked loss makes the LM head's gradient chunk by chunk, beside the loss's
        # values; else (a float32 GPT's) the logits' gradient written over the logits makes
        # it once the loss's other values are dead: in a scanned stack a moment the block's
        # backward exceeds, in a Python loop the one below
        moments[at_loss] = (saved_all, copies, gathered, grads["head"][0], loss + split_copy)
        grads_why[at_loss] = grads["head"][1]
    elif "head" in grads and not p.stacked:
        # the LM head's matmul makes the tied table's gradient from the logits' gradient
        # (written over the logits) once the loss's other values are dead
        # (Backend.tied_head_gradient_after_loss)
        at_head = "where the LM head's matmul makes the tied table's gradient"
        moments[at_head] = (saved_all, copies, gathered, grads["head"][0], split_copy)
        grads_why[at_head] = grads["head"][1]
    reduced = math.prod(n for a, n in mesh.shape.items()
                        if a in sharding.BATCH_AXES and a not in setup.rules.zero)
    if backend.combines_all_reduces and reduced > 1 and trainable:
        copies_of = 2 if c.data.microbatches == 1 else 3
        reducing = f"where the gradients are all-reduced over the {reduced} data-parallel devices"
        # a scanned stack's gradients are all-reduced layer by layer in its backward loop:
        # the step's end holds every gradient, the all-reduce's output of those outside the
        # stack and of the last layer's
        reduced_after = trainable - p.stacked + (p.whole_layer if p.stacked else 0)
        # a tied token table's two gradients (the LM head's, the lookup's scatter-add) are
        # reduced apart, then added (Backend.reduces_tied_gradients_apart); a scanned
        # stack's step without microbatches reduces them as one
        tied_apart = 2 * p.tied_table if backend.reduces_tied_gradients_apart and (
            not p.stacked or c.data.microbatches > 1) else 0
        # the scanned stack's updates, read from the backward loop's output, are made (and its
        # gradients freed) before the all-reduce of those outside it (Backend.updates_stack_first;
        # not for a float32 optimizer copying its state at the entry: its copies hold on)
        held = trainable - p.stacked if (
            backend.updates_stack_first and p.stacked and not p.tied_table
            and not (float32_layers and c.optimizer.name in backend.copies_state_at_entry)
        ) else trainable
        moments[reducing] = (0, reread_16, 0,
                             held + (copies_of - 1) * reduced_after + widened
                             + tied_apart, 0)
        grads_why[reducing] = (("the gradients outside the scanned stack (its own applied "
                                "already)" if held < trainable else "every gradient")
                               + " and the all-reduce's output" + (
            f" ({copies_of} x the trainable parameters)" if not p.stacked else
            f" of those outside the scanned stack and of one layer's (x {copies_of - 1})") + (
            "; the tied token table's lookup gradient, reduced apart, and its output"
            if tied_apart else "") + (
            ", and the gradients' float32 copy" if widened else ""))
    if backend.all_reduces_zero_gradients and zeroed > 1 and p.stacked:
        reducing = (f"where a layer's ZeRO-sharded gradients are reduced over the {zeroed} "
                    "fsdp devices in the scanned backward (whole gradients all-reduced)")
        moments[reducing] = (0, 0, 0, p.stacked + p.whole_outside + 2 * p.whole_layer, 0)
        grads_why[reducing] = ("a scanned stack's gradients, the whole gradient of the largest "
                               "parameter outside it, a layer's whole gradients and their "
                               "all-reduce's output")
    if whole:  # with microbatches the loop body also keeps the forward's gathered weight
        copies_of = 2 if c.data.microbatches == 1 else 3
        reducing = (f"where the gradients are all-reduced over the {zeroed} fsdp devices (a "
                    "parameter whose input is split by the batch has a whole gradient)")
        # a gathered tied table's two whole gradients, reduced apart (also 16-bit compute;
        # Backend.reduces_tied_zero_gradients_apart)
        # (with microbatches a float32 Python loop's only: a 16-bit one's +9.5 -> +16.5 %)
        apart = (backend.reduces_tied_zero_gradients_apart
                 and (c.data.microbatches == 1 or (not built_scanned and float32_layers)))
        tied_whole = 2 * p.tied_whole if apart else 0
        # (the state copies: the first kernel's is left, beside its whole gradient; the
        # forward's gathered whole kernels are beside them all)
        held = p.first if state_copied else grads["block"][0]
        moments[reducing] = (0, entry_copies, 0, held + copies_of * whole + tied_whole, 0)
        if state_copied:
            moments[at_gathered := "in the forward, the whole kernels gathered beside "
                     f"{c.optimizer.name}'s copies made at the step's entry"] = (
                0, copies, max(gathered, whole), grads["loss"][0], 0)
            grads_why[at_gathered] = grads["loss"][1]
        held_why = ("the first kernel's state copy" if state_copied else grads['block'][1])
        grads_why[reducing] = (f"{held_why}; {copies_of} x the whole gradients of "
                               "the parameters fed by batch-split inputs (the gradient, the "
                               "all-reduce's output" + (", the gathered weight)" if copies_of
                                                        == 3 else ")"))
    split = mesh.shape.get("tensor", 1) > 1
    if (c.data.microbatches > 1 and python_loop and transformer and zeroed > 1 and (
            (backend.regathers_split_microbatch_weights and split and float32_layers
             and setup.remat.checkpoint)
            or (backend.regathers_microbatch_weights and not split and not (
                float32_layers and not redoes_matmuls(anatomy.blocks, undone_policy, size))))):
        # in the microbatch loop's body, the backward's matmuls all-gather the ZeRO-split
        # weights again (16-bit compute, or a remat policy's recomputation: XLA:CPU), early,
        # beside the forward's gathered weights kept for the backward: every ZeRO-split
        # parameter whole, twice, where the backward starts
        regathered_at = (f"{at_loss}, with the weights gathered for the forward and again "
                         "for the backward")
        # (float32 layers: the blocks' weights only, gathered again for their recomputation)
        again = p.zero_blocks if float32_layers else p.zero_whole
        # (FSDP x tensor: the gathered weights a matmul reads, whole twice;
        # Backend.regathers_split_microbatch_weights)
        twice = 2 * p.gathered_whole if split else p.zero_whole + again
        moments[regathered_at] = (saved_all, copies, twice, grads["loss"][0],
                                  loss + split_copy)
        grads_why[regathered_at] = grads["loss"][1]
    if (backend.regathers_remat_weights and c.data.microbatches == 1 and python_loop
            and transformer and zeroed > 1 and setup.remat.checkpoint
            and (mesh.shape.get("tensor", 1) == 1 or backend.regathers_split_remat_weights)):
        # under a checkpointing policy (undone or not) the backward all-gathers the ZeRO-split
        # weights again, early, beside the forward's: at the forward's end every weight a
        # matmul reads is whole twice (XLA:CPU; Backend.regathers_remat_weights)
        regathered_fwd = ("at the forward's end, with every ZeRO-split weight a matmul reads "
                          "gathered whole twice (for the forward and, early, for the backward)")
        twice = (2 * p.gathered_whole if mesh.shape.get("tensor", 1) > 1
                 else 2 * p.zero_matmuls)
        if backend.regathers_recomputed_remat_kernels:  # the recomputation's own gathers
            twice += recomputed_kernels(anatomy.blocks, dict(anatomy.params), undone_policy,
                                        setup, size)
        moments[regathered_fwd] = (0, copies, twice, 0, 0)
        grads_why[regathered_fwd] = "none yet"
    if (backend.regathers_frozen_tied_head and python_loop and zeroed > 1 and p.head_whole
            and mesh.shape.get("tensor", 1) > 1 and anatomy.lm_head.endswith("/embedding")
            and (head_frozen or (backend.regathers_trainable_tied_head and not float32_layers))):
        # at the head's forward matmul: the frozen tied table gathered whole for it and again
        # for the backward's activation gradient (that all-gather made early, beside it), and
        # the table's local shard in a transposed copy of its own
        # (a trainable one's at the step's start: Backend.regathers_trainable_tied_head)
        head_fwd = ("at the LM head's forward matmul (a trainable table's: at the step's "
                    "start), with the tied table gathered whole twice (for the forward and, "
                    "early, for the backward)")
        moments[head_fwd] = tied_head_regathered(p, zeroed, head_frozen, saved_all, copies,
                                                 gathered)
        grads_why[head_fwd] = "none yet" if head_frozen else "the lookup's gradient buffer"
    if (backend.copies_gathered_head_in_microbatch and c.data.microbatches > 1
            and anatomy.scanned and zeroed > 1 and p.head_whole and not float32_layers
            and not whole_table):
        # in the microbatch loop's body, the LM head's gathered weight is rounded whole into
        # a float32 buffer of its own (its transposed layout), kept beside the gathered one
        # (16-bit compute on XLA:CPU)
        head_at = (f"{at_loss}, with the LM head's gathered weight's rounded copy, whole")
        moments[head_at] = (saved_all, copies + p.head_whole, gathered, grads["loss"][0],
                            loss + split_copy)
        grads_why[head_at] = grads["loss"][1]
        if backend.reduces_gathered_head_gradient and p.tied_table:  # at the body's end
            moments[head_end := "at the microbatch body's end, the tied LM head's whole " +
                    "gradient all-reduced"] = (0, copies + p.head_whole, gathered,
                                               grads["loss"][0] + 2 * p.head_whole, split_copy)
            grads_why[head_end] = grads["loss"][1] + "; the head's whole gradient, reduced"
    if blocks.dense_kernel:
        # a depthwise kernel's gradient computed as a dense k x k x C x C convolution, then
        # masked into a copy (Backend.dense_depthwise_gradient), in its block's backward
        dense_at = ("where a depthwise kernel's gradient is computed dense (k x k x C x C) "
                    "and masked into a copy")
        moments[dense_at] = (blocks.dense_before + (0 if backend.frees_outside_first
                                                    else outside),
                             copies + reread_16 + reread_32, gathered, grads["block"][0],
                             blocks.dense_kernel + split_copy)
        grads_why[dense_at] = grads["block"][1]
    scores, after = (recomputed_scores(anatomy.blocks, undone_policy, size)
                     if (backend.recomputed_scores_rows and c.data.microbatches > 1
                         and not built_scanned and transformer
                         and (float32_layers or backend.recomputed_scores_under_16bit)
                         and (c.model.kind != "encoder" or getattr(c.model, "window", 0))
                         and mesh.shape.get("tensor", 1) == 1) else (0, 0))
    if scores:
        # the scores, their masked copy and the softmax recomputed at once beside the saved
        # values, the MLP's too from the backend's rows on (Backend.recomputed_scores_rows)
        if rows < backend.recomputed_scores_rows:
            after_why, held = "; its block's MLP not computed yet", blocks.saved - after
        else:
            after_why, held = "", blocks.saved
        at_scores = ("where the attention's scores are recomputed in the microbatch loop "
                     "(the scores, their masked copy and the softmax at once" + after_why
                     + ")" + split_why)
        # (16-bit compute: the softmax's float32 copy beside the recomputed scores, two of
        # the MLP's widest values and every layer's recomputed normalised values;
        # Backend.recomputed_scores_under_16bit, recomputed_norms_under_16bit)
        extra = (2 * scores if float32_layers
                 else scores + 2 * widest_after_scores(anatomy.blocks, size)
                 + backend.recomputed_norms_under_16bit * normalised_values(anatomy.blocks, size))
        moments[at_scores] = (held, copies, gathered, grads["loss"][0],
                              extra + split_copy)
        grads_why[at_scores] = grads["loss"][1]
    conv_forward_moments(moments, grads_why, anatomy, setup, size, undone_policy,
                         copies=copies, gathered=gathered, split_copy=split_copy,
                         on_one_loop=zeroed > 1 and python_loop, float32_layers=float32_layers,
                         pooled_alone=pooled_alone)
    gathered_batch_moments(moments, grads_why, anatomy, setup, size, micro,
                           float32_layers=float32_layers, copies=copies, gathered=gathered,
                           grads=grads, recompute=blocks.recompute, state_copied=state_copied)
    gathered_kernel_moment(moments, grads_why, anatomy, setup, size, float32_chain=float32_chain,
                           copies=copies, gathered=gathered)
    where = max(moments, key=lambda k: sum(moments[k]))
    saved_b, copies_b, gathered_b, grads_b, transient_b = moments[where]
    terms = [
        Term("parameters", params, f"{size.param} storage, per device under "
             f"{c.sharding.preset}"),
        Term("optimizer state", opt_state, f"{c.optimizer.name}: {state:g} x trainable "
             f"parameters in {state_dtype}", counted=not c.optimizer.offload),
        Term("batch", batch, f"one global batch split over {ways} devices"),
        Term("saved activations", saved_b,
             f"blocks under remat {policy.name}{undone} ({micro // ways} examples per device "
             "and microbatch) and the layers around them"),
        Term("parameter copies", copies_b, f"parameters cast to {stored} for the forward, "
             "kept for the backward" + (" (rounded, in float32 buffers; lookup-only tables "
                                        "have none)" if loop_copies else "")
             + (" (rounded, in float32 buffers" + (" made before the microbatch loop)"
                                                   if c.data.microbatches > 1 else ")")
                if float32_chain and copies_b else "")
             + ("; the 16-bit copies of the kernels the checkpointed blocks' backward re-reads"
                + (", and their float32 copies made in the microbatch's backward"
                   if copies_b >= copies + reread_16 + reread_32 else "")
                if reread_16 and copies_b >= copies + reread_16 else "")
             + ("; the parameter shards' copies made at the step's entry" if entry_copies
                else "")),
        Term("gathered parameters", gathered_b, "whole parameters all-gathered from their "
             "ZeRO shards in the forward, kept for the backward"),
        Term("gradients", grads_b, grads_why[where]),
        Term("peak transients", transient_b, where),
    ]
    if c.optimizer.offload:
        terms.append(Term("optimizer state (host)", opt_state, "offloaded", counted=False))
    if blocks.offloaded:
        terms.append(Term("offloaded activations (host)", blocks.offloaded,
                          f"remat {setup.remat.name} moves them to pinned host memory",
                          counted=False))
    total = sum(t.bytes for t in terms if t.counted)
    return Estimate(name or c.model.kind, total, tuple(terms), platform,
                    time.perf_counter() - start)


def _transformer(anatomy: Anatomy) -> bool:
    """A stack of blocks fed by the batch through matmuls only (no convolution, no MLP
    chain): a transformer."""
    return bool(anatomy.blocks) and not anatomy.chain and not any(
        t.dot == "conv" for b in anatomy.blocks for t in b.values)



def _loss_values(anatomy: Anatomy, size: Sizer) -> list[Tensor]:
    """What the loss gradient materialises where the backward starts. A fused loss gradient
    (XLA:TPU) makes only its output (the first value), and that over the kept value it is
    computed from when it says so (the logits); then, under a 16-bit compute dtype, the
    float32 values it computes on (the logits' float32 copy) are materialised beside them."""
    values = anatomy.loss_workspace
    if not size.backend.fuses_loss_gradient or not values:
        return list(values)
    if not _loss_gradient_over_kept(anatomy):
        return [values[0]]
    if _narrowed_loss_gradient(anatomy, size):  # (Backend.narrows_scanned_loss_gradient)
        return [dataclasses.replace(values[0], dtype="bfloat16")]
    return [t for t in values[1:]
            if size.compute.itemsize < 4 and size.dtype(t.dtype) == np.dtype("float32")]


def _narrowed_loss_gradient(anatomy: Anatomy, size: Sizer) -> bool:
    """Whether a fused loss gradient of float32 layers is made in bfloat16 beside the logits,
    not over them: a scanned stack, its vocabulary not split over the tensor axis
    (``Backend.narrows_scanned_loss_gradient``)."""
    if not (size.backend.narrows_scanned_loss_gradient and anatomy.scanned
            and size.compute == np.dtype("float32")):
        return False
    logits = next(t for t in anatomy.outside if t.name == anatomy.loss_workspace[0].in_place_of)
    return size.shard(logits.shape, logits.axes)[-1] == logits.shape[-1]


def _loss_gradient_over_kept(anatomy: Anatomy) -> bool:
    """Whether the loss gradient is written over a value the forward keeps (the logits);
    a chunked loss's is not."""
    values = anatomy.loss_workspace
    return bool(values) and values[0].in_place_of in {t.name for t in anatomy.outside}


def traced_anatomy(setup: Setup, micro: int) -> Anatomy:
    """The anatomy of a model without shape formulas (custom models), from its abstract
    parameters and the jaxpr of its loss: what the forward keeps for the backward (the remat
    policies the model applies itself are in the jaxpr). Slower than formulas: the model is
    built on abstract shapes and its loss traced (tens to hundreds of milliseconds); the block
    structure is unknown, so the largest kept value stands for the backward's transients."""
    workload = setup.workload
    graphdef, params, rest = nnx.split(setup.abstract_model, nnx.Param, ...)
    params = setup.precision.cast_to_param(params)
    frozen = (freeze.frozen_mask(params, setup.freeze_patterns)
              if setup.freeze_patterns else None)
    objective = make_objective(graphdef, workload.loss, setup.precision, frozen)
    batch = {k: jax.ShapeDtypeStruct((micro, *v.shape[1:]), v.dtype)
             for k, v in workload.batch.items()}
    kept = analytic.saved_residuals(
        lambda p, r, b: objective(p, jax.lax.stop_gradient(r), jax.lax.stop_gradient(b))[0],
        params, rest, batch) or []
    values = tuple(
        Tensor(f"{r.what}#{i}", r.shape, ("batch", *(None,) * (len(r.shape) - 1))
               if r.shape and r.shape[0] == micro else (None,) * len(r.shape), r.dtype,
               needed=True) for i, r in enumerate(kept))
    largest = max(values, key=lambda t: math.prod(t.shape) * np.dtype(t.dtype).itemsize,
                  default=None)
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return Anatomy(
        params=tuple((sharding.path_of(p), tuple(x.shape)) for p, x in leaves),
        blocks=(), outside=values, loss_workspace=(largest,) if largest else (),
        example=tuple((tuple(v.shape[1:]), str(v.dtype)) for v in workload.batch.values()),
    )
