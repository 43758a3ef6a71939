"""What a model's parameters take per device: their storage, their ZeRO shards gathered whole
for the matmuls, and the gradients made whole before a reduction (the estimate's parameter
figures, :func:`param_terms`; used by :mod:`jaxmem.estimate`).

Example:
  >>> import numpy as np, jaxmem
  >>> from jaxmem.backends import BACKENDS
  >>> from jaxmem.config import Config
  >>> from jaxmem.sizing import Sizer
  >>> setup = jaxmem.resolve(Config())
  >>> anatomy = setup.config.model.anatomy(setup.build_options, 8)
  >>> f32 = np.dtype("float32")
  >>> size = Sizer(setup.mesh, setup.rules, f32, f32, BACKENDS["cpu"])
  >>> p = param_terms(anatomy, setup, size, rows=8 * 64)
  >>> p.trainable == p.total, p.gathered  # nothing frozen, nothing ZeRO-split
  (True, 0)
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from jaxmem import sharding
from jaxmem.models.anatomy import Anatomy
from jaxmem.setup import Setup
from jaxmem.sizing import Sizer, local_shape, param_spec, spec_axes, zero_joined, zero_split

#: XLA's SPMD partitioner all-gathers a ZeRO-sharded weight for a matmul when the weight
#: (its dimensions on a device, before the ZeRO split: a tensor-parallel shard) is less than
#: this many times the rows it multiplies on a device (a transformer's tokens); against a few
#: rows (an MLP on a small per-device batch) it moves the activations instead. At exactly 16
#: times it moves them (measured: XLA:TPU, an fsdp MLP's 16384-wide kernels against 1024 rows
#: a device, collective-permuted activations and no gathered kernel, +34 % -> -7 %; XLA:CPU an
#: fsdp encoder's 8192-token table against 512 rows, +13.9 % -> +1.4 %)
GATHER_RATIO = 16


class Params(NamedTuple):
    """What the parameters take per device, in their storage dtype."""

    total: int
    trainable: int
    largest: int  # the largest trainable parameter
    stacked: int  # trainable parameters of a scanned stack
    stacked_all: int  # all parameters of a scanned stack, frozen ones too
    largest_outside: int  # the largest trainable parameter outside a scanned stack
    gathered: int  # what the ZeRO all-gathers add (kept from the forward to the backward)
    whole_layer: int  # one scanned layer's trainable parameters, their ZeRO shards joined
    whole_outside: int  # the largest trainable parameter outside a scanned stack, joined
    largest_read_back: int  # the largest trainable parameter but a chain's first kernel
    but_first: int  # the trainable parameters but a chain's first kernel
    first: int  # a chain's first kernel, if trainable
    second: int  # a chain's second kernel, if trainable
    lookups: int  # the lookup-only tables that no mesh axis splits
    largest_dense: int  # the largest trainable parameter but those lookup-only tables
    zero_whole: int  # every ZeRO-split parameter whole, in the compute dtype (gathered)
    zero_blocks: int  # those of them in the blocks
    tied_table: int  # a token table tied to the LM head (read by a lookup too), trainable
    head_whole: int  # a ZeRO-split LM head gathered whole (gathers_lm_head), in the compute dtype
    lookup_whole: int  # the largest trainable table a lookup reads outside a scanned stack,
    # its ZeRO shards joined, whose gradient is reduced over the batch (not scattered into
    # the device's shard); 0 where none
    zero_matmuls: int  # zero_whole less the tables only a lookup reads (not gathered whole)
    tied_whole: int  # a trainable tied token table's ZeRO shards joined, in the parameters'
    # dtype, where the partitioner gathers it (its rows fewer than GATHER_RATIO x the tokens)
    gathered_whole: int  # those ``gathered`` counts that a matmul reads, whole (compute dtype)


def _scattered(size: Sizer, anatomy: Anatomy, path: str, spec: tuple[Any, ...],
               zero: set[str], rows: int) -> bool:
    """Whether a lookup table's gradient is scattered into the device's shard: split over a
    non-ZeRO axis (its vocabulary over the tensor axis; ``scatters_sharded_lookup_gradients``),
    or a lookup-only (untied) token table ZeRO-split on its rows, longer than the tokens of the
    devices sharing it (``scatters_zero_lookup_gradients``; not a table looked up by position:
    its gradient is reduced over the batch)."""
    if path not in anatomy.lookups:
        return False
    axes = [a for e in spec for a in spec_axes(e)]
    if size.backend.scatters_sharded_lookup_gradients and any(a not in zero for a in axes):
        return True
    return _scatters_zero_lookup(size, anatomy, path, spec, zero, rows)


def _scatters_zero_lookup(size: Sizer, anatomy: Anatomy, path: str, spec: tuple[Any, ...],
                          zero: set[str], rows: int) -> bool:
    """``Backend.scatters_zero_lookup_gradients``: a lookup-only token table split by ZeRO
    axes only, on its rows, and more rows than the tokens (``rows`` a device) of the devices
    it is split over: neither gathered whole nor given a whole gradient."""
    if not (size.backend.scatters_zero_lookup_gradients and path in anatomy.lookups
            and path != anatomy.lm_head and path not in anatomy.positions):
        return False
    axes = [a for e in spec for a in spec_axes(e)]
    ways = math.prod(size.mesh.shape[a] for a in spec_axes(spec[0]))
    return (bool(axes) and all(a in zero for a in axes) and ways > 1
            and _table_rows(anatomy, path) > rows * ways)


def _looked_up_in_shard(size: Sizer, anatomy: Anatomy, path: str, spec: tuple[Any, ...],
                        zero: set[str]) -> bool:
    """``Backend.looks_up_tensor_split_zero_tables``: a lookup-only (untied) table whose
    rows are split over a non-ZeRO axis (tensor) is looked up from its shard under ZeRO too
    (the token ids are all-gathered, not the table): never gathered whole."""
    if not (size.backend.looks_up_tensor_split_zero_tables and path in anatomy.lookups
            and path != anatomy.lm_head and spec):
        return False
    axes = [a for e in spec for a in spec_axes(e)]
    return (any(a in zero for a in axes)
            and any(a not in zero and size.mesh.shape[a] > 1 for a in spec_axes(spec[0])))


def _table_rows(anatomy: Anatomy, path: str) -> int:
    """A parameter's leading dimension (a table's rows)."""
    return dict(anatomy.params)[path][0]


def param_terms(anatomy: Anatomy, setup: Setup, size: Sizer, rows: int) -> Params:
    """The parameters' bytes per device; gathered: the whole parameter in the compute dtype
    less its shard, for each ZeRO-sharded weight the partitioner gathers."""
    mesh, rules = size.mesh, setup.rules
    frozen = setup.freeze_patterns
    total = trainable = largest = stacked = stacked_all = outside = gathered = 0
    whole_layer = whole_outside = read_back = but_first = first = second = lookups = 0
    dense = zero_whole = zero_blocks = tied = head_whole = lookup_whole = zero_matmuls = 0
    tied_whole = gathered_whole = 0
    zero = set(rules.zero)
    tied_path = anatomy.lm_head if anatomy.lm_head.endswith("/embedding") else None
    # a Python-loop stack's gathered weights are gathered again for the backward, none kept
    # from the forward, when no microbatch loop hoists their all-gathers
    # (Backend.regathers_loop_weights)
    kept = not (size.backend.regathers_loop_weights and not anatomy.scanned
                and not anatomy.chain and setup.config.data.microbatches == 1)
    for path, shape in anatomy.params:
        spec = param_spec(path, shape, setup, mesh)
        local = local_shape(shape, spec, mesh)
        n = size.nbytes(local, size.param)
        total += n
        in_stack = anatomy.scanned and path.startswith(setup.config.model.BLOCKS_PATH or "\0")
        unzeroed = zero_joined(shape, spec, mesh, zero)
        head = size.backend.gathers_lm_head and path == anatomy.lm_head
        zeroed = zero_split(spec, zero)
        # a token table scattered into (looked up from) its shard is never gathered whole
        in_shard = _looked_up_in_shard(size, anatomy, path, spec, zero)
        scatters = in_shard or _scatters_zero_lookup(size, anatomy, path, spec, zero, rows)
        whole = size.nbytes(unzeroed, size.compute) if zeroed and not scatters else 0
        zero_whole += whole
        if path not in anatomy.lookups or path == anatomy.lm_head:
            zero_matmuls += whole
        if path.startswith(setup.config.model.BLOCKS_PATH or "\0"):
            zero_blocks += whole
        if zeroed and not scatters and (head or max(unzeroed[-2:]) < GATHER_RATIO * rows):
            extra = whole - size.nbytes(local, size.compute)
            if in_stack:  # a scanned stack gathers one layer per loop step
                extra //= shape[0]
            gathered += extra if kept else 0
            if path not in anatomy.lookups or path == anatomy.lm_head:
                gathered_whole += whole
            if head:
                head_whole = whole
        if in_stack:
            stacked_all += n
        lookup = path in anatomy.lookups and not any(spec_axes(e) for e in spec)
        if lookup or (size.backend.looks_up_split_tables_unrounded and path in anatomy.lookups
                      and (not zeroed or in_shard)):
            lookups += n
        if any(fnmatch.fnmatchcase(path, p) for p in frozen):
            continue
        trainable += n
        if path == anatomy.lm_head and path.endswith("/embedding"):
            tied = n
            ratio = size.backend.tied_gather_ratio  # (Backend.tied_gather_ratio)
            if zeroed and (max(unzeroed[-2:]) <= ratio * rows if ratio
                               else max(unzeroed[-2:]) < GATHER_RATIO * rows):
                tied_whole = size.nbytes(unzeroed, size.param)
        largest = max(largest, n)
        if not lookup:
            dense = max(dense, n)
        if path not in anatomy.chain[:1]:
            read_back = max(read_back, n)
            but_first += n
        else:
            first = n
        if path in anatomy.chain[1:2]:
            second = n
        joined = size.nbytes(unzeroed, size.param)
        if _scattered(size, anatomy, path, spec, zero, rows):
            joined = n  # its lookup's gradient is scattered into this device's shard
        if in_stack:
            stacked += n
            whole_layer += joined // shape[0]
        else:
            outside = max(outside, n)
            whole_outside = max(whole_outside, joined)
            scattered = _scattered(size, anatomy, path, spec, zero, rows)
            if (path in anatomy.lookups or path == tied_path) and not scattered:
                lookup_whole = max(lookup_whole, joined)
    return Params(total, trainable, largest, stacked, stacked_all, outside, gathered, whole_layer,
                   whole_outside, read_back, but_first, first, second, lookups, dense,
                   zero_whole, zero_blocks, tied, head_whole, lookup_whole, zero_matmuls,
                   tied_whole, gathered_whole)


def scanned_layer_gradients(p: Params, setup: Setup, size: Sizer, scanned_16bit: bool) -> int:
    """A 16-bit scanned layer's float32 weight gradients, made in its backward loop's body
    before they are written into the stack's, and, where they are all-reduced over
    data-parallel devices, that all-reduce's output (``Backend.holds_scanned_layer_gradients``;
    not with microbatches, ZeRO, or an optimizer copying its state before the loop). Under
    FSDP x tensor with no recomputation (remat none, except:*): the layer's float32 weights
    joined over the ZeRO axes (``Backend.holds_zero_tensor_scanned_layer``).
    ``scanned_16bit``: a scanned stack of more than one layer under 16-bit compute."""
    c, backend, shape = setup.config, size.backend, size.mesh.shape
    batch = {a: n for a, n in shape.items() if a in sharding.BATCH_AXES}
    zeroed = math.prod(n for a, n in batch.items() if a in setup.rules.zero) > 1
    if (backend.holds_zero_tensor_scanned_layer and scanned_16bit and zeroed
            and shape.get("tensor", 1) > 1 and c.data.microbatches == 1
            and (setup.remat.name == "none" or setup.remat.name.startswith("except:"))):
        return p.whole_layer  # (Backend.holds_zero_tensor_scanned_layer)
    if (not (backend.holds_scanned_layer_gradients and scanned_16bit) or c.data.microbatches > 1
            or c.optimizer.name in backend.copies_scanned_16bit_state
            or zeroed):
        return 0
    return p.whole_layer * (2 if math.prod(batch.values()) > 1 else 1)


def batch_split_gradients(anatomy: Anatomy, setup: Setup, size: Sizer, rows: int) -> int:
    """The whole gradients of a matmul chain's kernels whose input is split by the batch,
    which the backward makes from each device's rows and all-reduces over the ZeRO devices.

    The chain's first input is the batch. A kernel ZeRO-split on its input dimension (or not
    split) keeps it so: its weight is gathered, its output split by the batch again. A kernel
    split on its output dimension takes its input whole instead and leaves the rest of the
    chain split by features, with sharded gradients.

    A model without such a chain (a transformer's residual stream, split by the batch into
    every block; a CNN) has every trainable parameter's gradient made whole that way: XLA:CPU
    all-reduces a Python-loop stack's FSDP gradients whole and slices each device's shard."""
    mesh, zero, shapes = size.mesh, set(setup.rules.zero), dict(anatomy.params)

    def joined(shape: Sequence[int], spec: tuple[Any, ...]) -> int:  # ZeRO shards joined
        return size.nbytes(zero_joined(shape, spec, mesh, zero), size.param)

    def scattered(path: str, spec: tuple[Any, ...]) -> bool:
        return _scattered(size, anatomy, path, spec, zero, rows)

    if not anatomy.chain:
        return sum(joined(shape, spec) for path, shape in anatomy.params
                   for spec in [param_spec(path, shape, setup, mesh)]
                   if not any(fnmatch.fnmatchcase(path, p) for p in setup.freeze_patterns)
                   and not scattered(path, spec))
    whole = 0
    for path in anatomy.chain:
        shape = shapes[path]
        spec = param_spec(path, shape, setup, mesh)
        if any(a in zero for a in spec_axes(spec[-1])):
            break
        whole += joined(shape, spec)
    return whole


def held_block_gradients(anatomy: Anatomy, setup: Setup, size: Sizer, kernels: int = 2) -> int:
    """The gradients of one block's ``kernels`` largest matmul kernels (a transformer's MLP
    kernels) and of the largest trainable parameter outside the blocks, per device in the
    parameters' dtype (``Backend.holds_loop_block_gradients``)."""
    frozen, shapes, mesh = setup.freeze_patterns, dict(anatomy.params), size.mesh

    def local(path: str) -> int:
        if any(fnmatch.fnmatchcase(path, f) for f in frozen):
            return 0
        shape = shapes[path]
        return size.nbytes(local_shape(shape, param_spec(path, shape, setup, mesh), mesh),
                           size.param)

    layers = sum(b.count for b in anatomy.blocks)
    inside: dict[str, int] = {}  # a block's kernels by their path less the layer index
    for path in shapes:
        if "/blocks/" in path and path.endswith("/kernel"):
            name = "/".join(x for x in path.split("/") if not x.isdigit())
            # a scanned stack's kernel holds every layer's
            n = local(path) // (layers if name == path else 1)
            inside[name] = max(inside.get(name, 0), n)
    outside = max((local(k) for k in shapes if "/blocks/" not in k), default=0)
    return sum(sorted(inside.values(), reverse=True)[:kernels]) + outside


def _first_kernel(anatomy: Anatomy, setup: Setup,
                  size: Sizer) -> tuple[tuple[int, ...], tuple[Any, ...]]:
    """The shape and PartitionSpec of a matmul chain's first kernel (it reads the batch)."""
    shape = tuple(dict(anatomy.params)[anatomy.chain[0]])
    return shape, param_spec(anatomy.chain[0], shape, setup, size.mesh)


def gathered_batch(anatomy: Anatomy, setup: Setup, size: Sizer, micro: int,
                   float32_layers: bool) -> int:
    """The batch's float inputs all-gathered whole (``micro`` rows, the global batch) where a
    float32 matmul chain's first kernel is ZeRO-split on its output dimension (the larger:
    ``sharding.param_spec``) and on nothing else, without microbatches: XLA:CPU's partitioner
    gathers the smaller operand, the batch's rows, not the kernel, and the chain goes on split
    by features (``Backend.gathers_batch_for_output_split_kernels``); 0 otherwise."""
    zero = set(setup.rules.zero)
    if not (size.backend.gathers_batch_for_output_split_kernels and anatomy.chain
            and float32_layers and setup.config.data.microbatches == 1):
        return 0
    shape, spec = _first_kernel(anatomy, setup, size)
    if len(spec) != 2 or not any(a in zero for a in spec_axes(spec[-1])) or spec_axes(spec[0]):
        return 0
    return sum(size.nbytes((micro, *s), np.dtype(d)) for s, d in anatomy.example
               if np.dtype(d).kind == "f")


def gathered_batch_moments(moments: dict, grads_why: dict, anatomy: Anatomy, setup: Setup,
                           size: Sizer, micro: int, *, float32_layers: bool, copies: int,
                           gathered: int, grads: dict[str, tuple[int, str]], recompute: int,
                           state_copied: bool) -> None:
    """Adds to the estimate's ``moments`` (where -> (saved, copies, gathered, gradients,
    transients)) and ``grads_why`` those where the batch's rows gathered whole
    (``gathered_batch``) are live: where the chain's first kernel's gradient is made, its saved
    input beside the largest gradient and an activation gradient (the other saved values dead);
    with ZeRO state copies made at the entry (lion), in the forward beside them, gathered twice
    under remat (the forward's, and early for the recomputation). The rest: the estimate's
    parameter copies, gathered weights, gradients (name -> (bytes, why)), a block's
    recomputation, and whether the state is copied."""
    rows = gathered_batch(anatomy, setup, size, micro, float32_layers)
    if not rows:
        return
    at = ("where the chain's first kernel's gradient is made, beside the batch's rows gathered "
          "whole (its saved input; the other saved values are dead)")
    moments[at] = (0, copies, gathered + rows, grads["block"][0], recompute)
    grads_why[at] = grads["block"][1]
    if state_copied:
        at = (f"in the forward, the batch's rows gathered whole beside "
              f"{setup.config.optimizer.name}'s copies made at the step's entry")
        moments[at] = (0, copies, gathered + rows * (2 if setup.remat.checkpoint else 1),
                       grads["loss"][0], 0)
        grads_why[at] = grads["loss"][1]


def gathered_kernel_moment(moments: dict, grads_why: dict, anatomy: Anatomy, setup: Setup,
                           size: Sizer, *, float32_chain: bool, copies: int,
                           gathered: int) -> None:
    """Adds to ``moments`` the forward's moment where a 16-bit MLP chain read through float32
    rounded copies (``Backend.float32_chain_copies``), without microbatches, gathers its first
    kernel whole, ZeRO-split on its input dimension (the larger: ``sharding.param_spec``):
    XLA:CPU all-gathers the float32 rounded kernel (the batch's rows are the smaller operand
    only when split on the output: ``gathered_batch``), held to the backward's end beside every
    kernel's rounded copy (``copies``) (``Backend.gathers_input_split_first_kernel``)."""
    zero = set(setup.rules.zero)
    if not (size.backend.gathers_input_split_first_kernel and float32_chain and anatomy.chain
            and setup.config.data.microbatches == 1):
        return
    shape, spec = _first_kernel(anatomy, setup, size)
    if len(spec) != 2 or not any(a in zero for a in spec_axes(spec[0])) or spec_axes(spec[-1]):
        return
    at = ("in the forward, the chain's first kernel gathered whole (float32, split on its "
          "input dimension) beside every kernel's rounded copy")
    moments[at] = (0, copies, gathered + size.nbytes(tuple(shape), size.compute), 0, 0)
    grads_why[at] = "none yet"


def tied_head_regathered(p: Params, zeroed: int, frozen: bool, saved: int, copies: int,
                         gathered: int) -> tuple[int, int, int, int, int]:
    """The moment (saved, copies, gathered, gradients, transients) where, under FSDP x tensor,
    a loop GPT's tied token table (its tensor slice, float32) is gathered whole for the LM
    head's forward matmul and again, early, for the backward's activation gradient, beside its
    local shard's transposed copy (``Backend.regathers_frozen_tied_head``). ``gathered``
    already holds one whole table less its shard (the parameter). A trainable table
    (``Backend.regathers_trainable_tied_head``, 16-bit compute): at the step's start, before
    any saved value, both gathers are whole tables of their own, beside the rounded copies and
    the lookup's gradient, a shard-sized float32 scatter-add buffer already made."""
    shard = p.head_whole // zeroed
    if frozen:
        return (saved, copies, gathered + p.head_whole, 0, shard)
    return (0, copies, gathered + p.head_whole + shard, p.tied_table, shard)
