"""``mlp``: a multi-layer perceptron, classifier (cross-entropy) or regressor (MSE)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmem import losses, remat
from jaxmem.errors import ConfigError, check_choice, check_positive
from jaxmem.models.anatomy import Anatomy, Block, Tensor
from jaxmem.models.base import ModelConfig
from jaxmem.models.workload import Batch, BuildOptions, Workload


@ModelConfig.register("mlp")
@dataclasses.dataclass(frozen=True)
class MLPConfig(ModelConfig):
    """Dense layers with ReLU.

    Attributes:
      in_features: input width.
      hidden: widths of the hidden layers (each is one remat block).
      out_features: classes (cross_entropy) or regression targets (mse).
      loss: ``cross_entropy`` or ``mse``.
    """

    BLOCKS_PATH: ClassVar[str] = "layers"

    kind: str = "mlp"
    in_features: int = 784
    hidden: tuple[int, ...] = (512, 512)
    out_features: int = 10
    loss: str = "cross_entropy"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("in_features", self.in_features)
        check_positive("out_features", self.out_features)
        if not self.hidden:
            raise ConfigError("hidden", "needs at least one layer width", value=list(self.hidden))
        for i, width in enumerate(self.hidden):
            check_positive(f"hidden[{i}]", width)
        check_choice("loss", self.loss, losses.LOSSES, what="loss")

    def layer_count(self) -> tuple[int, bool]:
        return len(self.hidden), False

    def anatomy(self, opts: BuildOptions, batch: int) -> Anatomy:
        B, widths = batch, (self.in_features, *self.hidden)
        params, blocks = [], []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            params += [(f"layers/{i}/bias", (b,)), (f"layers/{i}/kernel", (a, b))]
            hidden = ("batch", "mlp")
            blocks.append(Block(f"dense {a}->{b}", (
                Tensor("x", (B, a), ("batch", None), block_input=True, batch_cast=i == 0),
                Tensor("dot", (B, b), hidden, inputs=("x",), dot="dot", flops=2 * B * a * b),
                Tensor("pre_act", (B, b), hidden, inputs=("dot",)),
                Tensor("relu_input", (B, b), hidden, inputs=("pre_act",), needed=True),
            ), grad_workspace=(Tensor("d_hidden", (B, b), hidden),)))
        out = self.out_features
        params += [("head/bias", (out,)), ("head/kernel", (widths[-1], out))]
        return Anatomy(
            params=tuple(params), blocks=tuple(blocks),
            outside=(Tensor("features", (B, widths[-1]), ("batch", None), needed=True),
                     Tensor("outputs", (B, out), ("batch", None), needed=True)),
            loss_workspace=(Tensor("d_outputs", (B, out), ("batch", None), "float32"),),
            example=(((self.in_features,), "float32"),
                     ((), "int32") if self.loss == "cross_entropy" else ((out,), "float32")),
            outside_flops=2 * B * widths[-1] * out,
            chain=(*(f"layers/{i}/kernel" for i in range(len(self.hidden))), "head/kernel"),
        )

    def build(self, opts: BuildOptions) -> Workload:
        """Random inputs; integer labels (cross_entropy) or float targets (mse)."""
        B = opts.batch_size
        if self.loss == "cross_entropy":
            targets = jax.ShapeDtypeStruct((B,), jnp.int32)
        else:
            targets = jax.ShapeDtypeStruct((B, self.out_features), jnp.float32)
        loss_fn = losses.LOSSES[self.loss]

        def loss(model: MLP, batch: Batch) -> jax.Array:
            return loss_fn(model(batch["inputs"]), batch["targets"])

        return Workload(
            init=lambda rngs: MLP(self, opts, rngs=rngs),
            batch={"inputs": jax.ShapeDtypeStruct((B, self.in_features), jnp.float32),
                   "targets": targets},
            loss=loss,
            int_maxval={"targets": self.out_features},
            predict=lambda model, batch: model(batch["inputs"]),
            inputs=("inputs",),
        )


def _dense_relu(layer: nnx.Linear, x: jax.Array) -> jax.Array:
    return jax.nn.relu(layer(x))


class MLP(nnx.Module):
    """``in -> hidden[0] -> ... -> out``, ReLU between, each hidden layer a remat block."""

    def __init__(self, c: MLPConfig, opts: BuildOptions, *, rngs: nnx.Rngs):
        widths = (c.in_features, *c.hidden)
        self.layers = nnx.List([
            nnx.Linear(a, b, dtype=opts.dtype, rngs=rngs)
            for a, b in zip(widths[:-1], widths[1:], strict=True)
        ])
        self.head = nnx.Linear(widths[-1], c.out_features, dtype=opts.dtype, rngs=rngs)
        self.remat_policy = opts.remat_policy
        self.remat_every = opts.remat_every

    def __call__(self, x_BxI: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            policy = self.remat_policy if i % self.remat_every == 0 else remat.POLICIES["none"]
            x_BxI = remat.apply(_dense_relu, policy)(layer, x_BxI)
        return self.head(x_BxI)
