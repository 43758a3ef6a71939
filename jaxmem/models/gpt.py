"""``gpt``: a decoder-only language model (learned positions, pre-LN, causal attention).

Example:
  >>> import jax
  >>> from flax import nnx
  >>> from jaxmem.models.gpt import GPTConfig
  >>> from jaxmem.models import BuildOptions
  >>> w = GPTConfig(vocab_size=64, seq_len=16, d_model=32).build(BuildOptions(batch_size=2))
  >>> model = w.init(nnx.Rngs(0))
  >>> model(jax.numpy.zeros((2, 16), "int32")).shape
  (2, 16, 64)
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, ClassVar

import chex
import jax
import jax.numpy as jnp
from flax import nnx

from jaxmem import losses
from jaxmem.errors import ConfigError, check_positive
from jaxmem.models.anatomy import ROUNDED, Anatomy, Tensor
from jaxmem.models.attention import KVCache
from jaxmem.models.base import ModelConfig
from jaxmem.models.transformer import TransformerConfig
from jaxmem.models.workload import Batch, BuildOptions, Workload
from jaxmem.sharding import constrain

if TYPE_CHECKING:
    from jaxmem.config import InferenceConfig


@ModelConfig.register("gpt")
@dataclasses.dataclass(frozen=True)
class GPTConfig(TransformerConfig):
    """A GPT: :class:`TransformerConfig` plus output-embedding tying.

    Attributes:
      tie_embeddings: the LM head reuses the token embedding (GPT-2 does).
      loss_chunks: chunked cross-entropy: the tokens' logits are computed this many chunks at a
        time and recomputed in the backward, so the full ``B x L x V`` logits never exist
        (1: plain logits).
    """

    DECODES: ClassVar[bool] = True

    kind: str = "gpt"
    tie_embeddings: bool = True
    loss_chunks: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive("loss_chunks", self.loss_chunks)
        if self.seq_len % self.loss_chunks:
            raise ConfigError("loss_chunks", f"must divide seq_len={self.seq_len}",
                              value=self.loss_chunks)

    def check_task(self, task: str, inference: InferenceConfig) -> None:
        super().check_task(task, inference)
        if task == "decode" and inference.context > self.seq_len:
            raise ConfigError("inference.context", f"exceeds the model's seq_len={self.seq_len}",
                              value=inference.context)

    def anatomy(self, opts: BuildOptions, batch: int) -> Anatomy:
        B, L, V = batch, self.seq_len, self.vocab_size
        head = [] if self.tie_embeddings else [("head/kernel", (self.d_model, V))]
        logits = ("batch", "length", "vocab")
        if self.loss_chunks == 1:  # the loss keeps the logits and a log-normaliser per row
            outside = [Tensor("logits", (B, L, V), logits, needed=True),
                       Tensor("log_normaliser", (B, L), ("batch", "length"), "float32",
                              needed=True)]
            # the logits' gradient has their configured dtype: 16 bits under bf16-mixed
            # even on XLA:CPU, which computes the logits in float32 (measured)
            loss = [Tensor("d_logits", (B, L, V), logits, ROUNDED, in_place_of="logits"),
                    Tensor("probs", (B, L, V), logits, "float32")]
        else:  # one chunk's logits at a time, recomputed in the backward
            n = B * L // self.loss_chunks
            outside = []
            loss = [Tensor("chunk_logits", (n, V), (None, "vocab"), "float32"),
                    Tensor("d_chunk_logits", (n, V), (None, "vocab"), "float32")]
        lm_head = head[0][0] if head else "trunk/embed/embedding"
        return Anatomy(
            params=tuple(self.trunk_params(opts) + head),
            blocks=(self.block_anatomy(opts, B, causal=True),),
            outside=(*self.trunk_outside(B, lm_head=True), *outside),
            loss_workspace=tuple(loss),
            scanned=self.stack == "scan",
            rows_per_example=L,
            example=(((L,), "int32"), ((L,), "int32")),
            outside_flops=2 * B * L * self.d_model * V,  # the LM head
            outside_recompute_flops=0 if self.loss_chunks == 1 else 2 * B * L * self.d_model * V,
            lm_head=lm_head,
            lookups=self.lookup_tables(opts, lm_head),
            positions=self.position_tables(opts),
        )

    def build(self, opts: BuildOptions) -> Workload:
        """Next-token prediction on ``batch_size`` sequences of ``seq_len`` tokens."""
        B, L = opts.batch_size, self.seq_len
        tokens = jax.ShapeDtypeStruct((B, L), jnp.int32)

        chunks = self.loss_chunks

        def loss(model: GPT, batch: Batch) -> jax.Array:
            if chunks == 1:
                return losses.cross_entropy(model(batch["inputs"]), batch["targets"])
            h_BxLxD = model.trunk(batch["inputs"])
            return losses.chunked_cross_entropy(h_BxLxD.reshape(-1, h_BxLxD.shape[-1]),
                                                model.head_weight(), batch["targets"].reshape(-1),
                                                chunks)

        return Workload(
            init=lambda rngs: GPT(self, opts, rngs=rngs),
            batch={"inputs": tokens, "targets": tokens},
            loss=loss,
            int_maxval={"inputs": self.vocab_size, "targets": self.vocab_size},
            predict=lambda model, batch: model(batch["inputs"]),
            inputs=("inputs",),
        )


class GPT(nnx.Module):
    """The config's trunk (GPT: token + position embeddings, a causal block stack, final
    LayerNorm) and an LM head (or the token table, tied)."""

    def __init__(self, c: GPTConfig, opts: BuildOptions, *, rngs: nnx.Rngs):
        self.trunk = c.make_trunk(opts, causal=True, rngs=rngs)
        self.head = None if c.tie_embeddings else nnx.Linear(
            c.d_model, c.vocab_size, use_bias=False, dtype=opts.dtype, rngs=rngs
        )

    def decode(self, tokens_Bx1: jax.Array, cache: KVCache, pos: jax.Array
               ) -> tuple[jax.Array, KVCache]:
        """Logits ``BxV`` of one new token per sequence at position ``pos``, and the cache with
        its keys and values written at ``pos``."""
        x_Bx1xD, cache = self.trunk.decode(tokens_Bx1, cache, pos)
        logits_Bx1xV = (self.trunk.embed.attend(x_Bx1xD) if self.head is None
                        else self.head(x_Bx1xD))
        return logits_Bx1xV[:, 0], cache

    def head_weight(self) -> jax.Array:
        """The LM head as a ``d_model x vocab`` matrix in the compute dtype."""
        if self.head is None:
            table_VxD = self.trunk.embed.embedding[...]
            return table_VxD.astype(self.trunk.embed.dtype).T
        return self.head.kernel[...].astype(self.head.dtype or self.head.kernel.dtype)

    def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
        chex.assert_rank(tokens_BxL, 2)
        chex.assert_type(tokens_BxL, int)
        x_BxLxD = self.trunk(tokens_BxL)
        if self.head is None:
            logits_BxLxV = self.trunk.embed.attend(x_BxLxD)
        else:
            logits_BxLxV = self.head(x_BxLxD)
        return constrain(logits_BxLxV, ("batch", "length", "vocab"))
