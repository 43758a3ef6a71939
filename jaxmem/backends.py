"""What a compiler does that changes a step's bytes: the estimate's backend profiles.

Each flag is a rule of one XLA backend, measured on it (``benchmarks/RESULTS.md``); the
estimate (:mod:`jaxmem.estimate`) reads the profile of the target's platform from
:data:`BACKENDS`. A platform without a profile gets :class:`Backend`'s defaults: no fusion
rule, the larger figure.

Example:
  >>> from jaxmem.backends import BACKENDS
  >>> BACKENDS["tpu"].tiles, BACKENDS["cpu"].tiles
  (True, False)
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Backend:
    """What a compiler does that changes the bytes (measured on each, see RESULTS.md).

    Each flag below states its rule: what the compiler does, and when; a rule is XLA:CPU's
    unless it names another backend. The measurements behind each (configurations, the
    estimate's error before -> after, dev rows) are in ``docs/backend-rules.md``, one section a
    flag, in this order.

    Attributes:
      float32_compute: computes 16-bit floats in float32: activations take float32 bytes; a value
        the program casts back to 16 bits keeps them (``ROUNDED``: the logits' gradient).
      loop_remat: honours remat of blocks applied by a Python loop; XLA:CPU schedules their
        recomputation early, so they keep what they would keep without remat.
      tiles: pads arrays to (sublanes, 128 lanes) tiles over their two minor dimensions (TPU).
      shares_loop_backward: computes part of a Python-loop block's backward in its forward and keeps
        it (``Block.shared``), with or without remat; float32 layers only, a one-layer scan too.
      fuses_loss_gradient: computes the loss gradient in one fusion: only its output is materialised
        (XLA:TPU; XLA:CPU keeps the float32 softmax too; XLA:GPU unfused until measured).
      fuses_matmul_operands: computes an elementwise-made matmul operand inside the matmul's fusion:
        not kept if its inputs are, nothing materialised (``Tensor.matmul_operand``; XLA:TPU).
      fuses_softmax_recompute: recomputes a softmax from its kept scores inside the backward fusions
        reading it: no buffer in float32, a float32 ``scores - max`` in 16-bit (XLA:TPU).
      fuses_gradient_update: computes the update in the fusion making the gradient: none
        materialised without a scan or microbatches (XLA:TPU; not loss scaling or offloaded state).
      narrows_matmul_operands: computes float32 matmuls from bfloat16 operands: a kept float32 value
        only matmuls read is kept in bfloat16 (``Tensor.matmul_only``, ``matmul_operand``; XLA:TPU).
      accumulates_in_place: adds each microbatch gradient to the accumulator as made (fused where
        updates are): no microbatch's gradients whole beside it (XLA:TPU; XLA:CPU in float32 only).
      frees_outside_first: frees the values kept outside the blocks (logits, final norm's) before
        the blocks' backward (XLA:TPU; XLA:CPU keeps them; XLA:GPU keeps them until measured).
      combines_all_reduces: all-reduces replicated parameters' gradients over the batch axes in a
        few combined all-reduces after the backward: every gradient and its output alive at once.
      frees_saved_in_backward: frees a block's saved values after its backward: a block's backward
        holds those of the blocks up to it only (XLA:TPU; CPU: ``frees_saved_under_16bit``).
      recomputes_by_stage: recomputes each block stage (``Tensor.stage``) just before its backward,
        one at a time (XLA:TPU; CPU recomputes a scanned block whole).
      scan_remat_stages: a scanned GPT's backward loop under a checkpointing policy (not
        ``except:*``, no tensor split) frees the outside values first, then holds a stage's
        recomputation (the MLP's: all but score-sized values), gradients, the float32 mask.
      scan_float32_score_gradient_from: under float32 layers, from this many score matrices a
        device (batch x heads), an attention stage recomputing its scores holds no score
        gradient of its own (0: off).
      holds_outside_gradient: holds the largest gradient outside a scanned stack (the embedding
        table's) through the stack's backward loop (not XLA:TPU).
      splits_tied_lookup_gradient_early: a float32 scanned stack, its tied token table split over
        ``tensor``, under a checkpointing policy: the lookup's gradient (a scatter-add) is made at
        the step's start, beside the loss gradient (no tied table there without the tensor axis).
      slices_sharded_convs: computes a conv of the images whose output channels are ZeRO-split ``n``
        ways as ``n`` lane-padded slices, :data:`CONV_SLICES` held in its backward (XLA:TPU).
      regathers_loop_weights: FSDP, a Python-loop stack with no microbatch loop: the weights are
        gathered again for the backward, none kept from the forward (XLA:TPU; not an MLP chain).
      keeps_scanned_float32_operands: float32 layers, a scanned stack: an elementwise-made matmul
        operand the policy saves is kept (narrowed), not recomputed in the matmul (XLA:TPU).
      narrows_scanned_loss_gradient: float32 layers, a scanned stack, the vocabulary not split
        over the tensor axis: the fused loss gradient is made in bfloat16 beside the logits (TPU).
      narrows_scanned_float32_weights: float32 layers, a scanned stack: its weights are converted
        to bfloat16 whole before its loops, held through the step (XLA:TPU: ``parameter copies``).
      widens_microbatch_gradients: 16-bit compute with microbatches: holds a float32 copy of a
        microbatch's gradients beside the accumulator and the gradients through the step.
      gradient_over_undone_remat: undone loop remat, float32: an activation gradient is written
        ``in_place_of`` a recomputed value over its early copy, no buffer of its own (not ``dots``).
      frees_saved_under_16bit: ``frees_saved_in_backward`` under 16-bit compute only, not where an
        undone remat recomputes a matmul or convolution.
      keeps_rounded_under_16bit: 16-bit compute, no undone remat recomputing a matmul or conv: keeps
        a ``kept_rounded`` value (a ReLU input) in 16 bits; the 16-bit ReLU gradient is written over
        it, beside its float32 copy (``Tensor.widened_over``).
      copies_microbatch_split: with microbatches, materialises the batch's microbatch-major split
        (``grads.split_microbatches``) and holds it through the loop beside the batch (not XLA:TPU).
      frees_saved_in_microbatch_remat: microbatches, float32, undone ``full``: frees a block's saved
        values after its backward, which holds the incoming gradient and batch slice (not ``dots``).
      copies_largest_gradient: optimizers whose update, applied as each gradient is made (no scan or
        microbatches), copies the largest gradient (MLP chains: ``copies_state_at_entry``).
      copies_chain_kernels_at_entry: optimizers updating an MLP chain in place (float32, no
        microbatches or ZeRO): all trainable parameters but the first kernel copied at the entry.
      copies_state_at_entry: optimizers reading the old state while writing the new (one device,
        float32 MLP chain, no microbatches or scan): state leaves and re-read parameters copied at
        the entry, into dead donated buffers (``chain_memory.state_copies_held``).
      copies_zero_state_at_entry: ``copies_state_at_entry`` under FSDP too (ZeRO-split shards); the
        forward's gathered whole kernels beside the copies; at the whole gradients' all-reduce only
        the first kernel's state copy is left.
      gathers_batch_for_output_split_kernels: FSDP, a float32 chain's first kernel split on its
        output dimension: the batch's rows are gathered whole instead, live to its gradient
        (twice in the forward under remat with lion's copies): ``gathered_batch_moments``.
      gathers_input_split_first_kernel: FSDP, no microbatches, a ``float32_chain_copies`` chain's
        first kernel split on its input dimension: gathered whole (float32 rounded) in the
        forward beside every rounded copy: ``param_memory.gathered_kernel_moment``.
      copies_state_with_microbatches: optimizers whose state is copied whole at the entry with
        microbatches (float32 MLP chain), beside the accumulators (one device: same-size slots).
      copies_parameters_at_entry: stateless optimizers (sgd) updating a float32 MLP chain in place
        (one device, no microbatches or scan): re-read parameters copied at the entry, placed alike.
      all_reduces_zero_gradients: reduces ZeRO-split gradients as whole all-reduces: a scanned
        layer's in its backward loop; outside a scan a batch-split chain's kernels', else all.
      updates_stack_first: with ``combines_all_reduces``, updates a scanned stack from its reduced
        loop gradients before the all-reduce of the others (not with a tied table, float32 lion).
      gathers_lm_head: all-gathers a ZeRO-split LM head (kernel or tied table) whole for the head's
        matmul, whatever its rows, and keeps it for the backward.
      fuses_outer_product_gradients: one row per device and microbatch, float32, no ZeRO: computes
        each weight gradient (an outer product) inside the update or accumulator consuming it.
      keeps_one_example_batched_dots: one example per device and microbatch: keeps a batched
        matmul's output (the scores) for the backward beside its softmax, in a buffer of its own.
      loop_batched_dot_rows: in a Python-loop stack, ``keeps_one_example_batched_dots`` only below
        this many rows (heads x queries on a device); 0: no limit, as in a scanned stack.
      keeps_one_head_batched_dots: in a loop stack, ``keeps_one_example_batched_dots`` at one head
        per device too, below ``loop_batched_dot_rows`` or under an undone ``except:*``.
      except_keeps_batched_dots: in a loop stack, ``keeps_one_example_batched_dots`` at any rows
        and heads where an ``except:*`` policy was undone (one example per device).
      holds_softmax_forward: one example per device, a float32 Python-loop stack: the last
        block's softmax forward is a moment: every earlier block's saved values, its own up to
        the scores, two scores-sized workspaces under an undone ``except:*`` policy (else one).
      scan_residuals_by_policy: a scanned stack under a checkpointing policy keeps only what the
        policy saves: no ``keeps_one_example_batched_dots`` scores beside their softmax.
      except_shares_stream: ``shares_loop_backward`` under an undone ``except:*`` policy (over one
        block, no tensor axis): the forward keeps two stream-wide norm values, not the GELU factors.
      shares_loop_norm_values: where ``shares_loop_backward`` keeps GELU factors: the GELU's tanh
        and the two norms' normalised values, not its square (not under tensor parallelism or FSDP).
      keeps_reduced_matmul_outputs: without remat (or undone), keeps a row-parallel matmul's
        all-reduced output beside the residual stream made from it (tensor parallelism).
      accumulates_float32_in_place: ``accumulates_in_place`` in float32 outside a scan; a
        ``copies_largest_gradient`` optimizer keeps its largest gradient beside the accumulator.
      one_pass_frozen_head_loss: frozen LM head, unfused loss gradient: computes it in one pass over
        the logits, no exponentials' buffer, no second layout (not yet XLA:GPU).
      stack_gradients_in_loop: makes a scanned stack's gradient buffers as its backward loop starts,
        none alive at the loss gradient (XLA:TPU; not under ZeRO; CPU: ``holds_outside_gradient``).
      loop_whole_gradients: microbatches under FSDP: a loop transformer's whole gradients are held
        through a microbatch's backward, for the combined reduction.
      loop_whole_conv_gradients: ``loop_whole_gradients`` for a Python-loop CNN of two or more
        convolutions too: a later one's whole gradient waits through an earlier one's backward.
      slices_scanned_layer: a scanned stack's backward loop copies its layer's float32 parameters
        out of the stacked ones, held through the layer's backward (16-bit: slices its 16-bit copy).
      holds_scanned_layer_gradients: 16-bit compute, a scanned stack, no microbatches or ZeRO: the
        backward loop's body makes its layer's float32 weight gradients in buffers of their own
        before writing them into the stacked ones; reduced over the batch (data parallelism), their
        all-reduce's output beside them too (not with ``copies_scanned_16bit_state``).
      holds_zero_tensor_scanned_layer: its FSDP x tensor form, no microbatches, remat none or
        except:*: the body's layer float32 weights gathered over ZeRO and their gradients before
        the reduce-scatter, one float32 layer joined over the ZeRO axes.
      float32_loop_copies: 16-bit compute: a loop transformer's matmuls read float32 rounded
        parameter copies, kept for the backward (not scan, MLP chain, conv, microbatches or ZeRO).
      float32_chain_copies: 16-bit compute, no remat: an MLP chain compiles as in float32 (float32
        rounded copies; each gradient applied or accumulated as it is made).
      chain_head_gradient_first: ZeRO, no microbatches: a ``float32_chain_copies`` chain makes the
        head's kernel gradient first, beside every kernel copy but the first's (not lion).
      dots_chain_rereads: 16-bit compute, microbatches, ``dots``/``dots_no_batch``: an MLP chain as
        ``float32_chain_copies``, plus checkpointed 16-bit kernels (but the first) widened again.
      widens_rounded_chain_at_entry: 16-bit compute, remat, no microbatches: rounds all MLP chain
        kernels to 16 bits, then widens them to float32 one by one; the entry holds both kinds.
      widens_into_state: optimizers also copying their state under ``widens_rounded_chain_at_entry``
        (lion), one device: the widened kernels go into the state buffers the copies freed.
      places_chain_gradients_in_state: optimizers under ``widens_into_state``: their state copies
        live through the backward, whose gradients go into donated argument buffers (no
        temporaries of their own: not the largest gradient and its copy). Not a one-block
        chain under a policy saving its matmul output (gradients made early, beside the copies).
      rereads_state_copies_with_microbatches: the same optimizers, one device, a 16-bit MLP chain
        under ``full`` with microbatches: accumulators in the donated state buffers.
      scatters_lookup_gradients: adds a lookup-only table's gradient into the accumulator in place;
        a tied table's, the batch split over devices, is a buffer of its own through the backward.
      regathers_frozen_tied_head: FSDP x tensor: a loop GPT's frozen tied table is gathered whole
        twice at the head's forward matmul (the backward's gather early), not a trainable one.
      regathers_trainable_tied_head: that for a trainable table too (16-bit compute), at the
        step's start: two whole tables, its shard transposed, its lookup gradient's buffer.
      regathers_remat_weights: FSDP (no tensor axis), no microbatches, a loop transformer under a
        checkpointing policy: weights re-gathered early, whole twice at the forward's end.
      regathers_split_remat_weights: ``regathers_remat_weights`` under FSDP x tensor too: the
        gathered weights a matmul reads (tensor-split still) whole twice at the forward's end.
      regathers_recomputed_remat_kernels: there under FSDP x tensor, the MLP up kernels an
        undone policy recomputes are gathered a third time, early too.
      regathers_microbatch_weights: microbatches, FSDP (no tensor axis): a loop transformer
        re-gathers its weights early in the loop body: all of them under 16-bit compute; in float32
        the blocks' where a matmul is recomputed.
      regathers_split_microbatch_weights: the same under FSDP x tensor, float32 layers, any
        checkpointing policy (undone or not; not ``none``): every gathered weight a matmul reads
        (the LM head too, not lookup-only tables) whole twice in the loop body from the
        backward's start (the forward's all-gather and the backward's, made early).
      copies_scanned_operands: a scanned stack's backward loop copies the layer's saved matmul
        operands (``block_memory.operand_slices``) out of the stacked residuals (under a policy).
      copies_scanned_operands_without_remat: ``copies_scanned_operands`` without remat too, no
        tensor axis: no ``keeps_one_example_batched_dots`` scores, the softmax's slice instead.
      remat_past_reduction_rows: tensor parallelism, float32 loop blocks: an undone remat merges
        with the forward up to the first all-reduce it would redo; if a row-parallel matmul's
        reduced output is not saved, later stages are recomputed below this many rows.
      split_loop_stream_rows: tensor parallelism (no fsdp axis), a Python-loop transformer under
        remat none (or undone, not ``except:*``): from this many rows a device, each block keeps
        two more float32 residual-stream-wide values (0: never).
      loop_stream_rows: the same without a tensor axis (dp or one device, no fsdp): from this
        many rows a device, each block keeps three more float32 residual-stream-wide values.
      copies_scanned_16bit_state: optimizers (lion) whose state is copied whole before a 16-bit
        scanned stack's backward loop, no microbatches; its 16-bit gradients reuse the freed slots.
      copies_scanned_float32_state: float32 scanned stack, batch split over devices, no
        microbatches: the copy of the largest parameter outside it is held through the loop.
      copies_gathered_head_in_microbatch: microbatches, FSDP, 16-bit compute, a scan: the loop body
        rounds the gathered LM head into a float32 buffer of its own, through the loss gradient.
      reduces_gathered_head_gradient: there, a tied head's whole float32 gradient and its
        all-reduce's output live beside both at the body's end, after the blocks' backward.
      reduces_tied_gradients_apart: a tied token table's two gradients (head matmul, lookup) are
        all-reduced over the batch as two entries, then added: its shard held four times there.
      scatters_sharded_lookup_gradients: a lookup-only table split over ``tensor`` has its gradient
        scattered into its shard: under FSDP not among ``all_reduces_zero_gradients``' whole ones.
      scatters_zero_lookup_gradients: a lookup-only (untied) table ZeRO-split on its rows has its
        gradient scattered into the device's shard too: no whole gradient (an encoder's 32000 x 256
        table under fsdp=8 holds one (4000, 256) gradient buffer, scan or loop, with microbatches).
      looks_up_split_tables_unrounded: 16-bit compute: a tensor-split table's lookup reads the
        float32 parameter, no rounded copy (``float32_loop_copies`` leaves it out).
      looks_up_tensor_split_zero_tables: FSDP x tensor: a lookup-only table whose rows are
        tensor-split, its columns ZeRO-split, is looked up from its shard (the ids all-gathered):
        no whole table, no rounded copy (``looks_up_split_tables_unrounded`` extended to it).
      dense_depthwise_gradient: computes a depthwise kernel's gradient as a dense ``k x k x C x C``
        float32 conv, then a masked copy: ``2 x k*k*C*C`` floats held (``Blocks.dense_kernel``).
      masks_depthwise_late_under_16bit: 16-bit compute: a depthwise gradient's mask comes after the
        previous block's backward starts, which holds a ``k x k x C x C`` float32 more.
      recomputed_scores_rows: microbatches, float32 loop transformers with a causal mask, an undone
        policy saving no scores or softmax (not ``full``): the loop body recomputes scores, masked
        scores and softmax apart; from this many rows a device and microbatch, MLP values too.
      splits_scanned_lookup_gradient: microbatches, a scan, float32, batch split over devices: the
        table's lookup gradient is a buffer of its own (whole under FSDP; ``Params.lookup_whole``).
      scan_gradients_16bit_in_microbatches: 16-bit compute, microbatches: a scanned stack's loop
        gradients are 16-bit, widened only as added to the accumulator (not without microbatches).
      rounds_scanned_float32_in_microbatches: a scanned tied GPT (> 1 layer), 16-bit compute,
        microbatches: float32 rounded copies before the loop; only outside gradients float32 (not
        parameters stored in 16 bits; under FSDP only with the table gathered).
      keeps_one_layer_scan_mlp: MLP-wide values a one-layer scan keeps from its forward through
        its backward, with microbatches under ``full`` / ``save:*`` (float32, 4096+ rows): 5.
      rounds_gathered_tied_table: that rounding under FSDP, the tied table gathered for its lookup
        too: four whole float32 copies beside the gathered table through the microbatch loop.
      tied_gather_ratio: FSDP gathers a tied token table whole (``tied_whole``) only up to this
        many times the rows a device and microbatch (its vocabulary at most): 8 (0: GATHER_RATIO).
      recomputed_scores_under_16bit: that recomputation under 16-bit compute: one float32 scores
        buffer (not two) and two float32 MLP-wide values, held from the body's start on.
      recomputed_norms_under_16bit: with it, every loop block's normalised values (its layer
        norms' outputs) recomputed beside the forward's: float32, held there too.
      regathers_conv_kernels: FSDP: a loop CNN re-gathers each conv kernel for its input gradient at
        the step's start: whole twice in float32 in the first forward, the largest thrice.
      regathers_recomputed_conv_kernels: with ``regathers_conv_kernels``, an undone remat that
        recomputes the convolutions (``full``) gathers those kernels once more, early: thrice.
      copies_recomputed_largest_kernel: with that third gather, a float32 CNN's first forward
        holds the largest kernel's transposed copy beside the broadcast constants too: 4 whole.
      tied_head_gradient_after_loss: float32 loop model, one device, a tied table its largest
        parameter: its gradient is made once the loss's other values are dead, a moment of its own
        (``copies_largest_gradient`` optimizers: their copy of the table, made at the entry, held).
      shares_tied_copy_with_logits: there, the optimizer's copy of the table is not held at the
        loss where the logits are its size (as many rows a device as the table's width).
      holds_loop_block_gradients: optimizers whose updates (float32, one device, no microbatches)
        wait during a loop transformer block's backward: its two MLP kernel gradients held.
      forward_broadcasts_in_float32: FSDP, a float32 loop CNN: its first forward holds the conv
        output thrice, broadcast constants, the batch twice, gathered kernels (remat full: less).
      pads_pooling_gradient: 16-bit compute, undone ``full``: a conv block's pooling backward pads
        the gradient to float32 ``B x (S+1)^2 x C`` (``Block.pool_workspace``).
      places_16bit_relu_gradient_above: with ``pads_pooling_gradient``, no microbatches, two
        conv blocks or more: the heap places the 16-bit ReLU gradient above the pooling
        backward's buffers.
      pools_before_kernel_gradient: under ``keeps_rounded_under_16bit``, a conv block's widest
        backward moment (pooling's or ReLU's) precedes its kernel gradient; one device, no
        microbatches: float32 kernel copies made at the start, the first forward a moment too.
      lone_conv_block_microbatch_gradients: ``pools_before_kernel_gradient`` with one conv block,
        one device, microbatches: its backward holds the accumulators and one float32 gradient set.
      rounds_tensor_split_operands: 16-bit compute with a tensor axis: a block keeps its MLP
        matmuls' operands (the second norm's output, the MLP activation) rounded to 16 bits.
      reduces_tied_zero_gradients_apart: under FSDP, a tied table gathered whole (float32, or
        16-bit without microbatches): its two whole gradients are two all-reduce entries.
      copies_zero_parameters_at_entry: optimizers (lion) copying every parameter's ZeRO shard at
        the entry under FSDP, a Python-loop transformer, 16-bit compute: held to the update.
      reduces_gradients_before_update: a float32 MLP chain over data-parallel devices (no ZeRO)
        all-reduces each kernel's gradient before its update: no update fused (XLA:TPU).
      recomputes_16bit_whole: 16-bit compute: a value recomputed ``recomputed_as`` (a conv
        block's ReLU input, remat full) is made whole, its gradient written over it (XLA:TPU).

    A Python-loop block's stages freeing their saved values once their backward is done is
    not a flag: every backend frees a value after its last use, and a loop block's values are
    buffers of their own (a scanned stack's are slices of one stacked buffer per value).
    """

    float32_compute: bool = False
    loop_remat: bool = True
    tiles: bool = False
    shares_loop_backward: bool = False
    fuses_loss_gradient: bool = False
    fuses_matmul_operands: bool = False
    fuses_softmax_recompute: bool = False
    fuses_gradient_update: bool = False
    narrows_matmul_operands: bool = False
    accumulates_in_place: bool = False
    frees_outside_first: bool = False
    combines_all_reduces: bool = False
    frees_saved_in_backward: bool = False
    recomputes_by_stage: bool = False
    scan_remat_stages: bool = False
    scan_float32_score_gradient_from: int = 0
    holds_outside_gradient: bool = False
    splits_tied_lookup_gradient_early: bool = False
    slices_sharded_convs: bool = False
    regathers_loop_weights: bool = False
    keeps_scanned_float32_operands: bool = False
    narrows_scanned_loss_gradient: bool = False
    narrows_scanned_float32_weights: bool = False
    widens_microbatch_gradients: bool = False
    gradient_over_undone_remat: bool = False
    frees_saved_under_16bit: bool = False
    keeps_rounded_under_16bit: bool = False
    pools_before_kernel_gradient: bool = False
    lone_conv_block_microbatch_gradients: bool = False
    copies_microbatch_split: bool = False
    frees_saved_in_microbatch_remat: bool = False
    copies_largest_gradient: tuple[str, ...] = ()
    tied_head_gradient_after_loss: bool = False
    shares_tied_copy_with_logits: bool = False
    copies_chain_kernels_at_entry: tuple[str, ...] = ()
    copies_state_at_entry: tuple[str, ...] = ()
    copies_zero_state_at_entry: tuple[str, ...] = ()
    gathers_batch_for_output_split_kernels: bool = False
    gathers_input_split_first_kernel: bool = False
    copies_state_with_microbatches: tuple[str, ...] = ()
    copies_parameters_at_entry: tuple[str, ...] = ()
    all_reduces_zero_gradients: bool = False
    updates_stack_first: bool = False
    gathers_lm_head: bool = False
    fuses_outer_product_gradients: bool = False
    keeps_one_example_batched_dots: bool = False
    loop_batched_dot_rows: int = 0
    keeps_one_head_batched_dots: bool = False
    except_keeps_batched_dots: bool = False
    holds_softmax_forward: bool = False
    scan_residuals_by_policy: bool = False
    except_shares_stream: bool = False
    keeps_reduced_matmul_outputs: bool = False
    accumulates_float32_in_place: bool = False
    one_pass_frozen_head_loss: bool = False
    float32_loop_copies: bool = False
    stack_gradients_in_loop: bool = False
    loop_whole_gradients: bool = False
    loop_whole_conv_gradients: bool = False
    slices_scanned_layer: bool = False
    holds_scanned_layer_gradients: bool = False
    holds_zero_tensor_scanned_layer: bool = False
    float32_chain_copies: bool = False
    chain_head_gradient_first: bool = False
    dots_chain_rereads: bool = False
    widens_rounded_chain_at_entry: bool = False
    widens_into_state: tuple[str, ...] = ()
    rereads_state_copies_with_microbatches: tuple[str, ...] = ()
    places_chain_gradients_in_state: tuple[str, ...] = ()
    scatters_lookup_gradients: bool = False
    regathers_microbatch_weights: bool = False
    regathers_split_microbatch_weights: bool = False
    regathers_frozen_tied_head: bool = False
    regathers_trainable_tied_head: bool = False
    regathers_remat_weights: bool = False
    regathers_split_remat_weights: bool = False
    regathers_recomputed_remat_kernels: bool = False
    copies_scanned_operands: bool = False
    copies_scanned_operands_without_remat: bool = False
    remat_past_reduction_rows: int = 0
    split_loop_stream_rows: int = 0
    loop_stream_rows: int = 0
    copies_scanned_16bit_state: tuple[str, ...] = ()
    copies_scanned_float32_state: tuple[str, ...] = ()
    copies_gathered_head_in_microbatch: bool = False
    reduces_gathered_head_gradient: bool = False
    reduces_tied_gradients_apart: bool = False
    scatters_sharded_lookup_gradients: bool = False
    looks_up_split_tables_unrounded: bool = False
    looks_up_tensor_split_zero_tables: bool = False
    dense_depthwise_gradient: bool = False
    masks_depthwise_late_under_16bit: bool = False
    recomputed_scores_rows: int = 0
    splits_scanned_lookup_gradient: bool = False
    scan_gradients_16bit_in_microbatches: bool = False
    rounds_scanned_float32_in_microbatches: bool = False
    rounds_gathered_tied_table: bool = False
    tied_gather_ratio: int = 0
    keeps_one_layer_scan_mlp: int = 0
    recomputed_scores_under_16bit: bool = False
    recomputed_norms_under_16bit: bool = False
    regathers_conv_kernels: bool = False
    regathers_recomputed_conv_kernels: bool = False
    copies_recomputed_largest_kernel: bool = False
    forward_broadcasts_in_float32: bool = False
    pads_pooling_gradient: bool = False
    places_16bit_relu_gradient_above: bool = False
    shares_loop_norm_values: bool = False
    holds_loop_block_gradients: tuple[str, ...] = ()
    rounds_tensor_split_operands: bool = False
    reduces_tied_zero_gradients_apart: bool = False
    copies_zero_parameters_at_entry: tuple[str, ...] = ()
    scatters_zero_lookup_gradients: bool = False
    reduces_gradients_before_update: bool = False
    recomputes_16bit_whole: bool = False


BACKENDS: dict[str, Backend] = {
    "cpu": Backend(float32_compute=True, loop_remat=False, shares_loop_backward=True,
                   scan_remat_stages=True, scan_float32_score_gradient_from=8,
                   combines_all_reduces=True, holds_outside_gradient=True,
                   widens_microbatch_gradients=True, gradient_over_undone_remat=True,
                   frees_saved_under_16bit=True, keeps_rounded_under_16bit=True,
                   pools_before_kernel_gradient=True, lone_conv_block_microbatch_gradients=True,
                   copies_microbatch_split=True, frees_saved_in_microbatch_remat=True,
                   copies_largest_gradient=("lion",),
                   all_reduces_zero_gradients=True, updates_stack_first=True,
                   gathers_lm_head=True,
                   fuses_outer_product_gradients=True, keeps_one_example_batched_dots=True,
                   loop_batched_dot_rows=4096, keeps_one_head_batched_dots=True,
                   except_keeps_batched_dots=True, holds_softmax_forward=True,
                   scan_residuals_by_policy=True,
                   except_shares_stream=True,
                   keeps_reduced_matmul_outputs=True, accumulates_float32_in_place=True,
                   copies_chain_kernels_at_entry=("adamw",), copies_state_at_entry=("lion",),
                   copies_zero_state_at_entry=("lion",),
                   copies_zero_parameters_at_entry=("lion",),
                   gathers_batch_for_output_split_kernels=True,
                   gathers_input_split_first_kernel=True,
                   copies_parameters_at_entry=("sgd",),
                   copies_state_with_microbatches=("lion",),
                   one_pass_frozen_head_loss=True,
                   float32_loop_copies=True, loop_whole_gradients=True,
                   loop_whole_conv_gradients=True,
                   slices_scanned_layer=True, holds_scanned_layer_gradients=True,
                   holds_zero_tensor_scanned_layer=True,
                   float32_chain_copies=True,
                   chain_head_gradient_first=True, widens_into_state=("lion",),
                   rereads_state_copies_with_microbatches=("lion",),
                   places_chain_gradients_in_state=("lion",),
                   dots_chain_rereads=True, widens_rounded_chain_at_entry=True,
                   scatters_lookup_gradients=True, regathers_microbatch_weights=True,
                   regathers_split_microbatch_weights=True,
                   regathers_frozen_tied_head=True, regathers_trainable_tied_head=True,
                   regathers_remat_weights=True,
                   regathers_split_remat_weights=True, regathers_recomputed_remat_kernels=True,
                   copies_scanned_operands=True, copies_scanned_operands_without_remat=True,
                   remat_past_reduction_rows=4096, split_loop_stream_rows=4096,
                   loop_stream_rows=4096,
                   copies_scanned_16bit_state=("lion",),
                   copies_scanned_float32_state=("lion",),
                   splits_tied_lookup_gradient_early=True,
                   copies_gathered_head_in_microbatch=True, reduces_tied_gradients_apart=True,
                   reduces_gathered_head_gradient=True,
                   scatters_sharded_lookup_gradients=True,
                   looks_up_split_tables_unrounded=True, dense_depthwise_gradient=True,
                   looks_up_tensor_split_zero_tables=True,
                   masks_depthwise_late_under_16bit=True, recomputed_scores_rows=4096,
                   splits_scanned_lookup_gradient=True,
                   scan_gradients_16bit_in_microbatches=True,
                   rounds_scanned_float32_in_microbatches=True,
                   rounds_gathered_tied_table=True, tied_gather_ratio=8,
                   keeps_one_layer_scan_mlp=5,
                   recomputed_scores_under_16bit=True, regathers_conv_kernels=True,
                   recomputed_norms_under_16bit=True,
                   regathers_recomputed_conv_kernels=True, copies_recomputed_largest_kernel=True,
                   forward_broadcasts_in_float32=True,
                   pads_pooling_gradient=True, places_16bit_relu_gradient_above=True,
                   tied_head_gradient_after_loss=True, shares_tied_copy_with_logits=True,
                   shares_loop_norm_values=True,
                   holds_loop_block_gradients=("sgd", "adamw", "lion"),
                   rounds_tensor_split_operands=True, reduces_tied_zero_gradients_apart=True,
                   scatters_zero_lookup_gradients=True),
    "gpu": Backend(),
    "tpu": Backend(tiles=True, fuses_loss_gradient=True, fuses_matmul_operands=True,
                   fuses_softmax_recompute=True,
                   fuses_gradient_update=True, narrows_matmul_operands=True,
                   accumulates_in_place=True, frees_outside_first=True,
                   frees_saved_in_backward=True, recomputes_by_stage=True,
                   slices_sharded_convs=True, stack_gradients_in_loop=True,
                   reduces_gradients_before_update=True, recomputes_16bit_whole=True,
                   regathers_loop_weights=True, keeps_scanned_float32_operands=True,
                   narrows_scanned_loss_gradient=True, narrows_scanned_float32_weights=True),
}
