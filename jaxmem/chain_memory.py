"""What XLA:CPU holds for an MLP chain's kernels under 16-bit compute and remat.

An MLP (``Anatomy.chain``: the kernels of a chain of matmuls fed by the batch) computed in
bfloat16 on XLA:CPU reads rounded copies of its kernels, whose layout depends on the remat
policy and the microbatches (``jaxmem.backends``: ``float32_chain_copies``,
``dots_chain_rereads``, ``widens_rounded_chain_at_entry``). These functions size them per
device; :func:`jaxmem.estimate.estimate` places them in its moments.
"""

from __future__ import annotations

import collections
import math

import numpy as np

from jaxmem.backends import Backend
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
                      compute: np.dtype, into_state: bool = False) -> int:
    """The most the step's entry holds of the blocks' kernels: XLA:CPU rounds each to
    ``stored`` (16 bits) in a buffer of its own, all first, then widens them to ``compute``
    (float32) one by one in forward order, each 16-bit copy freed once widened; the head's
    rounded copy is made in ``compute`` at once. ``into_state``: the widened kernels go into
    donated optimizer-state buffers copied out at the entry (``Backend.widens_into_state``),
    so only the 16-bit copies and the head's are counted here."""
    wide = local_bytes(anatomy.chain[-1], anatomy, setup, size, compute)
    narrow = [local_bytes(k, anatomy, setup, size, stored)
              for k in anatomy.chain[:len(anatomy.blocks)]]
    widest = 0
    for k, n in enumerate(narrow):
        widened = n * compute.itemsize // stored.itemsize
        if into_state:  # placed in the donated state buffer of the kernel's copied-out leaf
            widened = 0
        widest = max(widest, sum(narrow[k:]) + wide + widened)
        wide += widened
    return widest


def _tree_order(path: str) -> tuple:
    """A parameter path's place in the flattened pytree (keys sorted, indices as numbers)."""
    return tuple((0, int(k), "") if k.isdigit() else (1, 0, k) for k in path.split("/"))


def state_copies_held(anatomy: Anatomy, setup: Setup, size: Sizer, outer: bool,
                      rounded: bool = False, state: bool = True) -> int:
    """The most bytes per device that an optimizer reading its old state after writing the
    new one in place (lion: its single moment) holds, outside the donated arguments, of the
    copies XLA:CPU makes at the step's entry and of the gradients
    (``Backend.copies_state_at_entry``).

    At the entry XLA copies, in pytree order, every parameter a value other than its own
    update reads (all but the chain's first kernel and the blocks' biases, which the
    backward reads before their updates; all but the first kernel with ``outer``-product
    gradients fused into the updates; none where the layers read ``rounded`` float32 copies
    of the parameters, counted apart (``Backend.float32_chain_copies``): the updates read
    the arguments themselves), then every state leaf. The backward then updates the
    layers from the head down; a gradient (not ``outer``) is made just before its update.
    Buffer assignment places the copies and gradients, largest first, each into the smallest
    donated argument buffer (a parameter or state leaf) that is dead for its whole life (an
    argument copied out, until its update writes it), never the one it copies; the rest are
    temporaries, alive together at the backward's start. Without ``state`` (plain sgd,
    ``Backend.copies_parameters_at_entry``) only the parameters are copied and each
    gradient lives until its parameter's update."""
    params = sorted(((p, local_bytes(p, anatomy, setup, size, size.param))
                     for p, _ in anatomy.params), key=lambda x: _tree_order(x[0]))
    first, head = anatomy.chain[0], anatomy.chain[-1].rpartition("/")[0]
    copied = [p for p, _ in params if not rounded and p != first and (
        outer or p in anatomy.chain or p.startswith(head + "/"))]
    made = {("P", p): t for t, p in enumerate(copied, 1)}  # copies: P parameter, M state
    if state:
        made |= {("M", p): t for t, (p, _) in enumerate(params, len(copied) + 1)}
    kinds = ("P", "M") if state else ("P",)
    grad, new = {}, {}  # when a gradient is made; when a leaf's new value is written
    for i, kernel in enumerate(reversed(anatomy.chain)):
        layer, t = kernel.rpartition("/")[0], 1000 + 10 * i
        for j, p in enumerate((f"{layer}/bias", kernel)):
            grad[p] = t - 1 + j  # the bias's gradient, then the kernel's, then the updates
            # with outer products the new state is written first, else the new parameter
            new[("M" if outer else "P", p)] = t + 1 + 2 * j
            new[("P" if outer else "M", p)] = t + 2 + 2 * j
            if not state:  # the gradient lives until its parameter's update
                new[("M", p)] = new[("P", p)]
    end = 10 ** 9
    held = {}  # donated argument -> (its bytes, the (start, end, leaf updated) it holds)
    for kind in kinds:
        for p, n in params:  # an uncopied parameter is read until its update
            last = made.get((kind, p), new[(kind, p)] if kind == "P" else 0)
            held[(kind, p)] = (n, [(0, last, None), (new[(kind, p)], end, p)])
    values = [(n, made[(k, p)], max(new[("P", p)], new[("M", p)]) if k == "M" else
               new[("P", p)], (k, p)) for p, n in params for k in kinds if (k, p) in made]
    if not outer:  # a gradient lives until its leaf's new state is written
        values += [(n, grad[p], new[("M", p)], ("G", p)) for p, n in params if p in grad]
    values.sort(key=lambda v: (-v[0], v[1]))
    # tried smallest first; of equal sizes the last made (state leaves, later layers)
    order = sorted(reversed(list(held)), key=lambda b: held[b][0])
    temps = []
    for n, start, stop, what in values:
        for b in order:
            cap, there = held[b]
            # a value may end where its own leaf's update writes the buffer
            if cap >= n and b != what and all(
                    stop < s or e < start or (stop == s and leaf == what[1])
                    for s, e, leaf in there):
                there.append((start, stop, None))
                break
        else:
            temps.append((start, stop, n))
    return max((sum(n for s, e, n in temps if s <= t <= e) for t, _, _ in temps), default=0)


def same_size_state_slots(anatomy: Anatomy, setup: Setup, size: Sizer) -> int:
    """Bytes per device of the microbatch accumulators XLA:CPU places into donated state
    buffers that lion's copies at the entry freed (``Backend.copies_state_with_microbatches``):
    on one device, of the parameters of one byte size, all but one accumulator goes into
    another's state buffer (its update comes first); none under a split over devices."""
    if math.prod(size.mesh.shape.values()) > 1:
        return 0
    sizes = collections.Counter(local_bytes(p, anatomy, setup, size, size.param)
                                for p, _ in anatomy.params)
    return sum((k - 1) * n for n, k in sizes.items())


def gradients_in_state(anatomy: Anatomy, setup: Setup, backend: Backend,
                       optimizer: str) -> bool:
    """Whether, where an optimizer's state copies are made at the entry of a 16-bit chain's
    step (``Backend.widens_into_state``), its state copies live through the backward and its
    gradients go into donated argument buffers, no temporaries of their own
    (``Backend.places_chain_gradients_in_state``): not a one-block chain under a policy
    saving its matmul output, whose gradients are made early, beside the copies."""
    return (optimizer in backend.places_chain_gradients_in_state
            and (len(anatomy.blocks) > 1 or not saves_dots(anatomy, setup.remat)))
