"""``cnn``: an image classifier of conv blocks (optionally depthwise-separable).

Each block is conv 3x3 (or depthwise 3x3 + pointwise 1x1), ReLU, 2x2 average pool; the head is a
global average pool and a linear layer. Shape suffixes: B batch, S spatial side, C channels.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmem import losses, remat
from jaxmem.errors import ConfigError, check_positive
from jaxmem.models.anatomy import Anatomy, Block, Tensor
from jaxmem.models.base import ModelConfig
from jaxmem.models.workload import Batch, BuildOptions, Workload


@ModelConfig.register("cnn")
@dataclasses.dataclass(frozen=True)
class CNNConfig(ModelConfig):
    """Conv blocks halving the spatial size each.

    Attributes:
      image_size: input height and width.
      in_channels: input channels.
      channels: output channels of each block.
      depthwise_separable: depthwise 3x3 + pointwise 1x1 instead of a full 3x3 conv.
      num_classes: classes of the head.
    """

    BLOCKS_PATH: ClassVar[str] = "blocks"

    kind: str = "cnn"
    image_size: int = 32
    in_channels: int = 3
    channels: tuple[int, ...] = (32, 64, 128)
    depthwise_separable: bool = False
    num_classes: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("image_size", "in_channels", "num_classes"):
            check_positive(name, getattr(self, name))
        if not self.channels:
            raise ConfigError("channels", "needs at least one block", value=list(self.channels))
        for i, ch in enumerate(self.channels):
            check_positive(f"channels[{i}]", ch)
        if self.image_size % 2 ** len(self.channels):
            raise ConfigError(
                "image_size",
                f"must be divisible by 2**len(channels)={2 ** len(self.channels)}",
                value=self.image_size,
            )

    def layer_count(self) -> tuple[int, bool]:
        return len(self.channels), False

    def anatomy(self, opts: BuildOptions, batch: int) -> Anatomy:
        B, S = batch, self.image_size
        widths = (self.in_channels, *self.channels)
        image = ("batch", None, None, None)
        params, blocks = [], []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            block_params, block = self._block_anatomy(opts, i, a, b, B, S)
            params += block_params
            blocks.append(block)
            S //= 2
        C = self.num_classes
        params += [("head/bias", (C,)), ("head/kernel", (widths[-1], C))]
        return Anatomy(
            params=tuple(params), blocks=tuple(blocks),
            outside=(Tensor("features", (B, S, S, widths[-1]), image, needed=True,
                            channels_minor=True),
                     Tensor("pooled", (B, widths[-1]), ("batch", None), needed=True),
                     Tensor("logits", (B, C), ("batch", None), needed=True)),
            loss_workspace=(Tensor("d_features", (B, S, S, widths[-1]), image),),
            rows_per_example=self.image_size ** 2,
            example=(((self.image_size,) * 2 + (self.in_channels,), "float32"), ((), "int32")),
            outside_flops=2 * B * widths[-1] * C,
        )

    def _block_anatomy(self, opts: BuildOptions, i: int, a: int, b: int, B: int, S: int
                       ) -> tuple[list[tuple[str, tuple[int, ...]]], Block]:
        """Block ``i`` (``a`` -> ``b`` channels at ``S x S``): its parameters and values."""
        image = ("batch", None, None, None)
        convs = [(a, a, 1), (a, b, 1)] if self.depthwise_separable else [(a, b, 3)]
        if self.depthwise_separable:  # depthwise 3x3 (one input channel per group)
            convs[0] = (1, a, 3)

        def minor(channels: int) -> bool:
            """A convolution's values have their channels minor on TPU; the images and their
            depthwise convolution (the first block's input channels) are laid out otherwise."""
            return i > 0 or channels != a

        params = []
        values = [Tensor("x", (B, S, S, a), image, block_input=True, batch_cast=i == 0,
                         channels_minor=minor(a))]
        for j, (c_in, c_out, k) in enumerate(convs):
            params += [(f"blocks/{i}/convs/{j}/bias", (c_out,)),
                       (f"blocks/{i}/convs/{j}/kernel", (k, k, c_in, c_out))]
            values.append(Tensor(f"conv{j}", (B, S, S, c_out), image, inputs=(values[-1].name,),
                                 dot="conv", channels_minor=minor(c_out),
                                 flops=2 * B * S * S * c_out * k * k * c_in,
                                 kernel=f"blocks/{i}/convs/{j}/kernel"))
            if j + 1 < len(convs):  # the next convolution's operand (bias added)
                values.append(Tensor(f"biased{j}", (B, S, S, c_out), image,
                                     inputs=(f"conv{j}",), needed=True,
                                     channels_minor=minor(c_out)))
        # the ReLU's input (bias added): its backward reads only the sign (XLA:CPU under bf16
        # compute keeps it rounded to bfloat16 where no undone remat recomputes it)
        values.append(Tensor("relu_input", (B, S, S, b), image, inputs=(values[-1].name,),
                             needed=True, channels_minor=True, recomputed_as="bool",
                             kept_rounded=True))
        # the images get no gradient: the first block's backward makes no input gradient
        d_input = (Tensor("d_input", (B, S, S, a), image, channels_minor=True),) if i else ()
        # unfused (XLA:CPU): the convolution's output gradient and the ReLU's beside it, the
        # latter as the gradient convolutions' operand in the layers' dtype (XLA:CPU computes
        # in float32 but casts it to bfloat16 for them under bf16 compute)
        # in float32 XLA:CPU writes the latter over the convolution's output where remat
        # recomputes it (made early, in the forward: ``gradient_over_undone_remat``); where
        # the ReLU's input is kept rounded, the 16-bit one over it, beside its float32 copy
        unfused = (Tensor("d_conv", (B, S, S, b), image),
                   Tensor("d_relu", (B, S, S, b), image, jnp.dtype(opts.dtype).name,
                          in_place_of=f"conv{len(convs) - 1}", widened_over="relu_input"),
                   *d_input)
        # fused (XLA:TPU): pooling's and the ReLU's backward are one fusion writing the
        # convolution's output gradient (over the ReLU's input where that is kept), read by
        # the kernel's and the input's gradient convolutions; the gradient flowing in is dead
        # once it is made, the one flowing out is made from it
        d_out = Tensor("d_out", (B, S // 2, S // 2, b), image, channels_minor=True)
        fused = (Tensor("d_conv", (B, S, S, b), image, channels_minor=True, matmul_only=True,
                        in_place_of="relu_input"),
                 max((d_out, *d_input), key=lambda t: math.prod(t.shape)))
        # XLA:CPU: the 2x2 pooling's backward reduces the incoming gradient, dilated and padded
        # to (S+1) x (S+1), into the pooling gradient, both float32 (``pads_pooling_gradient``)
        pool = (Tensor("d_conv", (B, S, S, b), image, "float32"),
                Tensor("d_pool_padded", (B, S + 1, S + 1, b), image, "float32"))
        return params, Block(f"conv block {a}->{b} at {S}x{S}", tuple(values),
                             grad_workspace=unfused, fused_workspace=fused,
                             pool_workspace=pool)

    def build(self, opts: BuildOptions) -> Workload:
        """Random images, integer labels."""
        batch_size = opts.batch_size
        S, C = self.image_size, self.in_channels

        def loss(model: CNN, batch: Batch) -> jax.Array:
            return losses.cross_entropy(model(batch["images"]), batch["labels"])

        return Workload(
            init=lambda rngs: CNN(self, opts, rngs=rngs),
            batch={
                "images": jax.ShapeDtypeStruct((batch_size, S, S, C), jnp.float32),
                "labels": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            },
            loss=loss,
            int_maxval={"labels": self.num_classes},
            predict=lambda model, batch: model(batch["images"]),
            inputs=("images",),
        )


class ConvBlock(nnx.Module):
    """Conv (full or depthwise-separable), ReLU, 2x2 average pool."""

    def __init__(self, c_in: int, c_out: int, *, separable: bool, dtype: Any, rngs: nnx.Rngs):
        if separable:
            self.convs = nnx.List([
                nnx.Conv(c_in, c_in, (3, 3), feature_group_count=c_in, dtype=dtype,
                         rngs=rngs),  # depthwise
                nnx.Conv(c_in, c_out, (1, 1), dtype=dtype, rngs=rngs),  # pointwise
            ])
        else:
            self.convs = nnx.List([nnx.Conv(c_in, c_out, (3, 3), dtype=dtype, rngs=rngs)])

    def __call__(self, x_BxSxSxC: jax.Array) -> jax.Array:
        for conv in self.convs:
            x_BxSxSxC = conv(x_BxSxSxC)
        x_BxSxSxC = jax.nn.relu(x_BxSxSxC)
        return nnx.avg_pool(x_BxSxSxC, window_shape=(2, 2), strides=(2, 2))


class CNN(nnx.Module):
    """Conv blocks, global average pool, linear head."""

    def __init__(self, c: CNNConfig, opts: BuildOptions, *, rngs: nnx.Rngs):
        widths = (c.in_channels, *c.channels)
        self.blocks = nnx.List([
            ConvBlock(a, b, separable=c.depthwise_separable, dtype=opts.dtype, rngs=rngs)
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        ])
        self.head = nnx.Linear(widths[-1], c.num_classes, dtype=opts.dtype, rngs=rngs)
        self.remat_policy = opts.remat_policy
        self.remat_every = opts.remat_every

    def __call__(self, images_BxSxSxC: jax.Array) -> jax.Array:
        x = images_BxSxSxC
        for i, block in enumerate(self.blocks):
            policy = self.remat_policy if i % self.remat_every == 0 else remat.POLICIES["none"]
            x = remat.apply(block, policy)(x)
        return self.head(x.mean(axis=(1, 2)))  # BxC
