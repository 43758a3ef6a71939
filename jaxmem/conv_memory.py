"""Where a CNN's first forward peaks: the estimate's moments that hold an FSDP CNN's kernels
gathered more than once, a float32 CNN's broadcast constants and a single device's 16-bit CNN's
rounded kernel copies beside its first block's values (XLA:CPU; each a ``Backend`` flag).

Example:
  >>> import jaxmem
  >>> from jaxmem.config import Config
  >>> cfg = jaxmem._convert.from_dict(Config, {"model": {"kind": "cnn"}, "remat": "full",
  ...     "target": "cpu:8", "sharding": "fsdp", "mesh": {"fsdp": 8},
  ...     "data": {"batch_size": 16}})
  >>> peak = next(t for t in jaxmem.estimate(cfg).terms if t.name == "peak transients")
  >>> peak.detail.startswith("in the first block's forward")
  True
"""

from __future__ import annotations

from collections.abc import Sequence

from jaxmem.block_memory import first_forward_rounded, redoes_matmuls, saves_nothing
from jaxmem.models.anatomy import Anatomy, Block, Tensor
from jaxmem.remat import RematPolicy
from jaxmem.setup import Setup
from jaxmem.sizing import Sizer, param_spec, zero_joined, zero_split

Moments = dict[str, tuple[int, int, int, int, int]]


def regathered_kernels(anatomy: Anatomy, setup: Setup, size: Sizer) -> tuple[int, int]:
    """The whole ZeRO-split kernels of the convolutions that make an input gradient (all but
    those of the images), in the compute dtype: gathered again for the backward's transposed
    convolution (``Backend.regathers_conv_kernels``); and the largest of them."""
    zero, shapes, out, largest = set(setup.rules.zero), dict(anatomy.params), 0, 0
    for block in anatomy.blocks:
        images = {t.name for t in block.values if t.batch_cast}
        for t in block.values:
            if t.dot != "conv" or t.kernel not in shapes or set(t.inputs) <= images:
                continue
            shape = shapes[t.kernel]
            spec = param_spec(t.kernel, shape, setup, size.mesh)
            if zero_split(spec, zero):  # its ZeRO shards joined
                whole = zero_joined(shape, spec, size.mesh, zero)
                out += block.count * size.nbytes(whole, size.compute)
                largest = max(largest, size.nbytes(whole, size.compute))
    return out, largest


def first_forward_float32(blocks: Sequence[Block], outside: Sequence[Tensor],
                          size: Sizer, fused: bool = False) -> int:
    """Bytes a float32 CNN's first block holds in its forward beside the gathered kernels
    (``Backend.forward_broadcasts_in_float32``): its convolution's output three times (the
    output, its bias-added or rounded copy, the ReLU's zeros broadcast to its shape; under
    remat ``full``, ``fused``, once: the recomputed one, the forward's being fused with its
    ReLU and pooling, unless it has 16 output channels or fewer), its images, and the
    constants the forward's ReLU and pooling fusions read, broadcast to the later blocks' ReLU
    input and every block's pooled shapes (one buffer a distinct shape, made at the start)."""
    convs = [t for t in blocks[0].values if t.dot == "conv"]
    if not convs:
        return 0
    images = [t for t in blocks[0].values if t.block_input]
    pooled = [*(next(t for t in b.values if t.block_input) for b in blocks[1:]),
              *outside[:1]]
    zeros = {(t.shape, t.axes): t for b in blocks[1:] for t in b.values
             if t.name == "relu_input"}
    quarters = {(t.shape, t.axes): t for t in pooled}
    # under remat full the forward's convolution, bias, ReLU and pooling are one fusion
    # (not for 16 output channels or fewer: a convolution of its own, then recomputed at once)
    fused = fused and convs[-1].shape[-1] > 16
    return ((1 if fused else 3) * size.tensors(convs[-1:]) + size.tensors(images)
            + size.tensors([*zeros.values(), *quarters.values()]))


def conv_forward_moments(moments: Moments, grads_why: dict[str, str], anatomy: Anatomy,
                         setup: Setup, size: Sizer, undone: RematPolicy | None, *, copies: int,
                         gathered: int, split_copy: int, on_one_loop: bool,
                         float32_layers: bool, pooled_alone: bool) -> None:
    """Adds to the estimate's ``moments`` (where -> (saved, copies, gathered, gradients,
    transients)) and ``grads_why`` a CNN's first-forward moments: under FSDP (``on_one_loop``:
    ZeRO-split, a Python loop) its kernels gathered for the forward and, early, for the
    backward (``Backend.regathers_conv_kernels``; thrice under an ``undone`` remat that
    recomputes the convolutions, ``regathers_recomputed_conv_kernels``), in float32 beside its
    first convolution's outputs and the broadcast constants (``forward_broadcasts_in_float32``,
    the largest kernel's flipped copy too: ``copies_recomputed_largest_kernel``); on one device
    (``pooled_alone``) every later kernel's float32 rounded copies
    (``pools_before_kernel_gradient``). ``copies``, ``gathered``: the estimate's parameter
    copies and gathered weights; ``split_copy``: its microbatch-split batch copy."""
    backend, blocks = size.backend, anatomy.blocks
    regathered, largest, flipped = 0, 0, 0
    if backend.regathers_conv_kernels and on_one_loop:
        regathered, largest = regathered_kernels(anatomy, setup, size)
    if regathered:
        first = next(t for t in blocks[0].values if t.dot == "conv")
        images = next(t for t in blocks[0].values if t.block_input)
        at = ("in the first block's forward, with the conv kernels gathered for the forward "
              "and again for the backward (the all-gathers made early)")
        if backend.regathers_recomputed_conv_kernels and redoes_matmuls(blocks, undone, size):
            regathered *= 2  # the recomputed convolutions' gathers, early too
            flipped = largest * backend.copies_recomputed_largest_kernel
        moments[at] = (0, copies, gathered + regathered + largest, 0,
                       size.tensors([first, images]))
        grads_why[at] = "none yet"
    if backend.forward_broadcasts_in_float32 and on_one_loop and float32_layers and blocks:
        held = first_forward_float32(blocks, anatomy.outside, size,
                                     fused=saves_nothing(blocks, undone))
        if held:
            at = ("in the first block's forward, its convolution's output three times beside "
                  "the ReLU's and pooling's broadcast constants")
            moments[at] = (0, copies, gathered + regathered + flipped, 0, held + split_copy)
            grads_why[at] = "none yet"
    if pooled_alone and len(blocks) > 1:
        twice, held = first_forward_rounded(blocks, dict(anatomy.params), size)
        at = ("in the first block's forward, with every later kernel's float32 rounded copies "
              "(the forward's, the backward's transposed one)")
        moments[at] = (0, twice, 0, 0, held)
        grads_why[at] = "none yet"
