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

    Attributes:
      float32_compute: computes 16-bit floats in float32, so activations take float32 bytes
        (XLA:CPU); a value the program casts back to 16 bits keeps them (``ROUNDED``: the
        logits' gradient, measured on bf16-mixed scanned GPTs: +12..+16 % rows to within
        3 %).
      loop_remat: honours remat of blocks applied by a Python loop; XLA:CPU schedules their
        recomputation early, so they keep what they would keep without remat.
      tiles: pads arrays to (sublanes, 128 lanes) tiles over their two minor dimensions (TPU).
      shares_loop_backward: computes part of a Python-loop block's backward in its forward and
        keeps it (``Block.shared``; XLA:CPU), with or without remat: the step of a float32
        loop stack compiles to the same bytes under remat none, full or minimal (measured on
        GPTs and encoders), so the early recomputation of an undone remat is the forward
        itself; in float32 layers only (under bf16 compute the forward's values are rounded
        to 16 bits, unlike the backward's; loop transformers under bf16-mixed were up to
        32 % over with them held). A scanned stack of one layer, compiled without its loop,
        is estimated as a loop of one block: it shares them too.
      fuses_loss_gradient: computes the loss gradient in one fusion, so only its output is
        materialised (XLA:TPU; XLA:CPU keeps the float32 softmax too). XLA:GPU is left
        unfused, the larger figure, until measured on a GPU.
      fuses_matmul_operands: computes a matmul operand made by elementwise operations inside
        the matmul's fusion: it is not kept when its inputs are (the backward's matmuls compute
        it again), and recomputing it materialises nothing (``Tensor.matmul_operand``;
        XLA:TPU).
      fuses_softmax_recompute: recomputes a softmax (``Tensor.softmax``: the attention
        probabilities) from its kept input (the scores, which ``dots`` saves) inside the
        backward's fusions that read it (the scores' gradient, the context's and values'
        gradient matmuls): in float32 layers it has no buffer of its own; under 16-bit
        compute one float32 buffer of the scores' shape (the shifted scores, ``scores -
        max``) is made for those fusions (XLA:TPU, measured on 2-layer seq-1024 loop stacks
        under dots: a block's attention backward holds the kept scores and the scores'
        gradient only; fp32 GPT d512 +32 % -> +7 %, the same in 2 microbatches +29 % ->
        +7 %, an fp32 fsdp x tp encoder d1024 in 4 microbatches +26 % -> +7 %, a bf16-mixed
        GPT d512 -11 % (its bfloat16 probabilities) -> +5 %). Where the scores are
        recomputed too (``full``) it is counted as before, in the compute dtype (not
        measured).
      fuses_gradient_update: computes the optimizer update in the fusion that makes the
        gradient, so a model without a scanned stack or microbatches materialises no gradient
        at its peak (XLA:TPU; measured on Python-loop transformers and MLPs, tied embeddings,
        dp and fsdp meshes among them; not under loss scaling or offloaded optimizer state,
        where an update waits for all gradients or leaves the device).
      narrows_matmul_operands: computes float32 matmuls from bfloat16 operands (the default
        precision), so a kept float32 value used only by matmuls is kept in bfloat16
        (``Tensor.matmul_only`` or ``matmul_operand``; values kept for the backward only, not
        recomputed ones; XLA:TPU).
      accumulates_in_place: adds each microbatch's gradient to the accumulator as it is made,
        so no microbatch's whole gradients are alive at once besides it; where it also
        fuses updates into the gradients' matmuls, the addition is fused there too and no
        gradient outside a scanned stack is materialised beside the accumulator (XLA:TPU;
        XLA:CPU in float32 only: ``accumulates_float32_in_place``).
      frees_outside_first: frees the values kept outside the blocks (the logits, the final
        norm's) before the blocks' backward starts, as their last use allows (XLA:TPU; XLA:CPU
        was measured to keep them through it on the quickstart). XLA:GPU is left keeping
        them, the larger figure, until measured on a GPU.
      combines_all_reduces: all-reduces the gradients of replicated parameters over the
        batch axes in a few combined all-reduces after the backward, so every gradient is
        alive at once, with the reduction's output beside it (XLA:CPU; measured: twice the
        trainable parameters whatever the batch, three times with microbatches).
      frees_saved_in_backward: frees a block's saved values once its backward is done, so a
        block's backward holds the saved values of the blocks up to it only (XLA:TPU: a
        CNN's first, widest block is differentiated with the later blocks' values gone;
        XLA:CPU measured to keep them in float32: CPU dev rows 74 % -> 69 % with it;
        see ``frees_saved_under_16bit``).
      recomputes_by_stage: recomputes each stage of a block (``Tensor.stage``: attention,
        MLP) just before that stage's backward, so a block's backward holds one stage's
        recomputation at a time (XLA:TPU; XLA:CPU recomputes a scanned block whole). Any
        backend holds one stage's activation gradients at a time.
      scan_remat_stages: a scanned GPT's backward loop under a checkpointing policy (not
        ``except:*``, no tensor split) frees the values kept outside the blocks (the logits,
        the final norm's) before it starts, and holds in the MLP stage the block's whole
        recomputation but its score-sized values, the MLP's gradients, one more MLP-wide
        and one more residual-stream-wide gradient; in the attention stage that stage's
        recomputation and gradients; in both, the causal mask's ``jnp.where`` broadcast to
        ``B x H x L x L`` in float32, hoisted out of the loop (XLA:CPU, measured on a 2L d128
        H4 seq256 V1000 GPT under remat minimal, b8: peak in the MLP stage's backward with
        the mask, 4 MLP-wide and 11 ``B x L x D`` float32 buffers (recomputed x2, h2,
        q_scaled; the stream gradient carry and its sum; a transposed activation for a
        weight gradient; residual slices; k transposed) besides the stacked residuals, no
        logits; fresh compiles of it under minimal, save:qkv, dots, dots_no_batch, full in
        fp32 and bf16 +11..+27 % -> -8.7..+9.7 %, a 3L d192 seq512 GPT's +1.6..+7.3 % ->
        -3.2..+4.9 %, 2-head seq64/256 GPTs -4..-13 % -> -3..-11 %; with 4 heads on tensor 4
        -1..-8 % -> -16..-20 %, encoders (no mask) too low: left out; dev rows 1053 -> 1055).
      holds_outside_gradient: holds the largest gradient of a parameter outside a scanned
        stack (the embedding table's) through the stack's backward loop (XLA:CPU, measured
        on scanned GPTs and encoders; not on XLA:TPU).
      slices_sharded_convs: computes a convolution of the images whose kernel's output
        channels are ZeRO-sharded ``n`` ways as ``n`` output-channel slices, each laid out
        with its channels on the lanes, so its block's backward holds :data:`CONV_SLICES` of
        them besides the whole output (XLA:TPU under fsdp: ``B x H x W x C/n`` buffers padded
        to 128 lanes; ``Tensor.kernel`` names the kernel).
      widens_microbatch_gradients: under 16-bit compute with microbatches, holds a float32
        buffer of the trainable parameters' size beside the accumulator and the gradients
        through the step (XLA:CPU, measured: exactly one more on four MLP rows, dp and single
        device; the float32 copy of a microbatch's gradients before they are added).
      gradient_over_undone_remat: where it undoes a loop block's remat (``loop_remat``
        off) and the layers compute in float32, writes an activation gradient
        ``in_place_of`` a value the configured policy recomputes over the copy of that value
        it made early, so the block's backward holds that gradient in no buffer of its own
        (XLA:CPU, measured on CNNs under remat full: one ReLU gradient, the size of the
        widest convolution output, less on four fp32 rows; not under bf16 compute, nor under
        dots, which keeps the convolution outputs).
      frees_saved_under_16bit: ``frees_saved_in_backward`` under 16-bit compute only, and
        not where an undone remat recomputes a matmul or convolution (XLA:CPU, measured on
        CNNs: under bf16-mixed without remat or under dots the first block's backward runs
        with the later blocks' values gone; in float32, or under remat full, they are kept).
      keeps_rounded_under_16bit: under 16-bit compute, where no undone remat recomputes a
        matmul or convolution (as ``frees_saved_under_16bit``), keeps a ``kept_rounded``
        value in the 16-bit dtype: the forward's fusion rounds a conv block's ReLU input
        and that copy is kept, and the backward writes the 16-bit ReLU gradient over it,
        beside that gradient's float32 copy (``Tensor.widened_over``) (XLA:CPU, measured on
        bf16-mixed CNNs without remat or under dots, which compile alike: the kept ReLU
        inputs are bfloat16, and a block's backward holds two float32 buffers of its output's
        size (the pooling gradient, padded, beside its unpadded copy; then the ReLU
        gradient's float32 copy beside its transposed copy for the kernel's gradient); a
        3->32->64 CNN at 64x64, batch 16: +9.7 % -> +3.9 %; dev rows 692 -> 700 of 800 with
        the rounded images' own buffer (``jaxmem.estimate``), one tiny separable CNN newly
        missed (-9.7 -> -16.8 %: a microbatch under-count the over-estimate had hidden);
        under remat full the float32 convolution output is kept instead).
      copies_microbatch_split: with microbatches, materialises the microbatch split of the
        batch (``grads.split_microbatches``, every k-th example into microbatch k: a
        transposed copy, microbatch-major) and holds it through the microbatch loop, beside
        the batch argument (XLA:CPU, measured: a CNN's images and an MLP's inputs, the whole
        batch's bytes again; dev rows 700 -> 703 of 800, two fp32 image-256 CNNs under remat
        full, already over, going +7 -> +14 %; not on XLA:TPU: a TPU dev row 17 -> 16 of 20
        with it). Where the step is otherwise small, its peak can be the loop's entry, with
        the split and the loop's own copy of it both alive: not a moment of the estimate (an
        MLP of 64 hidden units, 256 examples in 4 microbatches: -13.8 %).
      frees_saved_in_microbatch_remat: in a microbatch loop's body, where the layers
        compute in float32 and an undone loop remat saves nothing but the blocks' inputs
        (``full``), frees a block's saved values once its backward is done (as
        ``frees_saved_in_backward``), and a block's backward holds the gradient flowing in
        (the next block's input's size) beside the one it makes, and the microbatch's slice
        of the batch in a buffer of its own (XLA:CPU, measured on CNNs: the first block's
        backward at 256x256 holds its recomputed ReLU input, the pooling gradient, the
        incoming gradient, the batch, its split and the slice; dev rows +13.5 and +15.1 %
        -> within 0.3 %, a one-factor sweep of image size, batch and separable from
        +3..+27 % to within 2.4 % but a 1 MiB separable one, +3 -> -14 %; not applied under
        bf16 compute or ``dots``, where freeing put dev rows 11..27 % under, nor without
        microbatches, where the fp32 rows are within 4 % as they are).
      copies_largest_gradient: optimizers whose update, applied as each gradient is made
        (no scanned stack, no microbatches), holds a copy of the largest gradient beside it
        (XLA:CPU, measured: lion, four MLP rows 20-28 % short by about that; adamw and sgd
        not). On one device, an MLP chain's is sized by ``copies_state_at_entry`` instead.
      copies_chain_kernels_at_entry: optimizers whose in-place updates of a matmul chain's
        kernels (an MLP's; float32, no microbatches, no ZeRO split: under FSDP the backward
        reads the gathered weights) make XLA:CPU copy every trainable parameter but the
        first kernel at the step's entry, for the backward to read, held from the forward
        into the backward, the second kernel's to the backward's end, where the first
        kernel's gradient is made beside it: where activations are small the copies are the
        peak (measured: adamw, MLP rows from -4..-11 % to within 0.6 %; sgd only on some
        shapes, lion not).
      copies_state_at_entry: optimizers whose update reads the old state beside writing the
        new one in place (lion: the parameter's update reads the old moment, the moment's
        own update overwrites it), so that, on one device without microbatches or a scanned
        stack, in float32 layers of a matmul chain (an MLP's), XLA:CPU copies every state
        leaf at the step's entry, after copying the parameters something other than their
        own update reads (all kernels but the first, the head's bias; with outer-product
        gradients all but the first kernel; none where a 16-bit chain reads float32 rounded
        copies, ``float32_chain_copies``); the copies and the gradients then go, largest
        first, into the donated argument buffers dead for their whole life (a copied-out
        parameter's until its update, a state leaf's until its gradient), the rest being
        temporaries alive together at the backward's start (``chain_memory.
        state_copies_held``, a model of XLA's buffer assignment: smallest fitting buffer
        first, never the one a copy reads). Measured on lion MLPs of one to four hidden
        layers, batch 1 to 32, remat none, dots and full: the model's bytes are the compiled
        temporaries less the activations (within 0.3 % of the step on ten fp32 shapes; up to
        2.7 % at batch 16-32, whose activations take argument buffers too); dev rows
        722 -> 729 of 800 (+32, +24, +21, +15 (bf16), -20, -12, -11 % -> within 1 %; one
        hidden layer holds every state leaf and the head's kernel; at four, the head's state
        copy takes a copied-out kernel's buffer and the gradients the state leaves'),
        fresh fp32 and bf16 rows -17 .. +30 % -> within 5 %.
      copies_state_with_microbatches: optimizers whose state XLA:CPU copies whole at the step's
        entry with microbatches (lion, as ``copies_state_at_entry``), in float32 layers of a
        matmul chain (an MLP's, not a 16-bit chain read through float32 copies): the copies
        are held to the updates after the loop, beside the accumulators (made before the
        loop), and each microbatch's gradient is added to its accumulator as it is made
        (the largest is not kept apart): 2 x trainable, less, on one device, the
        accumulators placed into the donated state buffers of other leaves of the same
        byte size freed by the copies (all but one per size; ``chain_memory.
        same_size_state_slots``). Measured: MLPs of 1-4 hidden layers, fp32, remat none,
        dots and full, mb 2-4: every ``mu`` leaf copied at the entry (``copy``), every
        accumulator a temporary except, e.g., the first kernel's in the equal-sized third
        kernel's ``mu`` buffer; dev rows 935 -> 937 of 1000 (-10.9, -10.6 % -> within 0.4 %,
        -9.5, -8.7, -5.5, -5.0 % -> within 0.6 %, no row lost); fresh fp32 MLPs -7 .. -11 % ->
        within 0.3 %, but [1024, 512, 2048] at mb 4 0 -> +8.5 % (two more accumulators
        placed in state buffers: not modelled). Not applied to transformers or 16-bit
        chains (dev rows there are within 10 % without it and go over with it), nor with
        one row a microbatch (the outer-product gradients of ``fuses_outer_product_gradients``:
        the accumulator and the largest gradient, exact on MLPs [1024, 2048], [1024, 1024],
        [512, 2048, 1024] at batch 2, mb 2, where this rule was +5 .. +10 %).
      copies_parameters_at_entry: stateless optimizers (plain sgd, no momentum) whose in-place
        updates of a matmul chain's parameters make XLA:CPU copy, at the step's entry, every
        parameter something other than its own update reads (all kernels but the first, the
        head's bias), in float32 layers on one device without microbatches or a scanned
        stack; the copies and the gradients (each alive until its parameter's update) are
        then placed as ``copies_state_at_entry``'s, without state leaves
        (``chain_memory.state_copies_held(state=False)``): largest first, into the smallest
        donated parameter buffer dead for the whole life (a gradient into its own parameter's,
        a copy into another copied-out kernel's of the same size), the rest temporaries.
        Measured (buffer assignment) on fp32 sgd MLPs: [512, 512, 1024, 1024] -> 10 at batch
        8, the three copies temporaries (7.2 MiB), each gradient in its own parameter's
        buffer; [1024, 1024, 1024] the second kernel's copy in the first's buffer. 16 fresh
        shapes (1-4 hidden layers, out 10/1000, batch 8, remat none) -29 .. +1.5 % -> within
        1.5 %; remat dots/full, batch 1-2, within 0.3 %; batch 64 +5..+9 % with or without
        (activations in argument buffers). Dev rows 1046 -> 1047 of 1100 (-18.7 -> +0.6 %),
        several in-band sgd rows -4 .. -7 % -> within 0.6 %, none lost. Not for a 16-bit chain
        read through float32 copies (``float32_chain_copies``: each update is computed as its
        gradient is made; two rows +17, +37 % with it).
      all_reduces_zero_gradients: reduces a scanned layer's ZeRO-sharded gradients over the
        fsdp devices as an all-reduce of the whole gradients, so the backward loop holds a
        layer's whole gradients and the all-reduce's output at once, besides the stack's
        sharded gradients and the whole gradient of the table outside it (XLA:CPU, measured
        on a scanned GPT with one example per device: -43 % -> -24 %; Python-loop stacks
        were not seen doing it); and, outside a scanned stack, the whole gradients of a
        matmul chain's kernels fed by batch-split inputs (see ``_batch_split_gradients``;
        measured on MLPs whose first kernel is ZeRO-split on its input dimension: -75..-78 %
        -> +5 %), or of every parameter of a model without such a chain (Python-loop GPTs
        with one or two examples per device: -33..-63 % -> within 12 %).
      updates_stack_first: with ``combines_all_reduces``, updates a scanned stack's parameters
        from the backward loop's output (its gradients, already all-reduced layer by layer)
        before the combined all-reduce of the gradients outside it, so that moment holds those
        gradients and their all-reduce's output but not the stack's (XLA:CPU, HLO of a 5L d384
        V32000 encoder under tp 2x4, sgd, b2: the stack's update fusions precede the
        all-reduce, which holds the table's scatter-add gradient and its output only: +14.7 %
        -> +1.1 %; fresh encoders dp8 / tp, sgd / adamw, fp32 / bf16, 2..6 layers: +6..+12 %
        -> +2..+4 % where that moment is the peak, unchanged elsewhere). Not measured to hold
        with a tied token table (GPT rows fall to -12 %), nor for float32 lion (its entry
        copies of the state: -3.5 % -> -8.5 %).
      gathers_lm_head: all-gathers a ZeRO-split LM head (its kernel or the tied embedding
        table) whole for the head's matmul whatever the rows it multiplies, and keeps it for
        the backward (XLA:CPU, measured on GPTs with few tokens per device: the whole table
        in float32 beside its shard).
      fuses_outer_product_gradients: with one row per device and microbatch (an MLP on one
        example), float32 layers and no ZeRO split, computes each weight gradient, an outer
        product, inside what consumes it: the update (which then needs a copy of the
        largest parameter the backward still reads, all but the first layer's kernel;
        lion's update, reading the gradient twice, makes the gradient once) or the
        microbatch accumulator (XLA:CPU, measured on MLPs: rows +14..+32 % -> 0.0 %).
      keeps_one_example_batched_dots: with one example per device and microbatch, keeps a
        batched matmul's output (the attention scores) for the backward beside the kept
        value made from it (their softmax), in a buffer of its own (XLA:CPU, measured on
        transformers with one sequence per device: -20..-31 % rows to within 5 %; with two
        the scores' buffer is reused).
      loop_batched_dot_rows: in a Python-loop stack, ``keeps_one_example_batched_dots`` only
        for a batched matmul output of fewer rows than this (all dimensions but the last, on
        a device: heads x queries); 0: no limit (XLA:CPU, measured on GPTs: 8 heads x 511
        queries keep the scores, 8 x 512, 16 x 256, 32 x 128 and 4 x 1024 do not, rows
        +19..+47 % with them; a scanned stack keeps them at 8 x 512).
      keeps_one_head_batched_dots: in a Python-loop stack, ``keeps_one_example_batched_dots``
        also where a batched matmul output has one head per device (its second dimension 1:
        ``num_heads`` equal to the tensor axis), below ``loop_batched_dot_rows`` rows, and at
        any rows where the backend undid an ``except:*`` policy (XLA:CPU, measured on GPTs and
        encoders 2L d128 under data 2 x tensor 4 and fsdp 2 x tensor 4: 4 heads compile to the
        same bytes as 8, the scores kept beside the softmax, under ``except:mlp_post_act`` at
        2..16 examples per device and seq 256/512, under remat none below 4096 rows (2 x 512,
        8 x 256 and 8 x 64 kept, 8 x 512 not); 4-head rows -11..-19 % -> within 4 %, the 8-head
        twins unchanged; dev rows 1046 -> 1048 of 1100, a 5L d128 seq512 GPT -23.2 -> -0.9 %;
        rows now over 5 % are over by as much with 8 heads, which compile the same).
      scan_residuals_by_policy: a scanned stack under a checkpointing remat policy keeps for
        the backward what the policy saves and nothing beside it: no
        ``keeps_one_example_batched_dots`` scores beside their kept softmax (XLA:CPU,
        measured on scanned GPTs with one sequence per device: under ``except:*`` policies,
        which save every value a block makes, the stacked residuals hold the softmax, one
        ``L x L`` per head and layer, not the scores; a 6L d64 seq512 GPT at batch 1 and 2
        compiles to the same bytes under none and ``except:mlp_post_act``, estimated +1.3 %
        and +1.7 % with this; dev rows +36 % and +12.5 % to within 6 %, dev rows 722 ->
        724 of 800; ``dots_no_batch`` rows drift up to 2.5 points lower, none missed).
        Without remat the scores were measured kept (dev rows under none, -20 % without).
      except_shares_stream: where ``shares_loop_backward`` applies under an undone
        ``except:*`` policy (a float32 Python-loop stack of more than one block, no tensor
        axis), a block's forward keeps the policy's saved values (the MLP's pre- and
        post-activation) but not the GELU's derivative factors, and holds two
        residual-stream-wide values of its backward computed early (the layer norm's)
        instead (XLA:CPU, measured on 3- and 4-layer GPTs and encoders d192 seq256,
        mlp_ratio 2 and 4: 10 % less than under remat none, estimated within 3 % with this,
        +17 % without; dev rows 724 -> 726 of 800, +16.6 % -> -0.4 % and +10.4 % -> +9.2 %,
        none missed; a one-block stack keeps its GELU factors (dev rows 6..17 % low
        without them); under tensor parallelism not measured).
      shares_loop_norm_values: where ``shares_loop_backward`` holds a transformer block's
        GELU factors, the backward's values its forward keeps are the GELU's tanh and the two
        layer norms' normalised values (residual-stream wide), not the GELU's square
        (XLA:CPU, without a tensor axis: fresh float32 loop GPTs and encoders 3L d128 h2
        seq256 batch 8 under none hold 3 MLP-wide and 10 stream-wide buffers a block at
        mlp_ratio 2, 3 and 4 (the estimate counted 4 and 8): gpt mlp4 +3.8 % -> -1.8 %,
        encoder mlp4 +9.3 % -> +2.4 %, mlp3 +1.2/+2.8 % -> -1.8/-0.9 %, mlp2 unchanged
        (the square is two stream-wide values there); dev rows 1057 -> 1057, 47 closer,
        25 further, none crossing 10 %; under tensor parallelism (the MLP split, the stream
        not) dev rows went +5..+10 % -> +11..+15 %, and under FSDP a 4-layer GPT with
        microbatches -4.0 -> -7.3 %, so not applied there).
      keeps_reduced_matmul_outputs: without remat (or where it undoes remat), keeps for the
        backward the all-reduced output of a matmul that contracts a tensor-split dimension
        (a row-parallel projection: attention's output, the MLP's down projection) beside
        the residual stream made from it (XLA:CPU under tensor parallelism, measured on
        GPTs: -15..-24 % rows 5..10 points closer; encoders' attention outputs too).
      accumulates_float32_in_place: ``accumulates_in_place`` where the layers compute in
        float32, outside a scanned stack (XLA:CPU, measured on MLPs: exactly the accumulator
        and the largest gradient on eight fresh rows; lion too, whose copies are made for
        the update after the microbatch loop: loop transformers +10..+24 % -> within 18 %;
        under bf16 compute see ``widens_microbatch_gradients``). An optimizer in
        ``copies_largest_gradient`` keeps its largest microbatch gradient beside the
        accumulator even where ``fuses_outer_product_gradients`` would add it as it is made
        (measured on an MLP with one example per microbatch: exactly that).
      one_pass_frozen_head_loss: where the LM head is frozen (no gradient of its own from the
        logits' gradient) and the loss gradient is not fused, computes the loss gradient in
        one pass over the logits, without the exponentials' buffer or a second layout for
        the head's gradient matmul (XLA:CPU, measured on GPT probes: +24..+44 % to within
        2..5 %). XLA:GPU is left with the two passes, the larger figure, until measured.
      stack_gradients_in_loop: makes a scanned stack's gradient buffers when its backward
        loop starts, after the loss gradient: where the loss gradient is made no gradient is
        alive (XLA:TPU, measured: a GPT under remat full whose peak is the LM head's float32
        logits, +11.5 % with the stack's gradients beside them, +0.1 % without). Not under
        ZeRO, where two FSDP-sharded scanned GPTs disagreed (-7.6 % with them, -11.3 %
        without; +1.7 % and -0.6 %): one row against it. XLA:CPU holds them there
        (``holds_outside_gradient``).
      loop_whole_gradients: with microbatches under FSDP, holds a Python-loop transformer's
        whole (unsharded) gradients through a microbatch's backward, beside its activations,
        for the step's combined reduction; every trainable parameter's is counted (XLA:CPU,
        measured: FSDP loop GPTs and encoders with microbatches -18 .. -28 % -> -13 .. +1 %;
        with ``all_reduces_zero_gradients``, which sizes them).
      slices_scanned_layer: a scanned stack's backward loop copies its layer's float32
        parameters out of the stacked ones into buffers of their own, held through the
        layer's backward (XLA:CPU, measured on scanned encoders and GPTs: the gap of an
        encoder row, -11.2 % -> -2.9 %, was one layer's weights; under 16-bit compute the
        loop reads slices of the stacked 16-bit copy, already counted).
      float32_loop_copies: computes a 16-bit matmul in float32 and materialises the
        compute-dtype copy of each parameter a Python-loop transformer's matmuls read rounded
        but in float32, kept for the backward (XLA:CPU, measured: bf16 loop GPTs and encoders
        at small batches -10 .. -20 % with 16-bit copies, within 2 % with these; a one-layer
        scan, estimated as a loop, included). Not for a scanned stack (its stacked copy is
        16-bit, sliced per layer), an MLP chain, convolutions, microbatches or ZeRO-gathered
        weights (not measured to hold: 16-bit there).
      float32_chain_copies: under 16-bit compute and no remat, compiles an MLP chain's step as
        in float32 layers: the parameters' rounded copies are float32 buffers (made once
        before a microbatch loop) that the backward reads. Without microbatches each update
        is then computed as its gradient is made (no gradient materialised; lion's update
        reads copies of every trainable parameter); with them each microbatch's gradients
        are added to the accumulator as they are made, with no float32 copy of their own
        (XLA:CPU, measured on MLPs of one to four hidden layers, sgd, adamw and lion,
        unsharded and FSDP: -15 .. +50 % -> within 2 % on most; under remat ``full`` the
        16-bit copies and the gradients are kept, as estimated without it; under ``dots``
        see ``dots_chain_rereads``).
      chain_head_gradient_first: under ZeRO (FSDP), without microbatches, a 16-bit MLP chain
        read through float32 copies (``float32_chain_copies``) makes the head's kernel
        gradient before the head's activation gradient (the last read of its float32 copy):
        the peak holds the copies of every kernel but the first, the head's gradient, the
        loss gradient and the activations; the other layers make their activation gradient
        first (XLA:CPU HLO schedule on FSDP MLPs of 1-4 hidden layers: fresh -7 .. -23 % ->
        -0.4 .. -9 %; dev rows -17.3 -> -9.3 %, -15.3 -> -2.4 %; one device and plain data
        parallelism unchanged). Not for lion (its copies are counted as its gradients).
      dots_chain_rereads: under 16-bit compute with microbatches and a remat policy that saves
        the matmul outputs (``dots``, ``dots_no_batch``), compiles an MLP chain's step as
        ``float32_chain_copies`` does without remat (float32 rounded copies made before the
        microbatch loop, gradients added to the accumulator as they are made, no float32
        copy of their own), and besides holds the 16-bit copy of the kernel of each
        checkpointed block but the first (whose input needs a gradient: its backward reads
        the kernel, the block's argument) through the step, which the loop body widens to
        float32 again early, a buffer held through the microbatch's backward; a re-read
        kernel's gradient is written over that copy, the head's is made beside them, the
        first kernel's once they are dead (XLA:CPU, measured on MLPs of one to four hidden
        layers, sgd, adamw and lion, single device, dp and FSDP, one or more rows a
        microbatch: compiled to within 2 %, +50 % at one hidden layer, where the step is
        exactly 3 x the parameters; dev rows +10.5 .. +49.8 % -> within 0.2 %).
      widens_rounded_chain_at_entry: under 16-bit compute, remat (any checkpointing policy)
        and no microbatches, rounds each of an MLP chain's block kernels to 16 bits in a
        buffer of its own, all of them first, then widens them to float32 one by one in
        forward order (each 16-bit copy freed once widened; the head's rounded copy is made
        float32 at once): the step's entry holds the float32 copies made so far and the
        16-bit ones not yet widened, beside the parameters (XLA:CPU, measured on MLPs under
        remat full and dots, sgd and adamw: -5 .. -12 % -> 0.0 %; not seen with microbatches,
        where the rounded copies are made before the loop: ``dots_chain_rereads``).
      widens_into_state: optimizers whose state XLA:CPU copies whole at the step's entry
        under ``widens_rounded_chain_at_entry`` too (lion's ``mu`` leaves), on one device: the
        widened float32 kernels go into the donated state buffers the copies freed, so the
        entry holds every 16-bit kernel copy, the head's float32 one and the state copies
        (bf16 lion MLPs of 1-4 hidden layers, remat full and dots: -3 .. -14 % -> within
        1.2 %; data parallelism and FSDP unchanged, not applied).
      rereads_state_copies_with_microbatches: the same optimizers where, on one device, a
        16-bit MLP chain under a policy saving no matmul output (``full``; ``dots`` is
        ``dots_chain_rereads``) runs microbatches: the accumulators go into the donated state
        buffers, so the step holds the state copies, the float32 rounded copies of every
        parameter, the blocks' 16-bit kernels, the checkpointed blocks' kernels but the
        first widened again in the loop, and the head's gradient; the first kernel's
        gradient once those are dead (dev rows +15.0, +4.9, +8.4 % -> within 0.2 %; 16 fresh
        MLPs +3 .. +18 % -> within 3 %, +2 .. +7.5 % at one row a microbatch).
      scatters_lookup_gradients: adds a lookup-only table's gradient (the scatter-add of the
        lookup's backward) into the microbatch accumulator in place, so where
        ``accumulates_float32_in_place`` holds the largest gradient made beside the
        accumulator is the largest but those tables' (XLA:CPU, measured on float32 encoders
        with microbatches whose token table is the largest parameter: +11 .. +28 % -> within
        6 %; without microbatches the table's gradient is a buffer of its own, as counted).
        A token table tied to the LM head, with microbatches and the batch split over
        devices (float32 layers): its lookup's scatter-add is a buffer of its own, made at
        the microbatch's start and held through its backward, beside the accumulator
        (measured on tensor-parallel GPTs, data 2 x tensor 4: 7.8 MiB of a 7L d256
        32000-token table, -9.4 % -> -0.6 %, and 1 MiB of a 5L d128 8192-token one, -7.9 %
        -> -1.7 %, both without remat; not made early on one device, nor with the data
        axis 1).
      regathers_frozen_tied_head: FSDP x tensor, a Python-loop GPT with a frozen tied table
        gathers it whole twice at the head's forward matmul (the backward's gather made early)
        beside its shard's transposed copy; a trainable table's is not hoisted (XLA:CPU, d256
        32000-token GPTs: 3L/7L -20..-27 % -> -2..-5 %, bf16 batch 8 -14 % -> +5 %).
      regathers_remat_weights: FSDP (no tensor axis), no microbatches, a Python-loop
        transformer under a checkpointing policy gathers its ZeRO-split weights again for the
        backward, early: at the forward's end every weight a matmul reads is whole twice (a
        tied table too, not a lookup-only one), no gradient yet; the peak where the gradient
        all-reduce is small (frozen table or blocks) (XLA:CPU, fsdp 8, one example a device:
        frozen 3L d256 -28 % -> +1 %, 4L d512 fp32 sgd -27 % -> -4 %; no remat: no regather).
      regathers_microbatch_weights: with microbatches under FSDP (no tensor axis), a
        Python-loop transformer's backward all-gathers its ZeRO-split weights again, apart
        from the forward's gathered weights it keeps, and does so early in the microbatch
        loop's body, so where the backward starts every ZeRO-split parameter is alive whole
        twice, in float32, under 16-bit compute; in float32 layers only the blocks' weights
        are gathered again, and only where the remat policy recomputes a matmul (its
        recomputation has gathers of its own; undone or not), else the backward reuses the
        forward's (a 1-layer fp32 GPT under remat minimal with a 32000-token table: +20 %
        with the table counted twice, +0.04 % without) (XLA:CPU, measured: a bf16-mixed
        6-layer GPT's peak holds each layer's
        kernels whole twice; a 4-layer d384 GPT, 2 and 4 microbatches, bf16-mixed -27..-43 %
        -> -1..-15 %, fp32 under remat full -21 % -> within 1 %, fp32 without remat -7 % and
        +17 % with them, as at rows 1024 an fp32 GPT's peak holds one set; dev rows 703 ->
        707 of 800; without microbatches not seen to hold: rows up to +33 % with it).
      copies_scanned_operands: a scanned stack's backward loop body copies, at its start, the
        layer's saved values that its matmuls read (``block_memory.operand_slices``: the
        kept inputs of a matmul or of an elementwise value made for one) out of the stacked
        residuals into buffers of their own, held beside the recomputation (XLA:CPU, measured
        on scanned GPTs and encoders: a 2-layer d128 GPT at batch 16 under save:query+key+value
        holds q, k, v copied, 1.5 MiB; an encoder d384 without remat 17.5 of its layer's
        22 MiB, the matmul operands; float32 copies under bf16-mixed too). Counted under a
        checkpointing policy only: without remat XLA copies them too, but those rows are
        already over (dev rows +4 .. +9 % -> +14 .. +22 % with them; on an encoder with
        microbatches the estimate holds its 16 MiB of logits there, which XLA has freed).
        Dev rows 712 -> 718 of 800 (one bf16 dots_no_batch row +9.5 -> +10.2 %).
      copies_scanned_operands_without_remat: ``copies_scanned_operands`` without remat too
        (no checkpointing policy), where no tensor axis splits the stack, and then, as under
        a policy, no ``keeps_one_example_batched_dots`` scores beside the kept softmax: the
        buffer of the layer's size taken for the scores at one example per device is the
        softmax's slice copied out of the stack (XLA:CPU, measured without remat: an encoder
        3L d384 seq128 bf16-mixed at batch 1, 2, 4, 8 holds in its backward loop's body the
        f32 slices of the softmax (B x H x S x S, with its 16-bit slice under bf16-mixed), the
        MLP's and the Q/K/V's, -4/-9/-13/-17 % -> within 2 %; an encoder 2L/4L d512 seq512 at
        batch 1 -3/+5 % -> within 1 % without the scores, +10/+13 % with both; with a tensor
        axis (data 2 x tensor 4) the same encoder is -2 % (bf16) / +2 % (fp32) without it and
        +12/+17 % with it). Dev rows 935 -> 941 of 1000 (seven scanned rows -10..-17 % within
        7 %; a bf16 lion encoder 2L with a 32000-token table +4.2 -> +10.2 %).
      remat_past_reduction_rows: under tensor parallelism, float32 Python-loop blocks whose
        remat policy the backend undoes are merged with the real forward only up to the
        first all-reduce the recomputation would redo: where a policy saves neither a
        row-parallel matmul's all-reduced output (the attention output projection's) nor a
        value made from it, the stages after it are really recomputed (their values not
        kept), below this many rows per device (examples per device x seq_len). Measured on
        an encoder 6L d576 seq512, data 2 x tensor 4: 165.7 MiB under ``full`` and
        ``save:query+key+value`` against 205.1 under ``none``, ``dots`` and ``minimal``;
        recomputed at 1024 .. 3072 rows per device, fully undone at 4096 (d384 .. d576).
        Dev rows 720 -> 719 with it alone (two encoders +26.6 -> +2.6 %, +21.2 -> -0.3 %;
        three GPTs already low without remat newly missed, two of them fixed by the tied
        table's lookup gradient, ``scatters_lookup_gradients``).
      copies_scanned_16bit_state: optimizers whose state XLA copies whole, early (before the
        backward loop), for a scanned stack under 16-bit compute without microbatches: lion's
        update reads its old first moment twice (the parameter's update, the new moment
        written over the donated old one), and XLA:CPU copies every trainable parameter's
        moment out of the donated argument into temp memory, held to the update. The freed
        argument buffers are reused: the stack's 16-bit gradient accumulators (half the
        stack's float32 bytes) and other copies were placed in them, so the net is the
        trainable parameters less half the stack (measured on an encoder 2L d768: every
        ``mu`` copied at the entry, the 16-bit down-projection gradient in the embedding's
        ``mu`` slot, the up-projection's copy in the down-projection's; dev rows 722 -> 726
        of 800, bf16 scanned lion rows -17 .. -3 % -> -6 .. +8 %). Not applied to float32
        stacks (an fp32 variant of that encoder has copies too, but is -2.5 % without the
        rule) nor Python-loop stacks (their bf16 lion rows average +1 % without it).

      copies_gathered_head_in_microbatch: with microbatches under FSDP, 16-bit compute and a
        scanned stack, the microbatch loop's body rounds the LM head's gathered weight (the
        tied token table, ``gathers_lm_head``) whole into a float32 buffer of its own (the
        head matmul's transposed layout), held beside the gathered float32 table through the
        loss gradient (XLA:CPU, measured on bf16-mixed scanned GPTs 3L d128/d256, vocab
        4096/16000, batch 64 in 2 microbatches, fsdp 8: f32[128,16000] and f32[16000,128]
        both whole at the peak; -9 .. -18 % -> within 3 %; dev rows -37 -> -18 %, -6 -> -4 %.
        Not in float32 layers, where the copies differ with the shapes: +26 % with it).
      reduces_tied_gradients_apart: a token table tied to the LM head has two gradients,
        the head matmul's (made from the logits' gradient where the backward starts) and the
        lookup's scatter-add (into a zeroed buffer of its own), and the combined all-reduce
        over the data-parallel devices reduces them as two entries before adding them, so
        where the gradients are all-reduced the table's local shard is held four times
        (both gradients and their reduced outputs), twice more than one gradient and its
        output (XLA:CPU, measured in the HLO of tp and dp GPTs: two ``f32[V/tensor, D]``
        entries in the all-reduce's tuple, added after; a 2L d576 32000-token tp GPT's peak
        is 2 x (trainable + table) besides the arguments, -18.9 % -> -0.1 %; with
        microbatches the same two extra shards beside the accumulator, a scanned 5L d256
        tp GPT in 4 microbatches -24.9 % -> -0.5 %; dev rows 737 -> 743 of 800, fresh tp
        GPTs, loop and scan, 1 or 2 microbatches, from -9..-13 % to within 6 %).
      scatters_sharded_lookup_gradients: a lookup-only table split over a non-ZeRO axis (the
        token table's vocabulary over ``tensor``) has its gradient scattered into the device's
        shard (the partitioner gathers the small activation gradients over the fsdp devices
        instead of reducing the table): under FSDP it is not among the whole gradients
        all-reduced (``all_reduces_zero_gradients``), in a Python-loop stack nor outside a
        scanned one (XLA:CPU, measured on fsdp 2 x tensor 4 encoders: the table's gradient
        is a ``f32[V/4, D/2]`` broadcast + scatter at the peak, not ``f32[V/4, D]``; a 3L
        d128 8192-token encoder +32 % -> -3.5 %, a scanned 8L d512 one +12 % -> -2.6 %,
        fresh loop and scanned encoders at one example per device +12 .. +32 % -> within
        5 %).
      looks_up_split_tables_unrounded: under 16-bit compute, the lookup of a table split by
        the tensor axis (its vocabulary) reads the float32 parameter: no rounded float32
        copy of it is made (``float32_loop_copies`` leaves it out, as an unsplit table)
        (XLA:CPU, measured in the HLO of a bf16-mixed tp encoder: no ``f32[V/4, D]`` buffer
        but the parameter, its state, lion's state copy and the lookup gradient; dev rows
        +8.7 / +10.7 / +22.0 % -> -1.0 / +6.4 / +13.8 %; fresh bf16 tp encoders with a
        32000-token table +1 .. +24 % -> within 1 %).
      dense_depthwise_gradient: computes a depthwise convolution's kernel gradient
        (``k x k x 1 x C``) as a dense ``k x k x C x C`` float32 convolution of the input and
        the output gradient, then a masked copy keeping the diagonal (a select, sometimes
        with a ``pred[k,k,C,C]`` mask), reduced to ``k x k x 1 x C``: its block's backward
        holds ``2 x k*k*C*C`` float32 values beside the saved values of the blocks up to it,
        a moment of its own (``Blocks.dense_kernel``; XLA:CPU, measured on separable CNNs,
        every precision and remat policy: a 3->128->16 CNN at 8x8, batch 2, whose peak is the
        two f32[3,3,128,128] buffers (1.2 MiB) beside block 0's saved values: -78 % -> +0.7 %;
        one-factor sweep of channels [128,16], [64,128], [16,128,64], image 8 and 32, fp32
        and bf16-mixed: -28 .. -83 % -> -5 .. +8 % where it is the peak; dev row -26 -> -11 %).
      masks_depthwise_late_under_16bit: under 16-bit compute, schedules the masked copy of a
        block's dense depthwise kernel gradient (``dense_depthwise_gradient``) after the
        previous block's backward has started (its pooling gradient padded), so that
        backward, the widest block's, holds one ``k x k x C x C`` float32 buffer of the next
        block more (``Blocks.dense_next``; XLA:CPU, measured on bf16-mixed separable CNNs:
        img16 [64,16] batch 2 under remat full, the first block's backward holds the dense
        f32[64,3,3,64] and its masked f32[3,3,64,64] copy; img32 [64,64,64] under dots with
        microbatches, the masked copy and its pred mask; dev rows 737 -> 740 of 800 (-26, -13,
        -14 % -> -3, -1, -7 %), none lost; fresh bf16 rows (channels [64,16], [128,32],
        [32,64,64], image 16 and 32, remat none and full, batch 4) -6 .. -19 % -> -9 .. +9 %.
        Not in float32 layers: there the mask is done in the block's own backward (fp32 dev
        rows +6 .. +7 % went +11 .. +22 % with it).
      recomputed_scores_rows: with microbatches, in float32 Python-loop transformers with a
        causal mask under an undone remat policy that saves something (not ``full``) but
        neither the attention scores nor their softmax (``save:query+key+value``,
        ``minimal``, ``dots_no_batch``), the microbatch loop's body recomputes the scores
        apart from the forward: the scores, their masked copy and the softmax, three
        ``B x H x L x L`` buffers, are alive at once beside the blocks' saved values (the
        softmax's counted), before the loss; from this many rows per device and microbatch
        on (examples x seq_len) the widest block's MLP values (its up-projection, GELU
        factors) are alive there too, below it not yet made (XLA:CPU, measured on 1-layer
        GPTs d128/d384, seq 256/512, 4..16 sequences a microbatch: 7 of 12 from -10 .. -33 %
        to all 12 within 9 %; dev rows 737 -> 739 of 800, -23 and -12 % -> -5 and +3 %;
        ``full`` compiles as without remat, an encoder (no mask) and a scanned one-layer
        stack were over with it).
      splits_scanned_lookup_gradient: with microbatches, a scanned stack, float32 layers and
        the batch split over devices, the token table's lookup gradient (the scatter-add of
        the lookup's backward, into a zeroed buffer made at the microbatch's start) is a
        buffer of its own, held through the microbatch's loss gradient and the stack's
        backward loop beside the accumulator and the stack's gradients, since it is reduced
        over the batch devices before it is added (on one device it is scattered into the
        accumulator in place); under FSDP it is whole, its ZeRO shards joined; a lookup-only
        table split over a non-ZeRO axis (``scatters_sharded_lookup_gradients``) has none
        (``Params.lookup_whole``; XLA:CPU, measured: dp encoder 4L d256 vocab 8192, batch 256
        in 4 microbatches, an f32[8192,256] scatter-add beside the accumulator's
        f32[8192,256] ``add`` at the peak in the stack's backward, -15.1 % -> -2.4 %; fsdp
        GPTs hold an f32[4096,192] / f32[4096,768] scatter-add whole beside the gathered
        table; fresh dp/fsdp/tp encoders and GPTs 2L d128..d256, 2 or 4 microbatches, remat
        full and none: -6.5 .. -14.3 % -> -0.4 .. -6.2 %; dev rows 752 -> 754 of 800, none
        lost).
      scan_gradients_16bit_in_microbatches: under 16-bit compute with microbatches, a scanned
        stack's gradients, carried through its backward loop in the microbatch loop's body,
        are the 16-bit cotangents of its rounded weights (``bf16[layers, ...]`` buffers made
        by the backward's zero broadcast), widened to float32 only as they are added to the
        accumulator (``widens_microbatch_gradients``): half the float32 bytes beside the
        accumulator (XLA:CPU, measured in the HLO of bf16-mixed scanned encoders and GPTs,
        every remat policy: bf16 stacked gradients, float32 accumulator; dev rows 752 -> 754
        of 800, +12.8 / +10.2 % -> +4.8 / +6.4 %, 16 more rows +4 .. +9 % -> -3 .. +4 %, none
        lost; fresh scanned rows, dp and one device, 2 and 4 microbatches, +6 .. +13 % ->
        +0 .. +5 %; under fsdp the ZeRO-split stack gradients are bf16 too, a fresh remat-full
        GPT going -7.9 -> -12.4 % from activations counted short elsewhere). Not without
        microbatches (dev rows went 752 -> 740 with it there).
      rounds_scanned_float32_in_microbatches: a scanned GPT (tied table, > 1 layer), 16-bit
        compute, microbatches: the rounded copies are float32, made before the loop (the tied
        table's twice: lookup and transposed head layouts), and beside the accumulator only
        the gradients outside the stack (with the table's two) are float32 (XLA:CPU: table 6x,
        stack 3.5x its float32 bytes; fresh GPTs d192/384, 2/5 layers, 2/4 microbatches,
        remat minimal/full: -10..-25 % -> -2..+8 %). Not FSDP (whole gathered tables).
      recomputed_scores_under_16bit: the same recomputation under 16-bit compute (bf16-mixed:
        XLA:CPU computes in float32 buffers), where it holds, beside the blocks' saved values
        (each block's float32 softmax-sized value counted), one recomputed ``B x H x L x L``
        float32 scores buffer (not two) and two float32 values as wide as the block's MLP
        hidden layer (made at the microbatch body's start, held to the backward) (XLA:CPU,
        measured on bf16-mixed GPTs seq 512, 2 microbatches: d96 h2 mlp2 1/4 layers 8
        sequences a microbatch -19/-14 % -> -9/-10 %; d128 h8 mlp2 16 sequences 1/2 layers
        -8/-7 % -> -4/-5 %, 2..4 sequences unchanged; d128/d256 h4 mlp4 1/3 layers under
        minimal -13 .. -23 % -> -6 .. -7 %; the float32 rule's two scores went
        +16 .. +33 % on the h8 probes; dev rows 752 -> 753 of 800, -10.1 -> -7.0 % and
        -12.4 -> -10.5 %, none lost). A remaining -2..-3 % a layer under the undone policy
        (normalised values recomputed beside the forward's) is not counted.
      regathers_conv_kernels: under FSDP, a Python-loop CNN's backward all-gathers each
        ZeRO-split convolution kernel again for its input gradient (the transposed
        convolution; not the images' convolutions, which make none), and XLA schedules these
        all-gathers with the forward's at the step's start, so in the first block's forward
        each such kernel is whole twice in float32 (the forward's relayout copy, the
        backward's transposed copy), the largest three times (its all-gather output beside
        its copy) (XLA:CPU, measured on fsdp8 CNNs whose kernels outweigh the first block's
        activations: a 3->32->64->128 CNN at 32x32, 2 images a device, bf16-mixed: the
        3x3x64x128 kernel held three times, 3x3x32x64 twice, beside the first conv's output;
        -22.7 -> -9.4 %; fresh 16x16 CNNs 3->64->128 and 3->32->128->128, 2 images a device:
        -24 .. -31 % -> -1 .. -11 %; separable ones unchanged (small pointwise kernels)). A
        moment of its own: once the forward's copies are dead the backward holds one each
        (counting them in the backward's moments: dev rows 935 -> 934 of 1000).
      tied_head_gradient_after_loss: a float32 Python-loop model on one device whose
        largest parameter is a token table tied to the LM head: the head's matmul makes the
        table's gradient from the logits' gradient once the loss's other values are dead, so
        no gradient is alive where the loss gradient is made, and the table's gradient is a
        moment of its own (XLA:CPU: fresh 2-3 layer GPTs, vocabulary 16384-32000, +12 .. +34 %
        -> within 1 %; dev rows +13.9 -> -2.7 %, 20 more closer). Not under a batch or tensor
        split (dp/tp rows went -0.1 -> -5.2 %, -6.0 -> -10.0 %).
      holds_loop_block_gradients: optimizers whose updates (float32 layers, one device, no
        microbatches) wait while a Python-loop transformer's block backward runs (a one-layer
        scan compiles as a loop): a block's two MLP kernel gradients held beside the largest
        gradient outside the blocks (XLA:CPU: 4..10 d^2 floats whatever the depth; fresh
        one-layer d640 scans -14..-28 % -> -4.5..+3.6 %, a 3-layer loop -10.7 -> -0.3 %).
      forward_broadcasts_in_float32: under FSDP, a float32 Python-loop CNN's first block's
        forward holds its convolution's output three times (the output, the ReLU's input, the
        ReLU's zeros broadcast to its shape) beside the ReLU and pooling fusions' constants
        broadcast whole at the start (one buffer a distinct shape), the images, the batch's
        microbatch-major copy and every kernel gathered twice (``regathers_conv_kernels``);
        under remat full only the recomputed output, unless the first convolution has 16
        output channels or fewer (then recomputed at once beside it). XLA:CPU, fsdp8 CNNs:
        four dev rows -15 .. -24 % -> within 7 %, fresh 32x32 CNNs -5 .. -13 % -> +2 .. -4 %.
        Not under 16-bit compute (no broadcasts there).
      pads_pooling_gradient: under 16-bit compute where an undone remat recomputes a
        convolution (``full``), a conv block's 2x2 pooling backward pads the incoming
        gradient into a float32 ``B x (S+1) x (S+1) x C`` buffer beside the float32 pooling
        gradient and the kept float32 convolution output (``Block.pool_workspace``, a moment
        of its own), and the later blocks' saved values are freed once their backward is
        done (XLA:CPU buffer assignments, e.g. ``f32[2,33,33,32]`` beside two
        ``f32[2,32,32,32]``; dev rows 10 fixed, separable CNNs -21 .. -26 % -> about -5 %;
        four image-256/separable-dp rows +0..+3 % -> -11..-13 %: the heap places the 16-bit
        ReLU gradient above the float32 buffers there, not modelled). Not in float32 layers
        (+12..+49 % there), nor under ``none``/``dots`` (``pools_before_kernel_gradient``).
      places_16bit_relu_gradient_above: with ``pads_pooling_gradient``, no microbatches, two
        conv blocks or more: XLA's heap places a block's 16-bit ReLU gradient above its
        pooling backward's float32 buffers, so the total exceeds the live peak by it (XLA:CPU,
        six bf16 remat-full dev rows: the gap is the first block's conv output in bf16 within
        0.1-1.6 %; fresh 64x64 CNNs -8..-12 % -> +1..+4 %; not one block, not microbatches).
      pools_before_kernel_gradient: under ``keeps_rounded_under_16bit`` (16-bit compute, no
        undone remat recomputing a convolution), a conv block's widest backward moment comes
        before its kernel's gradient: its pooling's backward (the float32 ``B x (S+1)^2 x C``
        padded gradient beside the float32 pooling gradient and the kept 16-bit ReLU input) or
        its ReLU's (the ReLU gradient's float32 copy and its transposed copy beside the input
        gradient, the 16-bit ReLU gradient and the ReLU input it was written over dead); the
        values kept outside the blocks (the pooled features) are dead by then. On a single
        device without microbatches the later blocks' gradients are applied and the block's
        own is not made yet (no gradient held), and the convolutions read float32 rounded
        copies of their kernels, made at the step's start: the forward's, dead after its
        convolution, and, for every block but the first, a transposed one for the input
        gradient, held until that block's backward (no 16-bit parameter copies); so the first
        block's forward, with every later kernel twice in float32, is a moment of its own
        (XLA:CPU, measured in the buffer assignment: 32x32 [32,128] dots adamw batch 2:
        ``f32[2,17,17,128]``, ``f32[2,16,16,128]``, ``bf16[2,16,16,128]`` at the peak, the
        ``f32[3,3,128,32]`` transposed kernel held from the forward; 32x32 [48,96,32] batch 1:
        the peak in block 0's forward with ``f32[3,3,48,96]`` and ``f32[3,3,96,48]``, both
        made at the start; dev rows 1046 -> 1050 of 1100 (+20.0, +12.7, +11.3, +10.0 % ->
        -0.4, -7.5, 0.0, 0.0 %), 64 rows changed, mean |error| 3.4 -> 1.4 %, none lost; fresh
        32x32 [48,96,32] none/dots batch 1/4 and 64x64 [32,64] dots sgd/lion, separable or
        not, batch 1/8: all within 0.2 % (-5.5 .. +14.7 % without it); a batch-2 variant
        -3.9 %: its live peak exact, the rest heap packing).
      rounds_tensor_split_operands: 16-bit compute with a tensor axis: a block keeps its MLP
        matmuls' operands (the second norm's output, the MLP activation) rounded to 16 bits
        (XLA:CPU, tp loop encoders d192: +0.94 MiB a layer counted in float32, +10 % -> +4 %;
        the 47 bf16 tensor-axis dev rows: mean error +2.9 % -> -1.4 %, four fixed).

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
    holds_outside_gradient: bool = False
    slices_sharded_convs: bool = False
    widens_microbatch_gradients: bool = False
    gradient_over_undone_remat: bool = False
    frees_saved_under_16bit: bool = False
    keeps_rounded_under_16bit: bool = False
    pools_before_kernel_gradient: bool = False
    copies_microbatch_split: bool = False
    frees_saved_in_microbatch_remat: bool = False
    copies_largest_gradient: tuple[str, ...] = ()
    tied_head_gradient_after_loss: bool = False
    copies_chain_kernels_at_entry: tuple[str, ...] = ()
    copies_state_at_entry: tuple[str, ...] = ()
    copies_state_with_microbatches: tuple[str, ...] = ()
    copies_parameters_at_entry: tuple[str, ...] = ()
    all_reduces_zero_gradients: bool = False
    updates_stack_first: bool = False
    gathers_lm_head: bool = False
    fuses_outer_product_gradients: bool = False
    keeps_one_example_batched_dots: bool = False
    loop_batched_dot_rows: int = 0
    keeps_one_head_batched_dots: bool = False
    scan_residuals_by_policy: bool = False
    except_shares_stream: bool = False
    keeps_reduced_matmul_outputs: bool = False
    accumulates_float32_in_place: bool = False
    one_pass_frozen_head_loss: bool = False
    float32_loop_copies: bool = False
    stack_gradients_in_loop: bool = False
    loop_whole_gradients: bool = False
    slices_scanned_layer: bool = False
    float32_chain_copies: bool = False
    chain_head_gradient_first: bool = False
    dots_chain_rereads: bool = False
    widens_rounded_chain_at_entry: bool = False
    widens_into_state: tuple[str, ...] = ()
    rereads_state_copies_with_microbatches: tuple[str, ...] = ()
    scatters_lookup_gradients: bool = False
    regathers_microbatch_weights: bool = False
    regathers_frozen_tied_head: bool = False
    regathers_remat_weights: bool = False
    copies_scanned_operands: bool = False
    copies_scanned_operands_without_remat: bool = False
    remat_past_reduction_rows: int = 0
    copies_scanned_16bit_state: tuple[str, ...] = ()
    copies_gathered_head_in_microbatch: bool = False
    reduces_tied_gradients_apart: bool = False
    scatters_sharded_lookup_gradients: bool = False
    looks_up_split_tables_unrounded: bool = False
    dense_depthwise_gradient: bool = False
    masks_depthwise_late_under_16bit: bool = False
    recomputed_scores_rows: int = 0
    splits_scanned_lookup_gradient: bool = False
    scan_gradients_16bit_in_microbatches: bool = False
    rounds_scanned_float32_in_microbatches: bool = False
    recomputed_scores_under_16bit: bool = False
    regathers_conv_kernels: bool = False
    forward_broadcasts_in_float32: bool = False
    pads_pooling_gradient: bool = False
    places_16bit_relu_gradient_above: bool = False
    shares_loop_norm_values: bool = False
    holds_loop_block_gradients: tuple[str, ...] = ()
    rounds_tensor_split_operands: bool = False


BACKENDS: dict[str, Backend] = {
    "cpu": Backend(float32_compute=True, loop_remat=False, shares_loop_backward=True,
                   scan_remat_stages=True, combines_all_reduces=True, holds_outside_gradient=True,
                   widens_microbatch_gradients=True, gradient_over_undone_remat=True,
                   frees_saved_under_16bit=True, keeps_rounded_under_16bit=True,
                   pools_before_kernel_gradient=True,
                   copies_microbatch_split=True, frees_saved_in_microbatch_remat=True,
                   copies_largest_gradient=("lion",),
                   all_reduces_zero_gradients=True, updates_stack_first=True,
                   gathers_lm_head=True,
                   fuses_outer_product_gradients=True, keeps_one_example_batched_dots=True,
                   loop_batched_dot_rows=4096, keeps_one_head_batched_dots=True,
                   scan_residuals_by_policy=True,
                   except_shares_stream=True,
                   keeps_reduced_matmul_outputs=True, accumulates_float32_in_place=True,
                   copies_chain_kernels_at_entry=("adamw",), copies_state_at_entry=("lion",),
                   copies_parameters_at_entry=("sgd",),
                   copies_state_with_microbatches=("lion",),
                   one_pass_frozen_head_loss=True,
                   float32_loop_copies=True, loop_whole_gradients=True,
                   slices_scanned_layer=True, float32_chain_copies=True,
                   chain_head_gradient_first=True, widens_into_state=("lion",),
                   rereads_state_copies_with_microbatches=("lion",),
                   dots_chain_rereads=True, widens_rounded_chain_at_entry=True,
                   scatters_lookup_gradients=True, regathers_microbatch_weights=True,
                   regathers_frozen_tied_head=True, regathers_remat_weights=True,
                   copies_scanned_operands=True, copies_scanned_operands_without_remat=True,
                   remat_past_reduction_rows=4096,
                   copies_scanned_16bit_state=("lion",),
                   copies_gathered_head_in_microbatch=True, reduces_tied_gradients_apart=True,
                   scatters_sharded_lookup_gradients=True,
                   looks_up_split_tables_unrounded=True, dense_depthwise_gradient=True,
                   masks_depthwise_late_under_16bit=True, recomputed_scores_rows=4096,
                   splits_scanned_lookup_gradient=True,
                   scan_gradients_16bit_in_microbatches=True,
                   rounds_scanned_float32_in_microbatches=True,
                   recomputed_scores_under_16bit=True, regathers_conv_kernels=True,
                   forward_broadcasts_in_float32=True,
                   pads_pooling_gradient=True, places_16bit_relu_gradient_above=True,
                   tied_head_gradient_after_loss=True, shares_loop_norm_values=True,
                   holds_loop_block_gradients=("sgd", "adamw", "lion"),
                   rounds_tensor_split_operands=True),
    "gpu": Backend(),
    "tpu": Backend(tiles=True, fuses_loss_gradient=True, fuses_matmul_operands=True,
                   fuses_softmax_recompute=True,
                   fuses_gradient_update=True, narrows_matmul_operands=True,
                   accumulates_in_place=True, frees_outside_first=True,
                   frees_saved_in_backward=True, recomputes_by_stage=True,
                   slices_sharded_convs=True, stack_gradients_in_loop=True),
}
