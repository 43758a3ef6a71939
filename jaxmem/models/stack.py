"""The layer stack: blocks applied in order, by a Python loop or a scan, with remat granularity.

Granularity of the remat policy (``jaxmem.remat``):

* every block (``every=1``, the default);
* every k-th block (``every=k``): blocks 0, k, 2k, ... are checkpointed, the others keep
  everything; a scanned stack scans over groups of k blocks;
* nested (``nested=True``, scanned stacks): an outer scan over about sqrt(L) groups keeps only
  each group's input, an inner scan applies the policy per block. Kept activations then grow
  with sqrt(L) instead of L, for one more forward recompute.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from jaxmem import remat


def nested_group_size(num_layers: int) -> int | None:
    """The divisor of ``num_layers`` nearest sqrt(num_layers), strictly between 1 and L."""
    divisors = [d for d in range(2, num_layers) if num_layers % d == 0]
    if not divisors:
        return None
    return min(divisors, key=lambda d: (abs(d - math.sqrt(num_layers)), d))


def _call(block: nnx.Module, x: jax.Array) -> jax.Array:
    return block(x)


class Stack(nnx.Module):
    """``num_layers`` blocks from ``make_block``, applied in order.

    With ``stack="scan"`` the blocks are created stacked (``nnx.vmap``: parameters carry a
    leading layer axis) and applied by ``jax.lax.scan``, so one block is compiled.
    """

    def __init__(
        self,
        make_block: Callable[[nnx.Rngs], nnx.Module],
        num_layers: int,
        *,
        stack: str,
        remat_policy: remat.RematPolicy = remat.POLICIES["none"],
        remat_every: int = 1,
        remat_nested: bool = False,
        rngs: nnx.Rngs,
    ):
        self.stack = stack
        self.num_layers = num_layers
        self.remat_policy = remat_policy
        self.remat_every = remat_every
        self.remat_nested = remat_nested
        if stack == "scan":

            @nnx.split_rngs(splits=num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0)
            def create(rngs: nnx.Rngs) -> nnx.Module:
                return make_block(rngs)

            self.blocks = create(rngs)
        else:
            self.blocks = nnx.List([make_block(rngs) for _ in range(num_layers)])

    def decode(self, x: jax.Array, cache: Any, pos: jax.Array) -> tuple[jax.Array, Any]:
        """Each block's ``decode`` with its slice of the per-layer ``cache`` (leading axis L)."""
        if self.stack != "scan":
            for i, block in enumerate(self.blocks):
                x, c_i = block.decode(x, jax.tree.map(lambda a, i=i: a[i], cache), pos)
                cache = jax.tree.map(lambda a, u, i=i: a.at[i].set(u), cache, c_i)
            return x, cache
        graphdef, state = nnx.split(self.blocks)

        # The whole cache is carried and each layer's slice written back in place: scanning
        # over it as xs/ys would build a second cache for the ys.
        def body(carry: tuple[jax.Array, Any], xs: tuple[Any, jax.Array]):
            x, cache = carry
            s, layer = xs
            c = jax.tree.map(lambda a: jax.lax.dynamic_index_in_dim(a, layer, keepdims=False),
                             cache)
            x, c = nnx.merge(graphdef, s, copy=True).decode(x, c, pos)
            cache = jax.tree.map(
                lambda a, u: jax.lax.dynamic_update_index_in_dim(a, u, layer, axis=0), cache, c)
            return (x, cache), None

        (x, cache), _ = jax.lax.scan(body, (x, cache), (state, jnp.arange(self.num_layers)))
        return x, cache

    def _policy(self, index: int) -> remat.RematPolicy:
        return self.remat_policy if index % self.remat_every == 0 else remat.POLICIES["none"]

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.stack != "scan":
            for i, block in enumerate(self.blocks):
                x = remat.apply(_call, self._policy(i))(block, x)
            return x
        return self._scan(x)

    def _scan(self, x: jax.Array) -> jax.Array:
        graphdef, state = nnx.split(self.blocks)

        def block_fn(x: jax.Array, s: Any) -> jax.Array:
            return nnx.merge(graphdef, s, copy=True)(x)

        def group_state(start: jax.Array, size: int) -> Any:  # blocks [start, start + size)
            return jax.tree.map(lambda a: jax.lax.dynamic_slice_in_dim(a, start, size), state)

        # Groups are scanned by index, slicing the stacked parameters inside the step, so that
        # the parameters stay arguments (a reshaped copy would count as a saved residual).
        L, k = self.num_layers, self.remat_every
        if self.remat_nested:
            g = nested_group_size(L)
            per_block = remat.apply(lambda x, s: (block_fn(x, s), None), self.remat_policy,
                                    prevent_cse=False)

            def group_fn(x: jax.Array, i: jax.Array) -> tuple[jax.Array, None]:
                return jax.lax.scan(per_block, x, group_state(i * g, g))[0], None

            outer = remat.apply(group_fn, remat.POLICIES["full"], prevent_cse=False)
            return jax.lax.scan(outer, x, jnp.arange(L // g))[0]
        if k > 1:
            def group_fn(x: jax.Array, i: jax.Array) -> tuple[jax.Array, None]:
                for j in range(k):
                    s_j = jax.tree.map(lambda a, j=j: a[i * k + j], state)
                    fn = remat.apply(block_fn, self._policy(j), prevent_cse=False)
                    x = fn(x, s_j)
                return x, None

            return jax.lax.scan(group_fn, x, jnp.arange(L // k))[0]
        body = remat.apply(lambda x, s: (block_fn(x, s), None), self.remat_policy,
                           prevent_cse=False)
        return jax.lax.scan(body, x, state)[0]
