"""What a stack's blocks keep for the backward and hold in it, per device: the estimate's
activation terms (:func:`jaxmem.estimate`).

A remat policy becomes a predicate over a block's values (:func:`saveable`: the rule of
``jax.checkpoint``, by policy name); :func:`block_terms` adds up, for a backend profile, what
every block keeps and what the widest block's backward holds at once (its recomputation, one
stage's activation gradients, less what that stage no longer needs).

Example:
  >>> from jaxmem import remat
  >>> from jaxmem.block_memory import saveable
  >>> from jaxmem.models.anatomy import Tensor
  >>> keep = saveable(remat.POLICIES["dots"])
  >>> up, act = (Tensor(n, (2, 8), ("batch", None), dot=d) for n, d in (("up", "dot"), ("a", "")))
  >>> keep(up), keep(act)
  (True, False)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence

import numpy as np

from jaxmem import remat as remat_policies
from jaxmem.backends import Backend
from jaxmem.errors import Unsupported
from jaxmem.models.anatomy import (
    COMPUTE,
    ROUNDED,
    Block,
    Tensor,
    recomputation,
    recomputed,
    saved,
)
from jaxmem.models.stack import nested_group_size
from jaxmem.remat import RematPolicy
from jaxmem.setup import Setup
from jaxmem.sizing import Sizer, param_spec, spec_axes, zero_joined, zero_split


def _names(policy: RematPolicy) -> Callable[[Tensor], bool]:
    return lambda t: t.tag in policy.names


def _constant(value: bool) -> Callable[[RematPolicy], Callable[[Tensor], bool]]:
    return lambda _: (lambda t: value)


def _dots(batched: bool) -> Callable[[RematPolicy], Callable[[Tensor], bool]]:
    kinds = ("dot", "batched", "conv") if batched else ("dot",)
    return lambda _: (lambda t: t.dot in kinds)


#: what a policy may keep on the device, by name, then by the kind of a parametric name
#: (``save:``, ``except:``, ``offload:``); offloading policies keep nothing on the device
SAVEABLE: dict[str, Callable[[RematPolicy], Callable[[Tensor], bool]]] = {
    "none": _constant(True),
    "everything_saveable": _constant(True),
    "full": _constant(False),
    "nothing_saveable": _constant(False),
    "offload_dot_with_no_batch_dims": _constant(False),
    "dots": _dots(True),
    "dots_saveable": _dots(True),
    "checkpoint_dots": _dots(True),
    "dots_no_batch": _dots(False),
    "dots_with_no_batch_dims_saveable": _dots(False),
    "checkpoint_dots_with_no_batch_dims": _dots(False),
    "minimal": _names,
    "save": _names,
    # the value under a tag is itself untagged, so ``except:`` saves it anyway (measured:
    # the jaxpr keeps what it keeps without remat)
    "except": _constant(True),
    "offload": _constant(False),
}
#: what an offloading policy moves to host memory
OFFLOADED: dict[str, Callable[[RematPolicy], Callable[[Tensor], bool]]] = {
    "offload_dot_with_no_batch_dims": _dots(False),
    "offload": _names,
}


SAVEABLE_NONE = remat_policies.POLICIES["none"]


def _policy_key(policy: RematPolicy) -> str:
    return policy.name if policy.name in SAVEABLE else policy.name.partition(":")[0]


def saveable(policy: RematPolicy) -> Callable[[Tensor], bool]:
    """What ``policy`` may keep on the device, as a predicate over a block's values."""
    key = _policy_key(policy)
    if key not in SAVEABLE:
        raise Unsupported(f"the estimate does not know remat policy {policy.name!r}")
    return SAVEABLE[key](policy)


@dataclasses.dataclass(frozen=True)
class Blocks:
    """What the blocks of a stack hold, per device."""

    saved: int  # kept for the backward by all blocks together
    offloaded: int  # moved to host memory by an offloading policy
    recompute: int  # the largest block's recomputed values plus its activation gradients
    widest: str  # which block that is
    before: int  # saved by that block and the blocks before it (the later ones' backward is done)
    freed: int = 0  # that block's saved values its stage's backward no longer holds
    sliced: int = 0  # that block's saved values a scanned backward copies out of the stack
    dense_kernel: int = 0  # a depthwise kernel's gradient computed dense, and its masked copy
    dense_before: int = 0  # saved by the blocks up to that depthwise convolution's block
    dense_next: int = 0  # the masked dense depthwise gradient of the block after the widest
    # ``Backend.pools_before_kernel_gradient``: the widest block's backward is its pooling's
    # or its ReLU's, before its kernel's gradient; the float32 transposed kernel copies held
    pooled: bool = False
    transposed_kernels: int = 0
    # ``Backend.holds_softmax_forward``: the last block's softmax forward, with the saved
    # values of the blocks before it and of its stages up to the scores
    softmax_forward: int = 0


def _narrowed(values: Sequence[Tensor], size: Sizer) -> list[Tensor]:
    """``values`` as the backend stores them: a float32 matmul-only value in bfloat16 where
    it computes float32 matmuls from bfloat16 operands."""
    if not (size.backend.narrows_matmul_operands and size.compute == np.dtype("float32")):
        return list(values)
    return [dataclasses.replace(t, dtype="bfloat16")
            if (t.matmul_only or t.matmul_operand) and t.dtype == COMPUTE else t
            for t in values]


def kept_bytes(kept: list[Tensor], size: Sizer, batch_is_compute: bool) -> int:
    """Bytes of kept values; the batch cast to the compute dtype is the argument itself when
    the batch already has that dtype; narrowed where the backend narrows matmul operands."""
    return size.tensors(_narrowed([t for t in kept if not (t.batch_cast and batch_is_compute)],
                                  size))


def _at(stage: str, values: Sequence[Tensor]) -> list[Tensor]:
    """The values a block's backward holds in ``stage`` (all of them for no stage)."""
    return [t for t in values if t.stage in (stage, "")] if stage else list(values)


def _fused_recompute(redo: list[Tensor], kept: set[str], backend: Backend,
                     float32_layers: bool) -> tuple[list[Tensor], set[str]]:
    """What a backend fusing elementwise producers into their consumers materialises of the
    recomputed values ``redo``: no matmul operand (computed inside its matmuls); a value with
    ``recomputed_as`` in that dtype, or nothing when its inputs are kept (the backward's
    fusion reads them); a softmax of a kept input nothing, or its float32 shifted input
    under 16-bit compute (``Backend.fuses_softmax_recompute``). Also returns the names of
    the values so read from kept inputs: a gradient ``in_place_of`` one of them is written
    over the kept input instead."""
    out, read = [], set()
    for t in redo:
        if t.matmul_operand:
            continue
        if t.softmax and backend.fuses_softmax_recompute and set(t.inputs) <= kept:
            if not float32_layers:
                out.append(dataclasses.replace(t, dtype="float32"))
            continue
        if t.recomputed_as and set(t.inputs) <= kept:
            read.add(t.name)
            continue
        if t.recomputed_as and backend.recomputes_16bit_whole and not float32_layers:
            read.add(t.name)  # (Backend.recomputes_16bit_whole)
            out.append(t)
            continue
        out.append(dataclasses.replace(t, dtype=t.recomputed_as) if t.recomputed_as else t)
    return out, read


def unfused(kept: list[Tensor], backend: Backend) -> list[Tensor]:
    """What ``backend`` keeps of ``kept``: where it fuses elementwise producers into
    matmuls, a matmul operand whose inputs are all kept is computed again inside its matmuls
    instead."""
    if not backend.fuses_matmul_operands:
        return list(kept)
    names = {t.name for t in kept}
    return [t for t in kept if not (t.matmul_operand and set(t.inputs) <= names)]


#: output-channel slices of a convolution computed slice by slice that its block's backward
#: holds at once (XLA:TPU, measured: a double-buffered pair and two more)
CONV_SLICES = 4


def _conv_slices(block: Block, kernels: dict[str, tuple[int, ...]], setup: Setup,
                 size: Sizer) -> int:
    """Bytes of the output-channel slices a backend computing ZeRO-sharded convolutions of
    the images slice by slice holds in ``block``'s backward (the largest convolution's)."""
    if not size.backend.slices_sharded_convs:
        return 0
    images = {t.name for t in block.values if t.batch_cast}
    zero = set(setup.rules.zero)
    out = 0
    for t in block.values:
        if not (t.kernel in kernels and t.inputs and set(t.inputs) <= images):
            continue
        shape = kernels[t.kernel]
        spec = param_spec(t.kernel, shape, setup, size.mesh)
        ways = math.prod(size.mesh.shape[a] for a in spec_axes(spec[-1])
                         if a in zero)
        if ways > 1:
            local = size.shard(t.shape, t.axes)
            one = size.nbytes((*local[:-1], local[-1] // ways), size.dtype(t.dtype), minor=True)
            out = max(out, CONV_SLICES * one)
    return out


def _backend_kept(block: Block, kept: list[Tensor], size: Sizer, remat: bool,
                  loop: bool = False, sliced: bool = False,
                  except_undone: bool = False) -> list[Tensor]:
    """``kept`` and what the backend keeps beside it for the backward: with one example of
    the batch per device, a batched matmul's output beside a kept value made from it (the
    attention scores beside their softmax; in a Python ``loop`` stack, below the backend's
    row limit; not in a scanned stack under a checkpointing policy where the backend keeps
    only what the policy saves, nor, ``sliced``, where its backward copies the softmax out of
    the stacked residuals, ``operand_slices``); the same in a ``loop`` stack with one head per
    device, without the row limit where an ``except:*`` policy was undone (``except_undone``);
    without remat, the all-reduced output of a matmul contracting a tensor-split dimension (a
    row-parallel projection's)."""
    backend, names = size.backend, {t.name for t in kept}
    by_name = block.by_name()
    row_limit = backend.loop_batched_dot_rows if loop else 0
    # a scanned stack's residuals under a checkpointing policy are what the policy saves
    scores = backend.keeps_one_example_batched_dots and not (
        backend.scan_residuals_by_policy and (remat or sliced) and not loop)
    extra = []
    for t in block.values:
        if t.name in names:
            continue
        local = size.shard(t.shape, t.axes)
        # one head per device (``Backend.keeps_one_head_batched_dots``): no row limit
        # under an undone ``except:*`` policy
        one_head = (backend.keeps_one_head_batched_dots and loop and 1 in local[1:-2])
        limit = 0 if except_undone and (one_head or backend.except_keeps_batched_dots) \
            else row_limit
        if (scores and t.dot == "batched" and (local[0] == 1 or one_head)
                and not (limit and math.prod(local[:-1]) >= limit)
                and any(t.name in u.inputs for u in kept)):
            extra.append(t)
        elif backend.keeps_reduced_matmul_outputs and not remat and _reduced(t, by_name, size):
            extra.append(t)
    return [*kept, *extra]


def _ways(t: Tensor, size: Sizer) -> int:
    """How many ways the mesh splits a value."""
    return math.prod(t.shape) // max(1, math.prod(size.shard(t.shape, t.axes)))


def _split_stream(block: Block, size: Sizer, loop: bool, undone: RematPolicy | None) -> int:
    """Bytes a Python-``loop`` block keeps beside its saved values without remat (or under an
    undone policy, not ``except:*``) under tensor parallelism without ZeRO, from
    ``Backend.split_loop_stream_rows`` rows a device: two float32 residual-stream-wide values
    (the row-parallel projections' outputs kept both before and after their reshape); without
    a tensor axis, an attention block under remat none or an undone remat full, from
    ``Backend.loop_stream_rows``: three (float32 projections, norm values, 2-D dot copies)."""
    split = size.mesh.shape.get("tensor", 1) > 1
    limit = size.backend.split_loop_stream_rows if split else size.backend.loop_stream_rows
    if not (limit and loop and size.mesh.shape.get("fsdp", 1) == 1
            and (split or any(t.dot == "batched" for t in block.values))):
        return 0
    if undone is not None and (undone.name.startswith("except:") if split
                               else undone.name != "full"):
        return 0
    inputs = [t for t in block.values if t.block_input][:1]
    if not inputs:
        return 0
    local = size.shard(inputs[0].shape, inputs[0].axes)
    if math.prod(local[:-1]) < limit:
        return 0
    return (2 if split else 3) * size.tensors([dataclasses.replace(inputs[0], dtype="float32")])


def _reduced(t: Tensor, by_name: dict[str, Tensor], size: Sizer) -> bool:
    """``t`` is a matmul's output contracting a tensor-split dimension (all-reduced: a
    row-parallel projection's)."""
    return t.dot == "dot" and any(_ways(by_name[i], size) > _ways(t, size)
                                  for i in t.inputs if i in by_name)


def _past_reduction(block: Block, undone: RematPolicy | None, size: Sizer) -> set[str]:
    """The values of ``block`` that an ``undone`` remat policy still recomputes
    (``Backend.remat_past_reduction_rows``): those of the stages after the first stage
    whose all-reduced matmul output the policy saves neither as it is nor as a value made
    from it, but the stage's inputs (made in the forward from values before it)."""
    limit = size.backend.remat_past_reduction_rows
    if undone is None or not limit:
        return set()
    keep, by_name = saveable(undone), block.by_name()
    for t in block.values:
        if (t.stage and _reduced(t, by_name, size) and not keep(t)
                and math.prod(size.shard(t.shape, t.axes)[:-1]) < limit
                and not any(keep(u) for u in block.values if t.name in u.inputs)):
            later = _later_stages(block, t.stage)
            past = {u.name for u in block.values if u.stage in later}
            return {u.name for u in block.values
                    if u.name in past and not (u.inputs and not set(u.inputs) & past)}
    return set()


def block_terms(blocks: Sequence[Block], setup: Setup, policy: RematPolicy, size: Sizer,
                 batch_is_compute: bool, shares: bool = False,
                 kernels: dict[str, tuple[int, ...]] | None = None,
                 undone: RematPolicy | None = None, float32_layers: bool = True,
                 frees_stages: bool = False, slices_operands: bool = False,
                 scan_stages: bool = False) -> Blocks:
    """What ``blocks`` keep and their widest backward holds under ``policy``; ``undone``: the
    configured policy where the backend undid it (``policy`` is then remat none);
    ``float32_layers``: the layers compute in float32; ``frees_stages``: a block's own
    buffers (a Python loop's, not a scanned stack's slices), so a stage's backward no longer
    holds the saved values of the stages after it (their backward is done);
    ``slices_operands``: a scanned backward holds copies of the block's kept matmul operands
    (:func:`operand_slices`) beside its recomputation; ``scan_stages``: a scanned causal
    block's backward under a checkpointing policy holds its stages as
    ``Backend.scan_remat_stages`` measured (:func:`_scan_stage`)."""
    c = setup.config
    every = c.remat.every
    none = SAVEABLE["none"](policy)
    device, host = saveable(policy), OFFLOADED.get(_policy_key(policy))
    total = offloaded = workspace = before = largest = widest_freed = widest_sliced = 0
    # (a configured Python loop's: a one-layer scan estimated as a loop may keep its while
    # loop, where the stream-wide values of _split_stream were not measured)
    python_stack = frees_stages and getattr(setup.config.model, "stack", "loop") == "loop"
    widest = ""
    index = 0
    widest_at = 0
    dense = (0, 0)  # the largest of a block's dense depthwise gradient and the saved beside it
    # under 16-bit compute without an undone remat recomputing a matmul or convolution
    plain_16bit = not float32_layers and not redoes_matmuls(blocks, undone, size)
    # a microbatch loop's float32 step under an undone remat that saves nothing
    # (``Backend.frees_saved_in_microbatch_remat``)
    looped = (size.backend.frees_saved_in_microbatch_remat and float32_layers
              and c.data.microbatches > 1 and saves_nothing(blocks, undone))
    if looped:  # the microbatch's slice of the batch is a buffer of its own
        batch_is_compute = False
    # conv blocks under 16-bit compute where an undone remat recomputes a convolution: the
    # pooling's backward pads its gradient, and the later blocks' saved values are freed
    # (``Backend.pads_pooling_gradient``)
    pads = (size.backend.pads_pooling_gradient and not float32_layers and not plain_16bit
            and any(b.pool_workspace for b in blocks))
    frees = size.backend.frees_saved_in_backward or looped or pads or (
        size.backend.frees_saved_under_16bit and plain_16bit)
    rounds = size.backend.keeps_rounded_under_16bit and plain_16bit
    # (``Backend.pools_before_kernel_gradient``)
    pooled = (rounds and size.backend.pools_before_kernel_gradient and bool(blocks)
              and all(b.pool_workspace for b in blocks))
    transposed = widest_transposed = softmax_fwd = 0
    # a float32 Python-loop block's softmax forward (``Backend.holds_softmax_forward``)
    softmax_held = ((lambda b, k, u: softmax_forward(b, k, u, size, batch_is_compute))
                    if size.backend.holds_softmax_forward and frees_stages and float32_layers
                    else None)
    # under an ``except:`` policy, a loop block of a stack of several shares two
    # residual-stream-wide values with its forward, not the GELU's factors
    # (``Backend.except_shares_stream``)
    except_undone = undone is not None and undone.name.startswith("except:")
    stream_shared = (size.backend.except_shares_stream and shares and except_undone
                     and sum(b.count for b in blocks) > 1
                     and size.mesh.shape.get("tensor", 1) == 1)
    # under 16-bit compute with a tensor axis, the kept operands of a block's MLP matmuls
    # are kept rounded (``Backend.rounds_tensor_split_operands``)
    split_operands = (size.backend.rounds_tensor_split_operands and not float32_layers
                      and size.mesh.shape.get("tensor", 1) > 1)
    # a scanned float32 stack's residuals are fixed before XLA fuses: its elementwise-made
    # matmul operands are kept, narrowed (``Backend.keeps_scanned_float32_operands``)
    operands_kept = (size.backend.keeps_scanned_float32_operands and not frees_stages
                     and float32_layers)

    def fused(kept: list[Tensor]) -> list[Tensor]:
        return list(kept) if operands_kept else unfused(kept, size.backend)

    for n, block in enumerate(blocks):
        shared = ([t for t in block.values if t.block_input] * 2 if stream_shared
                  else shared_values(block, size))
        kept_policy = _backend_kept(block, fused(saved(block, device)), size,
                                    policy.checkpoint, frees_stages, slices_operands,
                                    except_undone)
        kept_none = _backend_kept(block, fused(saved(block, none)), size,
                                  False, frees_stages, slices_operands, except_undone)
        if rounds:
            kept_policy, kept_none = _rounded(kept_policy), _rounded(kept_none)
        if split_operands:
            kept_policy, kept_none = (_rounded_operands(block, k, "mlp")
                                      for k in (kept_policy, kept_none))
        # what XLA recomputes past a collective of the recomputation (not merged with the
        # forward's values), kept as the configured policy keeps it
        past = _past_reduction(block, undone, size) if float32_layers else set()
        if past:
            undone_kept = {t.name for t in saved(block, saveable(undone))}
            kept_policy, kept_none = ([t for t in k if t.name not in past or t.name in undone_kept]
                                      for k in (kept_policy, kept_none))

        with_policy = sum(1 for i in range(index, index + block.count) if i % every == 0)
        with_none = block.count - with_policy
        if policy.checkpoint and c.remat.nested and block.count > 1:
            g = nested_group_size(block.count) or 1
            inputs = [t for t in kept_policy if t.block_input]
            total += ((block.count // g) * kept_bytes(inputs, size, batch_is_compute)
                      + g * kept_bytes(kept_policy, size, batch_is_compute))
        else:
            total += (with_policy * kept_bytes(kept_policy, size, batch_is_compute)
                      + with_none * kept_bytes(kept_none, size, batch_is_compute))
        if shares:
            total += block.count * size.tensors(shared)
        total += ((with_none if policy.checkpoint else block.count)
                  * _split_stream(block, size, python_stack, undone))
        if host is not None and with_policy:
            offloaded += with_policy * size.tensors(saved(block, host))
        redo = recomputed(block, kept_policy) if with_policy else []
        kept = {t.name for t in (kept_policy if with_policy else kept_none)}
        workspace_values = block.grad_workspace
        if size.backend.fuses_matmul_operands:
            redo, read_kept = _fused_recompute(redo, kept, size.backend, float32_layers)
            kept |= read_kept
            if block.fused_workspace is not None:
                workspace_values = _narrowed(block.fused_workspace, size)
        if size.backend.fuses_matmul_operands:
            grads = [t for t in workspace_values if t.in_place_of not in kept]
        else:  # an unfused gradient goes over the early copy of a value remat recomputes
            over = (_recomputed_early(block, undone, size) if with_policy and float32_layers
                    else set())
            grads = [t for t in workspace_values if t.in_place_of not in over]
        if rounds:
            grads = _widened(grads, kept_policy if with_policy else kept_none)
        # a stage's activation gradients are dead before the next stage's backward makes
        # its own; a backend recomputing by stage holds one stage's recomputation too
        stages = {t.stage for t in (*redo, *grads)} - {""} or {""}
        kept_values = [*(kept_policy if with_policy else kept_none),
                       *(shared if shares else ())]
        slices = _conv_slices(block, kernels or {}, setup, size)
        # the gradient flowing in (the next block's input's), read by the block's first
        # backward operation beside the gradient it makes
        incoming = (size.tensors([t for t in blocks[n + 1].values if t.block_input])
                    if looped and n + 1 < len(blocks) else 0)
        best = None
        for s in sorted(stages):  # ties go to the first in name order
            if scan_stages and with_policy:
                ws = _scan_stage(block, s, redo, grads, size, float32_layers, kept_values)
            elif size.backend.recomputes_by_stage:
                ws = size.tensors(_at(s, redo)) + size.tensors(_at(s, grads))
            else:
                ws = size.tensors(redo) + size.tensors(_at(s, grads))
            ws += slices + incoming
            dead = _later_stages(block, s) if frees_stages else set()
            freed = kept_bytes([t for t in kept_values if t.stage in dead], size, batch_is_compute)
            if best is None or ws - freed > best[0] - best[1]:
                best = (ws, freed)
        ws, freed = best
        # the pooling's backward, a moment of its own: the padded float32 gradient beside
        # the pooling gradient it is reduced into (``Backend.pads_pooling_gradient``, or,
        # ``pooled``, beside the ReLU's backward once the 16-bit ReLU gradient over the kept
        # ReLU input is dead: ``Backend.pools_before_kernel_gradient``)
        pooling = (size.tensors(redo) + size.tensors(block.pool_workspace) + slices + incoming
                   if block.pool_workspace else 0)
        if (pads and pooling and size.backend.places_16bit_relu_gradient_above
                and c.data.microbatches == 1 and len(blocks) > 1):
            # the 16-bit ReLU gradient, placed above the float32 buffers by XLA's heap
            # (``Backend.places_16bit_relu_gradient_above``)
            # (from 64 x 64 feature maps: below, the heap fits it in a hole)
            pooling += size.tensors([t for t in block.grad_workspace
                                     if t.widened_over and t.dtype != "float32"
                                     and len(t.shape) == 4 and t.shape[1] >= 64])
        if pads:
            ws = max(ws, pooling)
        if pooled:
            own = kept_bytes([t for t in kept_values if t.kept_rounded], size, batch_is_compute)
            ws = max(ws - own, pooling)
            if n:  # the input gradient's convolution reads a float32 transposed kernel copy
                transposed += _float32_conv_kernels(block, kernels or {}, size)
        # a scanned backward's body copies the kept values its matmuls read out of the
        # stacked residuals at its start (XLA:CPU), held with the recomputation
        sliced = (kept_bytes(operand_slices(block, kept_values), size, batch_is_compute)
                  if slices_operands else 0)
        ws += sliced
        # where the backend frees a block's saved values once its backward is done, a
        # block's backward holds the saved values of the blocks up to it, not after it
        held = ws - freed + (total if frees else 0)
        dk = (dense_depthwise(block, kernels or {}, size)
              if size.backend.dense_depthwise_gradient else 0)
        if dk and dk + (total if frees else 0) > dense[0] + (dense[1] if frees else 0):
            dense = (dk, total)
        if softmax_held is not None:
            softmax_fwd = max(softmax_fwd, total - kept_bytes(kept_values, size, batch_is_compute)
                              + softmax_held(block, kept_values, undone))
        if held > largest:
            largest, workspace, widest, before, widest_freed = held, ws, block.name, total, freed
            widest_sliced = sliced
            widest_at = n
            widest_transposed = transposed
        index += block.count
    # under 16-bit compute, the masked copy of the next block's dense depthwise gradient is
    # made in the widest block's backward (``Backend.masks_depthwise_late_under_16bit``)
    late = (size.backend.masks_depthwise_late_under_16bit and not float32_layers
            and widest_at + 1 < len(blocks))
    dense_next = dense_depthwise(blocks[widest_at + 1], kernels or {}, size) // 2 if late else 0
    return Blocks(total, offloaded, workspace + dense_next, widest,
                   before if frees else total, widest_freed, widest_sliced, dense[0],
                   dense[1] if frees else total, dense_next, pooled, widest_transposed,
                   softmax_fwd)


def softmax_forward(block: Block, kept: list[Tensor], undone: RematPolicy | None, size: Sizer,
                    batch_is_compute: bool) -> int:
    """What a Python-loop ``block``'s softmax forward holds of its own: its ``kept`` values of
    the stages up to the scores' and the softmax's workspace: two scores-sized buffers where
    the backend undid an ``except:*`` policy (its exponentials and normalised copy beside the
    kept scores and softmax), else one (``Backend.holds_softmax_forward``); 0 without a
    batched matmul whose output a softmax reads, or with more than one example a device."""
    scores = [t for t in block.values if t.dot == "batched"
              and any(t.name in u.inputs and not u.dot for u in block.values)]
    if not scores or size.shard(scores[0].shape, scores[0].axes)[0] != 1:
        return 0
    dead = _later_stages(block, scores[0].stage)
    own = kept_bytes([t for t in kept if t.stage not in dead], size, batch_is_compute)
    workspace = 2 if undone is not None and undone.name.startswith("except:") else 1
    return own + workspace * size.tensors(scores[:1])


def _scan_stage(block: Block, stage: str, redo: list[Tensor], grads: list[Tensor],
                size: Sizer, float32_layers: bool = False,
                kept: Sequence[Tensor] = ()) -> int:
    """Bytes a scanned block's backward holds in ``stage`` under a checkpointing policy
    (``Backend.scan_remat_stages``): in the MLP's, the whole recomputation but its
    score-sized values (dead once the kept attention output is read), the stage's gradients,
    one more MLP-wide and one more residual-stream-wide gradient copy; in the attention's,
    that stage's recomputation and gradients; in both, the causal mask's ``jnp.where``
    broadcast to the scores' shape in float32 (hoisted out of the loop). Under float32
    layers with at least ``Backend.scan_float32_score_gradient_from`` score matrices a
    device (batch x heads) and the scores not ``kept``, the attention's score gradient is made
    over the probabilities: not counted."""
    scores = [t for t in block.values if t.dot == "batched" and len(t.shape) == 4]
    least = size.backend.scan_float32_score_gradient_from
    if (stage != "mlp" and scores and least and float32_layers
            and not any(t.name == scores[0].name for t in kept)
            and math.prod(size.shard(scores[0].shape, scores[0].axes)[:2]) >= least):
        grads = [t for t in grads if t.stage != stage or len(t.shape) != 4]
    mask = size.tensors([dataclasses.replace(scores[0], dtype="float32")]) if scores else 0
    square = {t.name for t in block.values if len(t.shape) == 4}
    if stage == "mlp":
        extra = [t for t in grads if t.stage == "mlp"][:1] + [t for t in grads if not t.stage][:1]
        return (size.tensors([t for t in redo if t.name not in square])
                + size.tensors(_at(stage, grads)) + size.tensors(extra) + mask)
    return size.tensors(_at(stage, redo)) + size.tensors(_at(stage, grads)) + mask


def dense_depthwise(block: Block, kernels: dict[str, tuple[int, ...]], size: Sizer) -> int:
    """Bytes of the dense gradient of ``block``'s depthwise kernels (``k x k x 1 x C``) that
    backend computing it as a ``k x k x C x C`` convolution holds with its masked copy
    (``Backend.dense_depthwise_gradient``), the largest (XLA:CPU; float32 under 16-bit compute
    too, in the compute dtype it computes in)."""
    out = 0
    for t in block.values:
        shape = kernels.get(t.kernel) if t.dot == "conv" else None
        if shape and len(shape) == 4 and shape[2] == 1 and shape[3] > 1:
            k = shape[0] * shape[1]
            out = max(out, 2 * size.nbytes((k, shape[3], shape[3]), size.compute))
    return out


def operand_slices(block: Block, kept: Sequence[Tensor]) -> list[Tensor]:
    """The kept values of ``block`` that a scanned backward loop's body copies out of the
    stacked residuals into buffers of their own (``Backend.copies_scanned_operands``): those
    its backward reads as a matmul operand, directly or through an elementwise value made
    only for a matmul (``Tensor.matmul_operand``: the scaled query)."""
    read = {name for u in block.values if u.dot in ("dot", "batched") or u.matmul_operand
            for name in u.inputs}
    return [t for t in kept if t.name in read]


def _rounded(kept: list[Tensor]) -> list[Tensor]:
    """``kept`` with its ``kept_rounded`` values in the configured 16-bit dtype (XLA:CPU
    rounds them where the forward makes them and keeps that copy)."""
    return [dataclasses.replace(t, dtype=ROUNDED) if t.kept_rounded and t.dtype == COMPUTE
            else t for t in kept]


def _rounded_operands(block: Block, kept: list[Tensor], stage: str | None = None) -> list[Tensor]:
    """``kept`` with the operands of ``block``'s unbatched matmuls (of its ``stage``'s
    only, where given) that are no batched matmul's output in the configured 16-bit dtype
    (``Backend.rounds_tensor_split_operands``)."""
    by_name = block.by_name()
    read = {i for u in block.values if u.dot == "dot" for i in u.inputs
            if i in by_name and by_name[i].dot != "batched"
            and (stage is None or by_name[i].stage == stage)}
    return [dataclasses.replace(t, dtype=ROUNDED) if t.name in read and t.dtype == COMPUTE
            else t for t in kept]


def _widened(grads: list[Tensor], kept: list[Tensor]) -> list[Tensor]:
    """``grads`` with a 16-bit gradient written over a value kept rounded counted as its
    float32 copy (the 16-bit one takes the kept value's buffer)."""
    rounded = {t.name for t in kept if t.kept_rounded and t.dtype == ROUNDED}
    return [dataclasses.replace(t, dtype=COMPUTE) if t.widened_over in rounded else t
            for t in grads]


def _later_stages(block: Block, stage: str) -> set[str]:
    """The stages of ``block`` after ``stage`` in the forward (their backward runs before
    it); none for the values of every stage."""
    order = list(dict.fromkeys(t.stage for t in block.values if t.stage))
    return set(order[order.index(stage) + 1:]) if stage in order else set()


def redoes_matmuls(blocks: Sequence[Block], undone: RematPolicy | None, size: Sizer) -> bool:
    """Whether the ``undone`` policy would recompute a matmul or convolution of ``blocks``."""
    return any(t.dot for b in blocks for t in _redone(b, undone, size))


def saves_nothing(blocks: Sequence[Block], undone: RematPolicy | None) -> bool:
    """The ``undone`` policy keeps nothing of ``blocks`` but their inputs (``full``)."""
    if undone is None:
        return False
    keep = saveable(undone)
    return not any(keep(t) for b in blocks for t in b.values if not t.block_input)


def _redone(block: Block, undone: RematPolicy | None, size: Sizer) -> list[Tensor]:
    """What the ``undone`` policy would recompute of ``block`` (nothing without one)."""
    if undone is None:
        return []
    return recomputation(block, unfused(saved(block, saveable(undone)), size.backend))


def shared_values(block: Block, size: Sizer) -> list[Tensor]:
    """``block.shared`` as the backend keeps it: with ``Backend.shares_loop_norm_values``
    (no tensor or fsdp axis) its layer norms' normalised values in place of the shared values they
    replace (a transformer's GELU square), else ``block.shared``."""
    if not (size.backend.shares_loop_norm_values and size.mesh.shape.get("tensor", 1) == 1
            and size.mesh.shape.get("fsdp", 1) == 1):
        return list(block.shared)
    return [*(t for t in block.shared if t.name not in block.unshared_with_norms),
            *block.shared_norms]


def _recomputed_early(block: Block, undone: RematPolicy | None, size: Sizer) -> set[str]:
    """The values of ``block`` that the ``undone`` policy recomputes, where the backend writes
    an activation gradient over the copy it made of them early instead (float32 layers)."""
    if not size.backend.gradient_over_undone_remat:
        return set()
    return {t.name for t in _redone(block, undone, size)}


def recomputed_scores(blocks: Sequence[Block], undone: RematPolicy | None,
                      size: Sizer) -> tuple[int, int]:
    """Bytes of the largest batched matmul output (the attention scores) that an ``undone``
    remat policy recomputes, saving neither it nor a value made from it (the softmax), in a
    policy that saves something besides the blocks' inputs, and the bytes its block keeps
    (without remat, shared values included) in the stages after the scores' (the MLP's)
    (``Backend.recomputed_scores_rows``); ``(0, 0)`` if none."""
    if undone is None or saves_nothing(blocks, undone):
        return 0, 0
    keep, out = saveable(undone), (0, 0)
    for b in blocks:
        for t in b.values:
            if (t.dot == "batched" and not keep(t) and len(t.shape) == 4
                    and not any(keep(u) for u in b.values if t.name in u.inputs)):
                later = _later_stages(b, t.stage)
                after = size.tensors([u for u in (*saved(b, SAVEABLE["none"](undone)),
                                                  *shared_values(b, size))
                                   if u.stage in later])
                out = max(out, (size.tensors([t]), after))
    return out


def widest_after_scores(blocks: Sequence[Block], size: Sizer) -> int:
    """Bytes of the widest value of a block's stages after its batched matmuls' (the MLP's
    up-projection), over ``blocks`` (``Backend.recomputed_scores_under_16bit``)."""
    out = 0
    for b in blocks:
        stages = {t.stage for t in b.values if t.dot == "batched" and len(t.shape) == 4}
        later = set().union(*(_later_stages(b, s) for s in stages)) if stages else set()
        out = max([out, *(size.tensors([t]) for t in b.values if t.stage in later)])
    return out


def normalised_values(blocks: Sequence[Block], size: Sizer) -> int:
    """Bytes of every layer's normalised values (its norms' outputs: a GPT block's ``h1``,
    ``h2``), over ``blocks`` (``Backend.recomputed_norms_under_16bit``)."""
    return sum(b.count * size.tensors([t for t in b.values
                                       if any(i.endswith("_stats") for i in t.inputs)])
               for b in blocks)


def _float32_conv_kernels(block: Block, kernels: dict[str, tuple[int, ...]],
                          size: Sizer) -> int:
    """Bytes of ``block``'s convolution kernels as float32 copies."""
    return sum(size.nbytes(kernels[t.kernel], np.dtype("float32"))
               for t in block.values if t.dot == "conv" and t.kernel in kernels)


def first_forward_rounded(blocks: Sequence[Block], kernels: dict[str, tuple[int, ...]],
                          size: Sizer) -> tuple[int, int]:
    """What a single device's 16-bit CNN holds in its first block's forward
    (``Backend.pools_before_kernel_gradient``): two float32 rounded copies of every later
    block's kernels, made at the step's start (the forward's, the backward's transposed one),
    and the first block's convolution output in float32, its ReLU input rounded, its pooled
    output and its images."""
    later = sum(_float32_conv_kernels(b, kernels, size) for b in blocks[1:])
    first = blocks[0].values
    convs = [t for t in first if t.dot == "conv"]
    pooled = [t for t in blocks[1].values if t.block_input] if len(blocks) > 1 else []
    held = (size.tensors([*convs[-1:], *(t for t in first if t.block_input), *pooled])
            + size.tensors(_rounded([t for t in first if t.kept_rounded])))
    return 2 * later, held


# a transformer block's matmul outputs and the kernels (path endings) they multiply by
# (the MLP's: the attention's recomputed projections are gathered later, not early)
_DOT_KERNELS = {"up_dot": "/mlp/up/kernel", "down_dot": "/mlp/down/kernel"}


def recomputed_kernels(blocks: Sequence[Block], kernels: dict[str, tuple[int, ...]],
                       undone: RematPolicy | None, setup: Setup, size: Sizer) -> int:
    """FSDP x tensor: the ZeRO-split kernels of a transformer's matmuls that the ``undone``
    policy recomputes, whole over the ZeRO axes (tensor-split still) in the compute dtype,
    every layer's: gathered once more for the recomputation
    (``Backend.regathers_recomputed_remat_kernels``)."""
    zero, out = set(setup.rules.zero), 0
    if size.mesh.shape.get("tensor", 1) == 1:
        return 0  # (FSDP alone: each kernel whole twice, as measured; no third gather)
    for block in blocks:
        for t in _redone(block, undone, size):
            path = next((k for k in kernels if t.dot and t.name in _DOT_KERNELS
                         and k.endswith(_DOT_KERNELS[t.name])), None)
            if path is None:
                continue
            shape, spec = kernels[path], param_spec(path, kernels[path], setup, size.mesh)
            if zero_split(spec, zero):
                whole = zero_joined(shape, spec, size.mesh, zero)
                out += block.count * size.nbytes(whole, size.compute)
    return out
