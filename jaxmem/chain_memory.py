"""What XLA:CPU holds for an MLP chain's kernels under 16-bit compute and remat.

An MLP (``Anatomy.chain``: the kernels of a chain of matmuls fed by the batch) computed in
bfloat16 on XLA:CPU reads rounded copies of its kernels, whose layout depends on the remat
policy and the microbatches (``jaxmem.backends``: ``float32_chain_copies``,
``dots_chain_rereads``, ``widens_rounded_chain_at_entry``). These functions size them per
device; :func:`jaxmem.estimate.estimate` places them in its moments.
"""

from __future__ import annotations

import numpy as np

from jaxmem.block_memory import saveable
from jaxmem.models.anatomy import Anatomy
from jaxmem.remat import RematPolicy
from jaxmem.setup import Setup
from jaxmem.sizing import Sizer, local_shape, param_spec


def saves_dots(anatomy: Anatomy, policy: RematPolicy) -> bool:
    """Whether a checkpointing remat policy saves the blocks' matmul outputs (``dots``)."""
    keep = saveable(policy)
    return bool(policy.checkpoint) and any(
        keep(t) for b in anatomy.blocks for t in b.values if t.dot == "dot")


def local_bytes(path: str, anatomy: Anatomy, setup: Setup, size: Sizer,
                dtype: np.dtype) -> int:
    """Bytes per device of parameter ``path`` in ``dtype``."""
    shape = dict(anatomy.params)[path]
    return size.nbytes(local_shape(shape, param_spec(path, shape, setup, size.mesh),
                                   size.mesh), dtype)


def reread_kernels(anatomy: Anatomy, setup: Setup, size: Sizer, dtype: np.dtype) -> int:
    """Bytes per device, in ``dtype``, of the chain's kernels whose checkpointed block has an
    input that needs a gradient (every block but the first): its backward reads the kernel
    (the block's argument, in the compute dtype) to make that gradient."""
    every = setup.config.remat.every
    return sum(local_bytes(path, anatomy, setup, size, dtype)
               for i, path in enumerate(anatomy.chain[:len(anatomy.blocks)])
               if i and not i % every)


def widening_at_entry(anatomy: Anatomy, setup: Setup, size: Sizer, stored: np.dtype,
                      compute: np.dtype) -> int:
    """The most the step's entry holds of the blocks' kernels: XLA:CPU rounds each to
    ``stored`` (16 bits) in a buffer of its own, all first, then widens them to ``compute``
    (float32) one by one in forward order, each 16-bit copy freed once widened; the head's
    rounded copy is made in ``compute`` at once."""
    wide = local_bytes(anatomy.chain[-1], anatomy, setup, size, compute)
    narrow = [local_bytes(k, anatomy, setup, size, stored)
              for k in anatomy.chain[:len(anatomy.blocks)]]
    widest = 0
    for k, n in enumerate(narrow):
        widened = n * compute.itemsize // stored.itemsize
        widest = max(widest, sum(narrow[k:]) + wide + widened)
        wide += widened
    return widest
