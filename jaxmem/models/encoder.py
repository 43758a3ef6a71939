"""``encoder``: a bidirectional transformer classifier (mean-pooled, BERT-style shape)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmem import losses
from jaxmem.errors import check_positive
from jaxmem.models.anatomy import Anatomy, Tensor
from jaxmem.models.base import ModelConfig
from jaxmem.models.transformer import TransformerConfig
from jaxmem.models.workload import Batch, BuildOptions, Workload


@ModelConfig.register("encoder")
@dataclasses.dataclass(frozen=True)
class EncoderConfig(TransformerConfig):
    """An encoder classifier: :class:`TransformerConfig` plus the number of classes."""

    kind: str = "encoder"
    num_classes: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("num_classes", self.num_classes)

    def anatomy(self, opts: BuildOptions, batch: int) -> Anatomy:
        B, C = batch, self.num_classes
        return Anatomy(
            params=(*self.trunk_params(opts), ("head/bias", (C,)),
                    ("head/kernel", (self.d_model, C))),
            blocks=(self.block_anatomy(opts, B, causal=False),),
            outside=(*self.trunk_outside(B),
                     Tensor("pooled", (B, self.d_model), ("batch", "embed"), needed=True),
                     Tensor("logits", (B, C), ("batch", None), needed=True)),
            loss_workspace=(Tensor("d_stream", (B, self.seq_len, self.d_model),
                                   ("batch", "length", "embed")),),
            scanned=self.stack == "scan",
            rows_per_example=self.seq_len,
            example=(((self.seq_len,), "int32"), ((), "int32")),
            outside_flops=2 * B * self.d_model * C,
            lookups=self.lookup_tables(opts),
            positions=self.position_tables(opts),
        )

    def build(self, opts: BuildOptions) -> Workload:
        """Sequence classification: ``batch_size`` sequences, one label each."""
        batch_size = opts.batch_size

        def loss(model: Encoder, batch: Batch) -> jax.Array:
            return losses.cross_entropy(model(batch["inputs"]), batch["labels"])

        return Workload(
            init=lambda rngs: Encoder(self, opts, rngs=rngs),
            batch={
                "inputs": jax.ShapeDtypeStruct((batch_size, self.seq_len), jnp.int32),
                "labels": jax.ShapeDtypeStruct((batch_size,), jnp.int32),
            },
            loss=loss,
            int_maxval={"inputs": self.vocab_size, "labels": self.num_classes},
            predict=lambda model, batch: model(batch["inputs"]),
            inputs=("inputs",),
        )


class Encoder(nnx.Module):
    """Embeddings, a bidirectional block stack, LayerNorm, mean over tokens, linear head."""

    def __init__(self, c: EncoderConfig, opts: BuildOptions, *, rngs: nnx.Rngs):
        self.trunk = c.make_trunk(opts, causal=False, rngs=rngs)
        self.head = nnx.Linear(c.d_model, c.num_classes, dtype=opts.dtype, rngs=rngs)

    def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
        x_BxLxD = self.trunk(tokens_BxL)
        return self.head(x_BxLxD.mean(axis=1))  # BxC
