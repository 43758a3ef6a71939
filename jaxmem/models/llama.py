"""``llama``: a Llama-style decoder (RMSNorm, rotary positions, SwiGLU MLP, grouped-query
attention, no biases, untied output embedding by default).

The rest of a GPT is shared: the LM head and its loss (``loss_chunks``), the layer stack with
its remat settings, decoding over a KV cache (which holds ``num_kv_heads`` heads), the sharding
rules. Published shapes (``experiments/plan_llama8b_*.yaml``): Llama 3 8B is
``num_layers=32, d_model=4096, num_heads=32, num_kv_heads=8, mlp_dim=14336,
vocab_size=128256``; Llama 3.2 1B is ``16, 2048, 32, 8, 8192, 128256`` with tied embeddings.

Example:
  >>> import jax
  >>> from flax import nnx
  >>> from jaxmem.models.llama import LlamaConfig
  >>> from jaxmem.models import BuildOptions
  >>> c = LlamaConfig(vocab_size=64, seq_len=16, d_model=32, num_heads=4, num_kv_heads=2)
  >>> model = c.build(BuildOptions(batch_size=2)).init(nnx.Rngs(0))
  >>> model(jax.numpy.zeros((2, 16), "int32")).shape
  (2, 16, 64)
  >>> model.trunk.blocks.blocks[0].attn.key.kernel.shape  # 2 key heads of 8
  (32, 16)
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jaxmem.errors import ConfigError
from jaxmem.models import anatomy
from jaxmem.models.anatomy import Tensor
from jaxmem.models.attention import Attention, KVCache
from jaxmem.models.base import ModelConfig
from jaxmem.models.gpt import GPTConfig
from jaxmem.models.layers import RMSNorm, swiglu
from jaxmem.models.stack import Stack
from jaxmem.models.transformer import (
    ACTIVATION,
    PARAM_AXES,
    Block,
    attention_half,
    block_gradients,
    mlp_width,
    trunk_outside,
)
from jaxmem.models.workload import BuildOptions
from jaxmem.sharding import Rules, constrain

#: What a Llama block tags, in forward order: a GPT's names plus ``mlp_up`` (the SwiGLU's
#: second projection; ``mlp_pre_act`` is the gate before its activation).
CHECKPOINT_NAMES = ("block_input", "query", "key", "value", "attn_context", "attn_out",
                    "mlp_pre_act", "mlp_up", "mlp_post_act", "mlp_out")


@ModelConfig.register("llama")
@dataclasses.dataclass(frozen=True)
class LlamaConfig(GPTConfig):
    """A Llama-style decoder: :class:`GPTConfig`'s fields plus

    Attributes:
      num_kv_heads: key/value heads (grouped-query attention); must divide ``num_heads``
        (0: as many as ``num_heads``, plain multi-head attention).
      mlp_dim: the SwiGLU's hidden width (0: ``mlp_ratio * d_model``).
      rope_theta: base of the rotary position embedding's frequencies.
      norm_eps: RMSNorm's epsilon.
    """

    PARAM_AXES: ClassVar[tuple[tuple[str, tuple[str | None, ...]], ...]] = (
        *PARAM_AXES,
        ("*/mlp/gate/kernel*", ("embed", "mlp")),  # D x F, column-parallel
        ("*/mlp/gate/scale", (None, "mlp")),
        ("*norm/scale", ("norm",)),  # D
    )
    EMBEDDING_PATTERNS: ClassVar[tuple[str, ...]] = ("trunk/embed/*",)

    kind: str = "llama"
    tie_embeddings: bool = False
    num_kv_heads: int = 0
    mlp_dim: int = 0
    rope_theta: float = 500000.0
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.num_kv_heads < 0 or self.num_heads % self.kv_heads():
            raise ConfigError("num_kv_heads", f"must divide num_heads={self.num_heads} "
                              "(0: as many as num_heads)", value=self.num_kv_heads)
        if self.mlp_dim < 0:
            raise ConfigError("mlp_dim", "must be >= 0 (0: mlp_ratio * d_model)",
                              value=self.mlp_dim)
        if (self.d_model // self.num_heads) % 2:
            raise ConfigError("num_heads", "rotary embeddings need an even head width "
                              f"d_model / num_heads = {self.d_model // self.num_heads}",
                              value=self.num_heads)
        if not self.rope_theta > 0:
            raise ConfigError("rope_theta", "must be > 0", value=self.rope_theta)
        if not self.norm_eps > 0:
            raise ConfigError("norm_eps", "must be > 0", value=self.norm_eps)

    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    def mlp_hidden(self) -> int:
        return self.mlp_dim or super().mlp_hidden()

    def checkpoint_names(self) -> tuple[str, ...]:
        return CHECKPOINT_NAMES

    def check_sharding(self, mesh_shape: Mapping[str, int], rules: Rules) -> None:
        super().check_sharding(mesh_shape, rules)
        ways = math.prod(mesh_shape.get(a, 1) for a in rules.mesh_axes("heads"))
        if self.kv_heads() % ways:
            raise ConfigError("model.num_kv_heads", f"must be divisible by the {ways} devices "
                              "that split attention heads (mesh.tensor)",
                              value=self.kv_heads())

    def make_trunk(self, opts: BuildOptions, *, causal: bool, rngs: nnx.Rngs) -> nnx.Module:
        return LlamaTrunk(self, opts, rngs=rngs)

    def trunk_params(self, opts: BuildOptions) -> list[tuple[str, tuple[int, ...]]]:
        D, F, KV = self.d_model, mlp_width(self, opts), self.d_model // self.num_heads * \
            self.kv_heads()
        shapes = {"attn/query/kernel": (D, D), "attn/key/kernel": (D, KV),
                  "attn/value/kernel": (D, KV), "attn/out/kernel": (D, D),
                  "ln1/scale": (D,), "ln2/scale": (D,), "mlp/gate/kernel": (D, F),
                  "mlp/up/kernel": (D, F), "mlp/down/kernel": (F, D)}
        if self.stack == "scan":
            blocks = [(f"{self.BLOCKS_PATH}/{n}", (self.num_layers, *s))
                      for n, s in shapes.items()]
        else:
            blocks = [(f"{self.BLOCKS_PATH}/{i}/{n}", s) for i in range(self.num_layers)
                      for n, s in shapes.items()]
        return [*blocks, ("trunk/embed/embedding", (self.vocab_size, D)),
                ("trunk/norm/scale", (D,))]

    def block_anatomy(self, opts: BuildOptions, batch: int, causal: bool) -> anatomy.Block:
        B, L, D, F = batch, self.seq_len, self.d_model, mlp_width(self, opts)
        BLD, BLF = (B, L, D), (B, L, F)
        act, mlp = ACTIVATION, ("batch", "length", "mlp")
        mlp_values = [
            Tensor("gate_dot", BLF, mlp, inputs=("h2",), dot="dot", flops=2 * B * L * D * F),
            Tensor("mlp_pre_act", BLF, mlp, inputs=("gate_dot",), needed=True,
                   tag="mlp_pre_act"),
            Tensor("up_dot", BLF, mlp, inputs=("h2",), dot="dot", flops=2 * B * L * D * F),
            Tensor("mlp_up", BLF, mlp, inputs=("up_dot",), needed=True, tag="mlp_up"),
            Tensor("mlp_post_act", BLF, mlp, inputs=("mlp_pre_act", "mlp_up"), needed=True,
                   tag="mlp_post_act", matmul_operand=True),
            Tensor("down_dot", BLD, act, inputs=("mlp_post_act",), dot="dot",
                   flops=2 * B * L * F * D),
            Tensor("mlp_out", BLD, act, inputs=("down_dot",), tag="mlp_out"),
        ]
        values = [*attention_half(self, B, causal, stats=1),  # RMSNorm: one statistic per row
                  *anatomy.in_stage("mlp", mlp_values)]
        shared = (Tensor("silu_sigmoid", BLF, mlp, stage="mlp"),)  # the SwiGLU's, as the GELU's
        return anatomy.Block("llama block", tuple(values), self.num_layers,
                             grad_workspace=tuple(block_gradients(self, B, 2, F)),
                             shared=shared)

    def trunk_outside(self, batch: int, lm_head: bool = False) -> list[Tensor]:
        return trunk_outside(self, batch, stats=1, lm_head=lm_head)


class SwiGLU(nnx.Module):
    """``down(silu(gate(x)) * up(x))``, no biases."""

    def __init__(self, d_model: int, hidden: int, *, dtype: Any, rngs: nnx.Rngs):
        self.gate = nnx.Linear(d_model, hidden, use_bias=False, dtype=dtype, rngs=rngs)
        self.up = nnx.Linear(d_model, hidden, use_bias=False, dtype=dtype, rngs=rngs)
        self.down = nnx.Linear(hidden, d_model, use_bias=False, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        hidden = ("batch", "length", "mlp")
        g_BxLxF = checkpoint_name(constrain(self.gate(x_BxLxD), hidden), "mlp_pre_act")
        u_BxLxF = checkpoint_name(constrain(self.up(x_BxLxD), hidden), "mlp_up")
        h_BxLxF = checkpoint_name(swiglu(g_BxLxF, u_BxLxF), "mlp_post_act")
        return checkpoint_name(self.down(h_BxLxF), "mlp_out")


class LlamaBlock(Block):
    """The GPT's pre-norm block (``x + attn(norm(x))`` then ``x + mlp(norm(x))``, the same
    ``__call__`` and ``decode``) with RMSNorms, grouped-query rotary attention without biases
    and a SwiGLU MLP."""

    def __init__(self, c: LlamaConfig, opts: BuildOptions, *, rngs: nnx.Rngs):
        dtype = opts.dtype
        self.ln1 = RMSNorm(c.d_model, dtype=dtype, epsilon=c.norm_eps)
        self.attn = Attention(c.d_model, c.num_heads, causal=True, dtype=dtype,
                              implementation=c.attention, chunk=c.attention_chunk,
                              window=c.window, features=c.linear_features,
                              num_kv_heads=c.kv_heads(), rope_theta=c.rope_theta,
                              use_bias=False, rngs=rngs)
        self.ln2 = RMSNorm(c.d_model, dtype=dtype, epsilon=c.norm_eps)
        self.mlp = SwiGLU(c.d_model, mlp_width(c, opts), dtype=dtype, rngs=rngs)


class LlamaTrunk(nnx.Module):
    """Token embedding, the block stack, a final RMSNorm (positions are rotary, inside the
    attention)."""

    def __init__(self, c: LlamaConfig, opts: BuildOptions, *, rngs: nnx.Rngs):
        self.embed = nnx.Embed(c.vocab_size, c.d_model, dtype=opts.dtype, rngs=rngs)
        self.blocks = Stack(
            lambda r: LlamaBlock(c, opts, rngs=r),
            c.num_layers,
            stack=c.stack,
            remat_policy=opts.remat_policy,
            remat_every=opts.remat_every,
            remat_nested=opts.remat_nested,
            rngs=rngs,
        )
        self.norm = RMSNorm(c.d_model, dtype=opts.dtype, epsilon=c.norm_eps)

    def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
        return self.norm(self.blocks(self.embed(tokens_BxL)))

    def decode(self, tokens_Bx1: jax.Array, cache: KVCache, pos: jax.Array
               ) -> tuple[jax.Array, KVCache]:
        x_Bx1xD, cache = self.blocks.decode(self.embed(tokens_Bx1), cache, pos)
        return self.norm(x_Bx1xD), cache
