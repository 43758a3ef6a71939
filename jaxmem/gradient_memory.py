"""Which gradients are alive together while the activations are still kept: where the
backward starts and in a block's backward (:func:`live_gradients`), for :mod:`jaxmem.estimate`.

A scanned stack's gradients accumulate through its backward loop; with microbatches the
accumulator is alive throughout; otherwise each update is applied as its gradient is made, so
the largest gradient (or none, where the backend fuses the updates into the gradients'
matmuls) is what the step holds, with the backend's measured exceptions (``Backend`` flags).
"""

from __future__ import annotations

from jaxmem.backends import Backend
from jaxmem.config import Config
from jaxmem.param_memory import Params


def live_gradients(c: Config, backend: Backend, p: Params, fused_updates: bool,
                   float32_layers: bool, outer: bool = False,
                   zero_split: bool = False,
                   float32_chain: bool = False,
                   batch_split: bool = False,
                   stack_16: int = 0,
                   tensor_split: bool = False) -> dict[str, tuple[int, str]]:
    """Gradients alive while activations are still kept, ``(bytes, why)`` where the backward
    starts (``loss``) and in a block's backward (``block``), and, where the LM head's matmul
    makes the tied table's gradient once the loss's values are dead, there (``head``: float32
    scanned stacks under ``Backend.holds_outside_gradient``, and Python loops on one device
    under ``Backend.tied_head_gradient_after_loss``); ``outer``: the weight gradients
    are outer products (one row per device and microbatch) the backend fuses into what
    consumes them; ``zero_split``: the batch axes include ZeRO-split ones;
    ``float32_chain``: a 16-bit MLP chain compiled as in float32
    (``Backend.float32_chain_copies``): its backward reads the float32 rounded copies, so
    without microbatches each update is computed as its gradient is made (lion's reads copies
    of every trainable parameter), and with them its outer-product gradients are added as
    they are made whatever the optimizer (measured with lion: its largest is not kept);
    ``batch_split``: the batch axes split the batch over more than one device; ``stack_16``:
    a scanned stack's gradients in 16 bits, where they are so with microbatches
    (``Backend.scan_gradients_16bit_in_microbatches``), else 0; ``tensor_split``: the mesh
    has a tensor axis of more than one device."""
    trainable, largest, stacked = p.trainable, p.largest, p.stacked
    # a lookup table's gradient is a scatter-add, made in place into an accumulator
    dense = p.largest_dense if backend.scatters_lookup_gradients else largest
    in_place = backend.accumulates_in_place or (
        backend.accumulates_float32_in_place and float32_layers and not stacked)
    if c.data.microbatches > 1:
        if in_place:
            made = (stacked, "a scanned stack's gradients") if stacked else (
                dense, "the largest gradient" + (" but the lookup tables' (scatter-added "
                                                 "into the accumulator)" if dense < largest
                                                 else ""))
            if fused_updates and not stacked:
                made = (0, "nothing more (each is added in the matmul making it)")
            elif outer and (float32_chain
                            or c.optimizer.name not in backend.copies_largest_gradient):
                made = (0, "nothing more (each, an outer product, is added as it is made)")
            # a token table tied to the LM head, the batch split over devices: its lookup's
            # gradient (a scatter-add) is a buffer of its own, made at the microbatch's start
            # (Backend.scatters_lookup_gradients)
            tied = (p.tied_table if backend.scatters_lookup_gradients and float32_layers
                    and batch_split else 0)
            lookup = " and the tied token table's lookup gradient" if tied else ""
            return {"loss": (trainable + tied, "the microbatch accumulator" + lookup + " (this "
                             "microbatch's " + ("other " if tied else "") + "gradients are not "
                             "made yet)"),
                    "block": (trainable + made[0] + tied, f"the microbatch accumulator{lookup} "
                              f"and {made[1]}, added to it as they are made")}
        if stacked:
            both = (trainable + (stack_16 or stacked), "the microbatch accumulator and a "
                    "scanned stack's " + ("16-bit " if stack_16 else "") + "gradients")
            if backend.splits_scanned_lookup_gradient and float32_layers and batch_split:
                both = (both[0] + p.lookup_whole, both[1] + ", and the token table's lookup "
                        "gradient (a scatter-add of its own, its ZeRO shards joined)")
        else:
            both = (2 * trainable, "the microbatch accumulator and one microbatch's gradients "
                    "(every trainable parameter, twice)")
        return {"loss": both, "block": both}
    if stacked and backend.holds_outside_gradient:
        one = (stacked + p.largest_outside, "a scanned stack's gradients, accumulated through "
               "its backward loop, and the largest gradient outside it (the embedding table's)")
        if not float32_layers:  # the table's float32 gradient is made early, beside the loss
            if c.optimizer.name in backend.copies_scanned_16bit_state:
                # less the 16-bit stack gradients placed in the freed state buffers
                one = (one[0] + trainable - stacked // 2, one[1] + f"; {c.optimizer.name}'s "
                       "copy of its state (every trainable parameter's, made before the "
                       "backward loop)")
            return {"loss": one, "block": one}
        # float32 layers: the LM head's matmul makes the table's gradient from the logits'
        # gradient once the loss's own values are dead; where the loss gradient is
        # computed, only the stack's gradients are alive (and, for an optimizer that reads a
        # copy of the largest, that copy: made at the step's entry)
        # a tied table split over the tensor axis under a checkpointing policy: its lookup's
        # gradient (a scatter-add) is made at the step's start, alive at the loss gradient
        # (Backend.splits_tied_lookup_gradient_early)
        early = (p.tied_table if backend.splits_tied_lookup_gradient_early and tensor_split
                 and c.remat.policy != "none" else 0)
        if c.optimizer.name in backend.copies_scanned_float32_state and batch_split:
            # the copy of the largest parameter outside the stack, made at the step's entry,
            # is held through the backward loop too (Backend.copies_scanned_float32_state)
            held = p.largest_outside
            why = (f"; {c.optimizer.name}'s copy of the largest parameter outside the stack "
                   "(made at the step's entry, held to its update)")
            return {"loss": (stacked + held + early, "a scanned stack's gradients" + why),
                    "block": (one[0] + held, one[1] + why),
                    "head": (one[0] + held, one[1] + why)}
        if c.optimizer.name in backend.copies_largest_gradient:
            return {"loss": (stacked + p.largest_outside + early,
                             "a scanned stack's gradients and a "
                             f"copy of the largest parameter outside it ({c.optimizer.name}'s, "
                             "made at the step's entry)"), "block": one, "head": one}
        return {"loss": (stacked + early, "a scanned stack's gradients (their accumulators)"),
                "block": one, "head": one}
    elif float32_chain and c.optimizer.name in backend.copies_largest_gradient:
        one = (trainable, f"{c.optimizer.name}'s copies of every trainable parameter (the "
               "backward reads the float32 copies; each update is computed as its gradient "
               "is made)")
    elif float32_chain:
        one = (0, "none materialised (the backward reads the float32 copies; each update is "
               "computed as its gradient is made)")
    elif stacked:
        one = (stacked, "a scanned stack's gradients, accumulated through its backward loop")
        if backend.stack_gradients_in_loop and not zero_split:
            return {"loss": (0, "none yet (the stack's are made by its backward loop)"),
                    "block": one}
    elif fused_updates:
        one = (0, "none materialised (each update is computed in the matmul making its "
               "gradient)")
    elif outer and c.optimizer.name in backend.copies_largest_gradient:
        one = (largest, f"the largest gradient ({c.optimizer.name}'s update reads it twice; "
               "the other gradients, outer products, are computed inside their updates)")
    elif outer:
        one = (p.largest_read_back, "the largest parameter's old value that the backward "
               "still reads after its update (the gradients, outer products, are computed "
               "inside the updates)")
    else:
        copied = c.optimizer.name in backend.copies_largest_gradient
        one = ((2 * largest, "the largest gradient and its copy (each is applied to its "
                f"parameter as it is made; {c.optimizer.name}'s update reads a copy)") if copied
               else (largest, "the largest gradient (each is applied to its parameter as it "
                     "is made)"))
        if (backend.tied_head_gradient_after_loss and float32_layers and not batch_split
                and not tensor_split and p.tied_table and p.tied_table == largest):
            # the copy an optimizer reads is made at the step's entry, the gradient after
            # ... except in the logits' slot where they are its size: as many rows as the
            # table's width (Backend.shares_tied_copy_with_logits)
            rows = c.data.batch_size // c.data.microbatches * getattr(c.model, "seq_len", 0)
            copied = copied and not (backend.shares_tied_copy_with_logits
                                     and rows == getattr(c.model, "d_model", 0))
            return {"loss": (largest if copied else 0, (f"{c.optimizer.name}'s copy of the "
                             "tied table, made at the step's entry; " if copied else "") +
                             "no gradient yet (the tied table's is made by the LM head's "
                             "matmul once the loss's values are dead)"),
                    "block": one, "head": one}
    return {"loss": one, "block": one}
