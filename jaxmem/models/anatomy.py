"""What a model's training step holds, described without tracing: the :class:`Anatomy`.

A model kind describes its parameters (path and shape, as ``nnx.split`` names them) and the
values of one block's forward pass as a small graph: each :class:`Tensor` names the values it is
computed from, whether the backward pass needs it (what is kept without remat), and whether a
matmul makes it. :func:`saved` then answers, for any remat policy, which values a block keeps:
the policy's saveable values that the backward needs, directly or to recompute what it needs
(the rule ``jax.checkpoint`` applies). ``jaxmem.estimate`` turns this into bytes per device.

Shape suffixes are logical axis names (``jaxmem.sharding``), so the estimate can split a value
over a mesh the way the model's sharding constraints do.

Example:
  >>> from jaxmem.models.anatomy import Tensor, Block, saved
  >>> x = Tensor("x", (4, 8), ("batch", "embed"), block_input=True)
  >>> h = Tensor("h", (4, 32), ("batch", "mlp"), inputs=("x",), dot="dot", needed=True)
  >>> y = Tensor("y", (4, 32), ("batch", "mlp"), inputs=("h",), needed=True)
  >>> block = Block("layer", (x, h, y))
  >>> [t.name for t in saved(block, lambda t: True)]  # no remat: what the backward needs
  ['x', 'h', 'y']
  >>> [t.name for t in saved(block, lambda t: t.dot == "dot")]  # save matmul outputs
  ['x', 'h']
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

#: dtype roles: the compute dtype, the parameters' storage dtype, or a fixed dtype;
#: ROUNDED: the configured compute dtype even where a backend computes 16-bit floats in
#: float32 (a gradient with respect to a 16-bit value is rounded to 16 bits)
COMPUTE, PARAM, ROUNDED = "compute", "param", "rounded"


@dataclasses.dataclass(frozen=True)
class Tensor:
    """One value of a forward pass.

    Attributes:
      name: unique within its block (the checkpoint name where the model tags one).
      shape: its global shape (the batch dimension is one microbatch).
      axes: logical axis name per dimension (None: never split).
      dtype: ``compute``, ``param`` or a dtype name (``float32``, ``int32``).
      inputs: names of the values it is computed from (within the block).
      needed: the backward pass uses it (it is kept when nothing is recomputed).
      dot: ``dot`` for a matmul output, ``batched`` for one with batch dimensions
        (attention scores), ``conv`` for a convolution's (``dots_saveable`` saves it,
        ``dots_with_no_batch_dims_saveable`` does not, as in JAX), empty otherwise.
      tag: the ``checkpoint_name`` the model gives it, if any.
      block_input: the block's input (always kept by a checkpointed block).
      batch_cast: the batch cast to the compute dtype (no buffer of its own when the batch
        already has that dtype: the argument is used).
      matmul_operand: made by elementwise operations and used only as a matmul operand
        (forward and backward): a compiler that fuses such producers into the matmul (XLA:TPU)
        does not keep it when its inputs are kept, nor materialise it when recomputing it.
      matmul_only: every use, forward and backward, is as a matmul operand (implied by
        ``matmul_operand``, which need not set it): a compiler that computes float32 matmuls
        from bfloat16 operands (XLA:TPU at the default precision) keeps it in bfloat16.
      in_place_of: for a gradient, the kept value a fused gradient is written over (the
        logits: one fusion reads them and writes their gradient into their buffer; a conv
        block's ReLU input).
      channels_minor: a convolution's operand or output, which XLA:TPU lays out with its
        last (channel) dimension minor: padded to 128 lanes, whatever pads least elsewhere.
      recomputed_as: the dtype of what a backend that fuses elementwise producers into their
        consumers materialises when it recomputes this value for the backward (``bool``: a
        ReLU's input, of which the backward reads only the sign); empty: the value itself.
      stage: the part of its block whose backward uses it (``attention``, ``mlp``): a
        block's backward holds one stage's activation gradients at a time, and, on a backend
        that recomputes each stage just before that stage's backward (XLA:TPU), one stage's
        recomputed values; empty: every stage.
      flops: forward FLOPs of the operation that makes it, counted for matmuls and
        convolutions only (2 per multiply-add); elementwise work is left out.
      kernel: for a convolution's output, the path of its kernel parameter (``k x k x in x
        out``): how that kernel is sharded decides how a compiler partitions the convolution.
      kept_rounded: kept for the backward in the configured 16-bit dtype by a backend that
        computes 16-bit floats in float32 but rounds this value where the forward makes it
        (``Backend.keeps_rounded_under_16bit``: a conv block's ReLU input).
      softmax: the softmax of its one input (attention probabilities from the scores): a
        backend that recomputes it inside the backward's fusions from a kept input
        (``Backend.fuses_softmax_recompute``) materialises at most its float32 shifted input.
      widened_over: for a 16-bit gradient, the ``kept_rounded`` value it is written over where
        that is kept rounded; its float32 copy is then materialised beside it instead (the
        gradient convolutions' float32 operand).
    """

    name: str
    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    dtype: str = COMPUTE
    inputs: tuple[str, ...] = ()
    needed: bool = False
    dot: str = ""
    tag: str | None = None
    block_input: bool = False
    batch_cast: bool = False
    matmul_operand: bool = False
    matmul_only: bool = False
    in_place_of: str = ""
    channels_minor: bool = False
    recomputed_as: str = ""
    stage: str = ""
    flops: int = 0
    kernel: str = ""
    kept_rounded: bool = False
    widened_over: str = ""
    softmax: bool = False

    def __post_init__(self) -> None:
        if len(self.shape) != len(self.axes):
            raise ValueError(f"{self.name}: shape {self.shape} and axes {self.axes} differ")


@dataclasses.dataclass(frozen=True)
class Block:
    """The values of one remat block (a transformer layer, a dense or conv layer).

    Attributes:
      name: what the block is.
      values: its values in forward order, the block input first.
      count: how many such blocks the stack has (consecutive, same shapes).
      grad_workspace: values its backward holds at once besides the saved ones (the
        gradients flowing through its widest activations).
      shared: backward values a compiler computes in the forward and keeps, when a block's
        forward and backward are one computation (blocks of a Python-loop stack): XLA
        shares the recomputation with the forward's own.
      fused_workspace: ``grad_workspace`` where the backend fuses elementwise producers into the
        matmuls and convolutions reading them (XLA:TPU); None: ``grad_workspace``. A value
        ``in_place_of`` a saved one is written over it.
      pool_workspace: values its pooling's backward holds at once besides the saved ones
        where the backend pads the pooling gradient (``Backend.pads_pooling_gradient``): the
        pooling gradient and the padded gradient it is reduced from, float32.
      causal: its attention masks the keys after each query (a decoder's), a mask the
        backend may materialise (``Backend.scan_remat_stages``).
      shared_norms: its layer norms' normalised values, which a backend sharing the forward's
        values with the backward keeps (``Backend.shares_loop_norm_values``) in place of the
        ``shared`` values named in ``unshared_with_norms``.
    """

    name: str
    values: tuple[Tensor, ...]
    count: int = 1
    grad_workspace: tuple[Tensor, ...] = ()
    shared: tuple[Tensor, ...] = ()
    fused_workspace: tuple[Tensor, ...] | None = None
    pool_workspace: tuple[Tensor, ...] = ()
    causal: bool = False
    shared_norms: tuple[Tensor, ...] = ()
    unshared_with_norms: tuple[str, ...] = ()

    def by_name(self) -> dict[str, Tensor]:
        return {t.name: t for t in self.values}

    def flops(self) -> int:
        """Forward FLOPs of one such block."""
        return sum(t.flops for t in self.values)


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """A training step's parameters and activations.

    Attributes:
      params: ``(path, shape)`` of every parameter, as ``nnx.split`` names them.
      blocks: the remat blocks, in forward order.
      outside: values outside the blocks that the backward keeps (embeddings' output, the
        final norm, the logits).
      loss_workspace: values alive at once where the backward starts, the loss gradient
        first (a backend that fuses the loss gradient keeps only that one).
      scanned: the blocks are one scanned stack (parameters carry a leading layer axis).
      example: ``(shape, dtype)`` of each batch field for one example.
      rows_per_example: rows one example puts through a matmul (a sequence's tokens, an
        image's pixels, 1 for a vector).
      outside_flops: forward FLOPs of the layers outside the blocks (the LM head).
      outside_recompute_flops: of those, what the backward computes again (a chunked loss
        recomputes its logits).
      chain: the kernels of a chain of matmuls fed by the batch, in forward order (an MLP's
        layers and head), for following how a ZeRO sharding splits each one's input.
      lm_head: the parameter a language model's head multiplies by (its kernel, or the
        embedding table it is tied to).
      lookups: parameters read only by a table lookup (embeddings not tied to a head): no
        matmul reads them (XLA:CPU's float32 loop copies leave them out).
      positions: of those, the tables looked up by position (the same rows for every example):
        their gradient is a reduction over the batch, not a scatter of the tokens' rows.
    """

    params: tuple[tuple[str, tuple[int, ...]], ...]
    blocks: tuple[Block, ...]
    outside: tuple[Tensor, ...] = ()
    loss_workspace: tuple[Tensor, ...] = ()
    scanned: bool = False
    example: tuple[tuple[tuple[int, ...], str], ...] = ()
    rows_per_example: int = 1
    outside_flops: int = 0
    outside_recompute_flops: int = 0
    chain: tuple[str, ...] = ()
    lm_head: str = ""
    lookups: tuple[str, ...] = ()
    positions: tuple[str, ...] = ()

    def forward_flops(self) -> int:
        """FLOPs of one forward pass (matmuls and convolutions)."""
        return sum(b.count * b.flops() for b in self.blocks) + self.outside_flops


def in_stage(stage: str, values: Iterable[Tensor]) -> list[Tensor]:
    """``values`` marked as used by the backward of their block's ``stage``."""
    return [dataclasses.replace(t, stage=stage) for t in values]


def saved(block: Block, saveable: Callable[[Tensor], bool]) -> list[Tensor]:
    """The values a block keeps for its backward under a remat policy.

    A needed value is kept if the policy may save it; otherwise it is recomputed from its
    inputs, which are kept or recomputed by the same rule, down to the block input (always
    kept). With ``saveable`` always true this is the block without remat.
    """
    values = block.by_name()
    keep: dict[str, Tensor] = {}
    seen: set[str] = set()

    def visit(t: Tensor) -> None:
        if t.name in seen:
            return
        seen.add(t.name)
        if t.block_input or saveable(t):
            keep[t.name] = t
            return
        for name in t.inputs:
            visit(values[name])

    for t in block.values:
        if t.needed or t.block_input:
            visit(t)
    return [t for t in block.values if t.name in keep]


def recomputation(block: Block, kept: list[Tensor]) -> list[Tensor]:
    """Every value a block's backward computes again given what it ``kept``: the needed
    values not kept, and what they are made from, down to kept values."""
    values, names = block.by_name(), {t.name for t in kept}
    out: dict[str, Tensor] = {}

    def visit(t: Tensor) -> None:
        if t.name in names or t.name in out:
            return
        out[t.name] = t
        for name in t.inputs:
            visit(values[name])

    for t in block.values:
        if t.needed:
            visit(t)
    return [t for t in block.values if t.name in out]


def recomputed(block: Block, kept: list[Tensor]) -> list[Tensor]:
    """Needed values a block's backward recomputes (needed, not kept)."""
    names = {t.name for t in kept}
    return [t for t in block.values if t.needed and t.name not in names]
