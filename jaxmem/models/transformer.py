"""Pre-LN transformer pieces shared by ``gpt`` and ``encoder``, and the layer stack.

Intermediates are tagged with ``jax.ad_checkpoint.checkpoint_name`` so that name-based remat
policies can pick what to save. Shape suffixes: B batch, L length, D d_model, H heads,
K head dim, F MLP hidden width.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from jaxmem.errors import ConfigError, check_choice, check_positive
from jaxmem.models import anatomy
from jaxmem.models.anatomy import Tensor
from jaxmem.models.attention import IMPLEMENTATIONS, WINDOWED, Attention, KVCache, check_platform
from jaxmem.models.base import ModelConfig
from jaxmem.models.layers import LayerNorm, gelu
from jaxmem.models.stack import Stack
from jaxmem.models.workload import BuildOptions
from jaxmem.sharding import Rules, constrain

ACTIVATION = ("batch", "length", "embed")  # the residual stream

#: Every name a transformer block tags, in forward order.
CHECKPOINT_NAMES = (
    "block_input",  # residual stream entering the block, BxLxD
    "query",  # q projection, BxLxHxK
    "key",  # k projection, BxLxHxK
    "value",  # v projection, BxLxHxK
    "attn_context",  # softmax(qk) v, BxLxHxK
    "attn_out",  # attention output projection, BxLxD
    "mlp_pre_act",  # MLP hidden before the activation, BxLxF
    "mlp_post_act",  # MLP hidden after the activation, BxLxF
    "mlp_out",  # MLP output projection, BxLxD
)

STACKS = ("loop", "scan")

_QKV = ("query", "key", "value")
#: Logical axes of every transformer parameter (``jaxmem.sharding``); a scanned stack adds a
#: leading ``layers`` axis. ``kernel*`` and ``scale`` cover int8 weights and their scales.
PARAM_AXES: tuple[tuple[str, tuple[str | None, ...]], ...] = (
    *((f"*/attn/{n}/kernel*", ("embed", "heads")) for n in _QKV),  # D x HK, column-parallel
    *((f"*/attn/{n}/bias", ("heads",)) for n in _QKV),  # HK
    *((f"*/attn/{n}/scale", (None, "heads")) for n in _QKV),  # 1 x HK
    ("*/attn/out/kernel*", ("heads", "embed")),  # HK x D, row-parallel
    ("*/attn/out/bias", ("embed",)),
    ("*/attn/out/scale", (None, "embed")),
    ("*/mlp/up/kernel*", ("embed", "mlp")),  # D x F, column-parallel
    ("*/mlp/up/mask", ("embed", "mlp")),
    ("*/mlp/up/bias", ("mlp",)),
    ("*/mlp/up/scale", (None, "mlp")),
    ("*/mlp/down/kernel*", ("mlp", "embed")),  # F x D, row-parallel
    ("*/mlp/down/mask", ("mlp", "embed")),
    ("*/mlp/down/bias", ("embed",)),
    ("*/mlp/down/scale", (None, "embed")),
    ("*/ln*/scale", ("norm",)),  # D
    ("*/ln*/bias", ("norm",)),
    ("trunk/embed/*", ("vocab", "embed")),  # V x D table (int8: V x 1 scales)
    ("trunk/pos/*", ("length", "embed")),  # L x D
    ("head/kernel", ("embed", "vocab")),  # D x V (or classes)
    ("head/bias", ("vocab",)),
)


@dataclasses.dataclass(frozen=True)
class TransformerConfig(ModelConfig):
    """Shape of a transformer stack (fields shared by ``gpt`` and ``encoder``).

    Attributes:
      vocab_size: token vocabulary.
      seq_len: tokens per sequence (also the learned position table's length).
      num_layers: transformer blocks.
      d_model: residual stream width.
      num_heads: attention heads; must divide ``d_model``.
      mlp_ratio: MLP hidden width = ``mlp_ratio * d_model``.
      stack: ``loop`` (a Python loop over blocks) or ``scan`` (a scan over stacked blocks:
        one block is compiled, parameters carry a leading layer axis).
      attention: implementation (``jaxmem.models.attention``): ``naive``, ``blockwise``,
        ``xla``, ``cudnn`` or ``linear``.
      attention_chunk: query/key chunk of ``blockwise``.
      window: sliding window (keys within this distance); 0 attends to all.
      linear_features: random features of ``linear``.
    """

    BLOCKS_PATH: ClassVar[str] = "trunk/blocks/blocks"
    EMBEDDING_PATTERNS: ClassVar[tuple[str, ...]] = ("trunk/embed/*", "trunk/pos/*")
    PARAM_AXES: ClassVar[tuple[tuple[str, tuple[str | None, ...]], ...]] = PARAM_AXES
    PRUNABLE: ClassVar[bool] = True

    vocab_size: int = 512
    seq_len: int = 128
    num_layers: int = 2
    d_model: int = 128
    num_heads: int = 4
    mlp_ratio: int = 4
    stack: str = "loop"
    attention: str = "naive"
    attention_chunk: int = 128
    window: int = 0
    linear_features: int = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("vocab_size", "seq_len", "num_layers", "d_model", "num_heads", "mlp_ratio"):
            check_positive(name, getattr(self, name))
        if self.d_model % self.num_heads:
            raise ConfigError("num_heads", f"must divide d_model={self.d_model}",
                              value=self.num_heads)
        check_choice("stack", self.stack, STACKS, what="stack")
        check_choice("attention", self.attention, IMPLEMENTATIONS, what="attention")
        check_positive("attention_chunk", self.attention_chunk)
        check_positive("linear_features", self.linear_features)
        if self.attention == "blockwise" and self.seq_len % min(self.attention_chunk,
                                                                self.seq_len):
            raise ConfigError("attention_chunk", f"must divide seq_len={self.seq_len}",
                              value=self.attention_chunk)
        if self.window < 0:
            raise ConfigError("window", "must be >= 0 (0: no window)", value=self.window)
        if self.window and self.attention not in WINDOWED:
            raise ConfigError("window", f"cannot be combined with attention={self.attention!r}",
                              value=self.window, choices=WINDOWED)

    def check_platform(self, platform: str) -> None:
        check_platform(self.attention, platform)

    def check_sharding(self, mesh_shape: Mapping[str, int], rules: Rules) -> None:
        ways = math.prod(mesh_shape.get(a, 1) for a in rules.mesh_axes("heads"))
        if self.num_heads % ways:
            raise ConfigError("model.num_heads", f"must be divisible by the {ways} devices "
                              "that split attention heads (mesh.tensor)", value=self.num_heads)

    def checkpoint_names(self) -> tuple[str, ...]:
        return CHECKPOINT_NAMES

    def layer_count(self) -> tuple[int, bool]:
        return self.num_layers, self.stack == "scan"

    def kv_heads(self) -> int:
        """Key/value heads (a KV cache's heads)."""
        return self.num_heads

    def mlp_hidden(self) -> int:
        """The MLP's hidden width before pruning."""
        return self.mlp_ratio * self.d_model

    def make_trunk(self, opts: BuildOptions, *, causal: bool, rngs: nnx.Rngs) -> nnx.Module:
        """Tokens to the final residual stream ``BxLxD`` (with ``embed``, a token table)."""
        return Trunk(self, opts, causal=causal, rngs=rngs)

    # what jaxmem.estimate reads (a kind with other blocks overrides these three)
    def trunk_params(self, opts: BuildOptions) -> list[tuple[str, tuple[int, ...]]]:
        """``(path, shape)`` of the trunk's parameters, as ``nnx.split`` names them."""
        return trunk_params(self, opts)

    def lookup_tables(self, opts: BuildOptions, lm_head: str = "") -> tuple[str, ...]:
        """The trunk's embedding tables read only by a lookup (all but one tied to the head)."""
        return tuple(p for p, _ in self.trunk_params(opts)
                     if p.endswith("/embedding") and p != lm_head)

    def position_tables(self, opts: BuildOptions) -> tuple[str, ...]:
        """The trunk's embedding tables looked up by position (``arange(L)``), not by token."""
        return tuple(p for p, _ in self.trunk_params(opts) if p.startswith("trunk/pos/"))

    def block_anatomy(self, opts: BuildOptions, batch: int, causal: bool) -> anatomy.Block:
        """One block's forward values for a (micro)batch of ``batch`` sequences."""
        return block_anatomy(self, opts, batch, causal)

    def trunk_outside(self, batch: int, lm_head: bool = False) -> list[Tensor]:
        """What the trunk keeps outside its blocks (``lm_head``: its output goes only to an
        LM head's matmul)."""
        return trunk_outside(self, batch, lm_head=lm_head)


class MLP(nnx.Module):
    """Two-layer GELU MLP (the GELU keeps only its input: ``layers.gelu``)."""

    def __init__(self, d_model: int, hidden: int, *, dtype: Any, rngs: nnx.Rngs):
        self.up = nnx.Linear(d_model, hidden, dtype=dtype, rngs=rngs)
        self.down = nnx.Linear(hidden, d_model, dtype=dtype, rngs=rngs)

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        h_BxLxF = constrain(self.up(x_BxLxD), ("batch", "length", "mlp"))
        h_BxLxF = checkpoint_name(h_BxLxF, "mlp_pre_act")
        h_BxLxF = checkpoint_name(gelu(h_BxLxF), "mlp_post_act")
        return checkpoint_name(self.down(h_BxLxF), "mlp_out")


def mlp_width(c: TransformerConfig, opts: BuildOptions) -> int:
    """The MLP hidden width, narrowed by structured pruning (``opts.mlp_keep``)."""
    return max(1, round(c.mlp_hidden() * opts.mlp_keep))


class Block(nnx.Module):
    """Pre-LN block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))``."""

    def __init__(self, c: TransformerConfig, opts: BuildOptions, *, causal: bool,
                 rngs: nnx.Rngs):
        dtype = opts.dtype
        self.ln1 = LayerNorm(c.d_model, dtype=dtype)
        self.attn = Attention(c.d_model, c.num_heads, causal=causal, dtype=dtype,
                              implementation=c.attention, chunk=c.attention_chunk,
                              window=c.window, features=c.linear_features, rngs=rngs)
        self.ln2 = LayerNorm(c.d_model, dtype=dtype)
        self.mlp = MLP(c.d_model, mlp_width(c, opts), dtype=dtype, rngs=rngs)

    def decode(self, x_Bx1xD: jax.Array, cache: KVCache, pos: jax.Array
               ) -> tuple[jax.Array, KVCache]:
        """One new token per sequence at position ``pos``, attending over the cache."""
        a_Bx1xD, cache = self.attn.decode(self.ln1(x_Bx1xD), cache, pos)
        x_Bx1xD = x_Bx1xD + a_Bx1xD
        return x_Bx1xD + self.mlp(self.ln2(x_Bx1xD)), cache

    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        x_BxLxD = checkpoint_name(constrain(x_BxLxD, ACTIVATION), "block_input")
        x_BxLxD = x_BxLxD + self.attn(self.ln1(x_BxLxD))
        return constrain(x_BxLxD + self.mlp(self.ln2(x_BxLxD)), ACTIVATION)


class Trunk(nnx.Module):
    """Token and learned position embeddings, the block stack, a final LayerNorm: tokens to
    the residual stream ``BxLxD`` (shared by ``gpt`` and ``encoder``)."""

    def __init__(self, c: TransformerConfig, opts: BuildOptions, *, causal: bool,
                 rngs: nnx.Rngs):
        dtype = opts.dtype
        self.embed = nnx.Embed(c.vocab_size, c.d_model, dtype=dtype, rngs=rngs)
        self.pos = nnx.Embed(c.seq_len, c.d_model, dtype=dtype, rngs=rngs)
        self.blocks = Stack(
            lambda r: Block(c, opts, causal=causal, rngs=r),
            c.num_layers,
            stack=c.stack,
            remat_policy=opts.remat_policy,
            remat_every=opts.remat_every,
            remat_nested=opts.remat_nested,
            rngs=rngs,
        )
        self.ln_f = LayerNorm(c.d_model, dtype=dtype)

    def __call__(self, tokens_BxL: jax.Array) -> jax.Array:
        L = tokens_BxL.shape[1]
        x_BxLxD = self.embed(tokens_BxL) + self.pos(jnp.arange(L))[None]
        return self.ln_f(self.blocks(x_BxLxD))

    def decode(self, tokens_Bx1: jax.Array, cache: KVCache, pos: jax.Array
               ) -> tuple[jax.Array, KVCache]:
        """The residual stream of one new token per sequence, the cache updated."""
        x_Bx1xD = self.embed(tokens_Bx1) + self.pos(pos[None])[None]
        x_Bx1xD, cache = self.blocks.decode(x_Bx1xD, cache, pos)
        return self.ln_f(x_Bx1xD), cache


# ------------------------------------------------------------ anatomy (jaxmem.estimate)

def _linear_params(prefix: str, d_in: int, d_out: int, leading: tuple[int, ...]
                   ) -> list[tuple[str, tuple[int, ...]]]:
    return [(f"{prefix}/bias", (*leading, d_out)), (f"{prefix}/kernel", (*leading, d_in, d_out))]


def trunk_params(c: TransformerConfig, opts: BuildOptions) -> list[tuple[str, tuple[int, ...]]]:
    """``(path, shape)`` of the trunk's parameters, as ``nnx.split`` names them."""
    D, F = c.d_model, mlp_width(c, opts)

    def block(prefix: str, leading: tuple[int, ...]) -> list[tuple[str, tuple[int, ...]]]:
        out = [p for n in ("key", "out", "query", "value")
               for p in _linear_params(f"{prefix}/attn/{n}", D, D, leading)]
        out += [(f"{prefix}/{ln}/{w}", (*leading, D)) for ln in ("ln1", "ln2")
                for w in ("bias", "scale")]
        out += _linear_params(f"{prefix}/mlp/down", F, D, leading)
        out += _linear_params(f"{prefix}/mlp/up", D, F, leading)
        return out

    if c.stack == "scan":
        blocks = block(c.BLOCKS_PATH, (c.num_layers,))
    else:
        blocks = [p for i in range(c.num_layers) for p in block(f"{c.BLOCKS_PATH}/{i}", ())]
    return [*blocks, ("trunk/embed/embedding", (c.vocab_size, D)),
            ("trunk/ln_f/bias", (D,)), ("trunk/ln_f/scale", (D,)),
            ("trunk/pos/embedding", (c.seq_len, D))]


def attention_values(c: TransformerConfig, B: int, causal: bool) -> list[Tensor]:
    """The attention core of a block: ``query``/``key``/``value`` to ``attn_context``."""
    L, D, H = c.seq_len, c.d_model, c.num_heads
    BLD, heads = (B, L, D), ("batch", "length", "heads")
    if c.attention == "blockwise":  # query chunks checkpointed: keeps q, k, v; no L x L
        return [Tensor("attn_context", BLD, heads, inputs=("query", "key", "value"),
                       needed=True, tag="attn_context", flops=4 * B * L * L * D)]
    if c.attention == "linear":  # float32 random features (and prefix sums when causal)
        M, K = c.linear_features, D // H
        feats = ("batch", "length", "heads", None)
        out = [Tensor("phi_q", (B, L, H, M), feats, "float32", ("query",), needed=True,
                      flops=2 * B * L * H * M * K),
               Tensor("phi_k", (B, L, H, M), feats, "float32", ("key",), needed=True,
                      flops=2 * B * L * H * M * K)]
        if causal:
            out.append(Tensor("kv_sums", (B, L, H, M, K), (*feats, None), "float32",
                              ("phi_k", "value"), needed=True))
        return [*out, Tensor("attn_context", BLD, heads, inputs=tuple(t.name for t in out),
                             needed=True, tag="attn_context", flops=4 * B * L * H * M * K)]
    LL = ("batch", "heads", "length", None)
    core = 2 * B * L * L * D  # scores, and again the context: every query against every key
    return [
        Tensor("q_scaled", BLD, heads, inputs=("query",), needed=True, matmul_operand=True),
        Tensor("scores", (B, H, L, L), LL, inputs=("q_scaled", "key"), dot="batched",
               flops=core),
        Tensor("probs", (B, H, L, L), LL, inputs=("scores",), needed=True, softmax=True),
        Tensor("attn_context", BLD, heads, inputs=("probs", "value"), needed=True,
               dot="batched", tag="attn_context", flops=core, matmul_only=True),
    ]


def attention_half(c: TransformerConfig, B: int, causal: bool, stats: int = 2) -> list[Tensor]:
    """A pre-norm block's values from its input to the MLP's normalised input ``h2``: the
    first norm (``stats`` float32 statistics per row), the q/k/v projections (keys and values
    with ``c.kv_heads()`` heads), the attention core, its output projection, the residual and
    the second norm. Shared by the ``gpt``/``encoder`` and ``llama`` blocks."""
    L, D = c.seq_len, c.d_model
    BLD, act, heads = (B, L, D), ACTIVATION, ("batch", "length", "heads")
    rows = ("batch", "length", None)
    # blockwise attention's checkpointed chunks keep the unscaled query too
    keeps_query = c.attention == "blockwise"

    def proj(name: str, width: int) -> list[Tensor]:
        return [Tensor(f"{name}_dot", (B, L, width), heads, inputs=("h1",), dot="dot",
                       flops=2 * B * L * D * width),
                Tensor(name, (B, L, width), heads, inputs=(f"{name}_dot",),
                       needed=name != "query" or keeps_query, tag=name,
                       # linear attention squares and sums keys and values
                       matmul_only=name != "query" and c.attention != "linear")]

    kv = D // c.num_heads * c.kv_heads()
    attention = [
        Tensor("x", BLD, act, tag="block_input", block_input=True),
        Tensor("ln1_stats", (B, L, stats), rows, "float32", ("x",), needed=True),
        Tensor("h1", BLD, act, inputs=("x", "ln1_stats"), needed=True, matmul_operand=True),
        *proj("query", D), *proj("key", kv), *proj("value", kv),
        *attention_values(c, B, causal),
        Tensor("out_dot", BLD, act, inputs=("attn_context",), dot="dot",
               flops=2 * B * L * D * D),
        Tensor("attn_out", BLD, act, inputs=("out_dot",), tag="attn_out"),
    ]
    mlp_input = [  # the MLP's backward goes through the second norm, before the attention's
        Tensor("x2", BLD, act, inputs=("x", "attn_out"), needed=True),
        Tensor("ln2_stats", (B, L, stats), rows, "float32", ("x2",), needed=True),
        Tensor("h2", BLD, act, inputs=("x2", "ln2_stats"), needed=True, matmul_operand=True),
    ]
    return [*anatomy.in_stage("attention", attention), *anatomy.in_stage("mlp", mlp_input)]


def block_gradients(c: TransformerConfig, B: int, hidden: int, F: int) -> list[Tensor]:
    """The activation gradients a block's backward holds: the residual stream's throughout,
    ``hidden`` MLP-wide ones (width ``F``) in the MLP's stage and, for attention with a score
    matrix, the scores' in the attention's."""
    L = c.seq_len
    mlp = ("batch", "length", "mlp")
    grads = [Tensor("d_stream", (B, L, c.d_model), ACTIVATION),
             *(Tensor(f"d_hidden{i}", (B, L, F), mlp, stage="mlp") for i in range(hidden))]
    if c.attention not in ("blockwise", "linear"):
        grads.append(Tensor("d_scores", (B, c.num_heads, L, L),
                            ("batch", "heads", "length", None), stage="attention"))
    return grads


def block_anatomy(c: TransformerConfig, opts: BuildOptions, B: int, causal: bool
                  ) -> anatomy.Block:
    """One transformer block's forward values for a (micro)batch of ``B`` sequences."""
    L, D, F = c.seq_len, c.d_model, mlp_width(c, opts)
    BLD, BLF = (B, L, D), (B, L, F)
    act, mlp = ACTIVATION, ("batch", "length", "mlp")
    mlp_values = [
        Tensor("up_dot", BLF, mlp, inputs=("h2",), dot="dot", flops=2 * B * L * D * F),
        Tensor("mlp_pre_act", BLF, mlp, inputs=("up_dot",), needed=True, tag="mlp_pre_act"),
        Tensor("mlp_post_act", BLF, mlp, inputs=("mlp_pre_act",), needed=True,
               tag="mlp_post_act", matmul_operand=True),
        Tensor("down_dot", BLD, act, inputs=("mlp_post_act",), dot="dot",
               flops=2 * B * L * F * D),
        Tensor("mlp_out", BLD, act, inputs=("down_dot",), tag="mlp_out"),
    ]
    values = [*attention_half(c, B, causal), *anatomy.in_stage("mlp", mlp_values)]
    # the GELU's derivative factors (tanh, and its argument's square), which the backward
    # shares with the forward when both are one computation (a Python-loop stack), or,
    # where ``Backend.shares_loop_norm_values``, the two layer norms' normalised values in
    # place of the square
    shared = tuple(Tensor(n, BLF, mlp, stage="mlp") for n in ("gelu_tanh", "gelu_square"))
    norms = (Tensor("ln1_normalised", BLD, act, stage="attention"),
             Tensor("ln2_normalised", BLD, act, stage="mlp"))
    return anatomy.Block("transformer block", tuple(values), c.num_layers,
                         grad_workspace=tuple(block_gradients(c, B, 1, F)), shared=shared,
                         shared_norms=norms, unshared_with_norms=("gelu_square",),
                         causal=causal)


def trunk_outside(c: TransformerConfig, B: int, stats: int = 2, lm_head: bool = False
                  ) -> list[Tensor]:
    """What the trunk keeps outside its blocks: the final norm's input, its ``stats`` float32
    statistics per row and its output (with ``lm_head``, read only by the LM head's matmul)."""
    BLD, act = (B, c.seq_len, c.d_model), ACTIVATION
    return [Tensor("final_norm_input", BLD, act, needed=True),
            Tensor("final_norm_stats", (B, c.seq_len, stats), ("batch", "length", None),
                   "float32", needed=True),
            Tensor("final_norm_output", BLD, act, inputs=("final_norm_input", "final_norm_stats"),
                   needed=True, matmul_operand=lm_head)]
