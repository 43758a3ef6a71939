"""What a training step costs, in estimated seconds per device: :func:`step_cost`.

The planner (``jaxmem.plan``) ranks configurations that fit by this explicit model, built from
the same shape formulas as the memory estimate and the target device's published figures
(:data:`SPECS`). Per device, for a global batch B in m microbatches::

    compute     = (3 x forward FLOPs + recomputed FLOPs) / devices / (peak x dtype rate)
    collectives = bytes each device sends / link bandwidth, per mesh axis (ring: 2(n-1)/n of
                  the data for an all-reduce, (n-1)/n for an all-gather or reduce-scatter):
                  data: gradients all-reduced once per step;
                  fsdp: weights all-gathered in the forward and again in the backward, and
                        gradients reduce-scattered, once per microbatch;
                  tensor: the block output all-reduced twice per block in the forward, twice
                        in the backward, and again where the backward recomputes the block
    host        = (offloaded optimizer state + offloaded activations) x 2 / host bandwidth
    update      = optimizer traffic (read parameters, gradients, state; write parameters and
                  state) / HBM bandwidth
    weights     = 3 reads of the compute-dtype weights per microbatch (forward, both backward
                  matmuls) / HBM bandwidth
    seconds     = the sum (nothing overlapped: an upper bound a real step beats by overlapping
                  collectives with compute); per sample = seconds / B

FLOPs count matmuls and convolutions (2 per multiply-add; the backward twice the forward);
recomputation is what the remat policy's backward computes again (``anatomy.recomputation``).
It is a model for ranking, not a prediction of step time; ``jaxmem run --mode run`` measures.

Example:
  >>> from jaxmem.config import Config
  >>> from jaxmem.cost import step_cost
  >>> c = step_cost(Config())
  >>> c.seconds == sum(c.parts.values())
  True
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any

import jax
import numpy as np

from jaxmem.backends import BACKENDS, Backend
from jaxmem.block_memory import saveable as policy_saveable
from jaxmem.config import Config
from jaxmem.estimate import Estimate, estimate, mesh_shape
from jaxmem.models.anatomy import Anatomy, recomputation, saved
from jaxmem.models.stack import nested_group_size
from jaxmem.setup import Setup, as_setup


@dataclasses.dataclass(frozen=True)
class DeviceSpec:
    """Published figures of one device model.

    Attributes:
      name: the device.
      flops: peak dense bf16 FLOP/s.
      hbm: memory bandwidth, bytes/s.
      link: interconnect bandwidth per device, one direction, bytes/s (ICI; NVLink).
      network: between nodes, per device, bytes/s (None: one fast domain).
      host: device <-> host memory, bytes/s.
      float32_rate: float32 matmul speed relative to ``flops``.
      source: where the figures come from.
    """

    name: str
    flops: float
    hbm: float
    link: float
    network: float | None
    host: float
    float32_rate: float
    source: str


_TPU_DOCS = ("Cloud TPU documentation (peak bf16, HBM bandwidth; link: pod all-reduce "
             "bandwidth / pod chips, or half the bidirectional ICI per chip); host: PCIe "
             "x16, assumed; float32 matmuls at JAX's default precision run as bf16 passes")
_NVIDIA = ("NVIDIA datasheets (dense bf16, HBM, NVLink per direction); network: one "
           "InfiniBand NIC per GPU, assumed; host: PCIe x16; float32 matmuls as TF32 (JAX's "
           "default precision on GPUs)")

#: device model -> figures (``jaxmem.targets`` names: tpu versions, gpu kinds, ``cpu``)
SPECS: dict[str, DeviceSpec] = {
    "v4": DeviceSpec("TPU v4", 275e12, 1200e9, 1.1e15 / 4096, None, 32e9, 1.0, _TPU_DOCS),
    "v5e": DeviceSpec("TPU v5e", 197e12, 819e9, 51.2e12 / 256, None, 32e9, 1.0, _TPU_DOCS),
    "v5p": DeviceSpec("TPU v5p", 459e12, 2765e9, 600e9, None, 32e9, 1.0, _TPU_DOCS),
    "v6e": DeviceSpec("TPU v6e", 918e12, 1638e9, 102.4e12 / 256, None, 64e9, 1.0, _TPU_DOCS),
    "a100-40": DeviceSpec("A100 40GB", 312e12, 1555e9, 300e9, 25e9, 32e9, 0.5, _NVIDIA),
    "a100-80": DeviceSpec("A100 80GB", 312e12, 2039e9, 300e9, 25e9, 32e9, 0.5, _NVIDIA),
    "h100": DeviceSpec("H100 SXM", 989e12, 3350e9, 450e9, 50e9, 64e9, 0.5, _NVIDIA),
    "h200": DeviceSpec("H200 SXM", 989e12, 4800e9, 450e9, 50e9, 64e9, 0.5, _NVIDIA),
    "cpu": DeviceSpec("CPU (nominal)", 1e12, 100e9, 100e9, None, 100e9, 1.0,
                      "nominal figures: XLA:CPU devices model no real machine, so costs on a "
                      "cpu target only rank configurations against each other"),
}

#: ``device_kind`` strings of attached devices -> a :data:`SPECS` key
_DEVICE_KINDS = (("v5 lite", "v5e"), ("v5e", "v5e"), ("v5p", "v5p"), ("v5", "v5p"),
                 ("v6", "v6e"), ("v4", "v4"), ("h200", "h200"), ("h100", "h100"),
                 ("a100", "a100-80"), ("cpu", "cpu"))


def device_spec(setup: Setup) -> DeviceSpec:
    """The figures of the target's device model (the attached device's, for ``local``; a
    device jaxmem has no figures for gets the nominal CPU ones, named as such)."""
    chip = setup.target.chip
    if chip is None:
        kind = jax.devices()[0].device_kind.lower()
        chip = next((key for pattern, key in _DEVICE_KINDS if pattern in kind), "cpu")
    return SPECS.get(chip, SPECS["cpu"])


@dataclasses.dataclass(frozen=True)
class Cost:
    """The estimated cost of one step on one device.

    Attributes:
      flops: FLOPs per device, recomputation included.
      recompute_flops: of those, the recomputation's.
      parts: seconds by part (``compute``, ``collectives``, ``host``, ``update``,
        ``weights``).
      seconds: their sum.
      batch: the global batch the step processes.
      device: the device figures used.
      devices_used: devices the step runs on.
    """

    flops: float
    recompute_flops: float
    parts: dict[str, float]
    seconds: float
    batch: int
    device: str
    devices_used: int = 1

    @property
    def per_sample(self) -> float:
        """Estimated seconds per example of the global batch."""
        return self.seconds / self.batch

    @property
    def flops_per_sample(self) -> float:
        """FLOPs per example, over all devices."""
        return self.flops * self.devices_used / self.batch

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "per_sample_seconds": self.per_sample,
                "flops": self.flops, "recompute_flops": self.recompute_flops,
                "flops_per_sample": self.flops_per_sample, "parts": dict(self.parts),
                "device": self.device}


def _recompute_flops(anatomy: Anatomy, setup: Setup, backend: Backend) -> int:
    """FLOPs the backward computes again under the remat policy (one microbatch)."""
    c, policy = setup.config, setup.remat
    if not policy.checkpoint or not (backend.loop_remat or anatomy.scanned):
        return anatomy.outside_recompute_flops
    keep = policy_saveable(policy)
    total = anatomy.outside_recompute_flops
    for block in anatomy.blocks:
        redo = sum(t.flops for t in recomputation(block, saved(block, keep)))
        checkpointed = math.ceil(block.count / c.remat.every)
        total += checkpointed * redo
        if c.remat.nested and block.count > 1 and nested_group_size(block.count):
            total += block.count * block.flops()  # the outer level recomputes every block
    return total


def _axis_bandwidth(spec: DeviceSpec, shape: dict[str, int], axis: str,
                    per_node: int | None) -> float:
    """Bandwidth of collectives over ``axis``: the network when the devices it spans (it and
    the axes inside it, in the mesh's order) cross a node."""
    names = list(shape)
    span = math.prod(shape[a] for a in names[names.index(axis):])
    if per_node is not None and spec.network is not None and span > per_node:
        return spec.network
    return spec.link


def step_cost(config: Config | Setup, est: Estimate | None = None) -> Cost:
    """The step's estimated seconds per device by the model in this module's docstring.

    Args:
      config: a training configuration (or its resolved Setup).
      est: its memory estimate, if already computed (parameter, state and offload bytes).
    """
    setup = as_setup(config)
    c = setup.config
    est = est or estimate(setup)
    spec = device_spec(setup)
    shape = mesh_shape(setup)
    devices = math.prod(shape.values())
    m = c.data.microbatches
    micro = c.data.batch_size // m
    anatomy = c.model.anatomy(setup.build_options, micro)
    backend = BACKENDS.get(setup.target.platform(), Backend())
    if anatomy is None:  # no shape formulas: the compiled FLOPs are unknown here
        raise ValueError(f"model kind {c.model.kind!r} has no shape formulas to cost")
    forward = anatomy.forward_flops()
    redo = _recompute_flops(anatomy, setup, backend)
    flops = m * (3 * forward + redo) / devices
    compute_dtype = np.dtype(setup.precision.compute_dtype)
    rate = spec.float32_rate if compute_dtype.itemsize >= 4 else 1.0

    params = est.term("parameters")  # per device, storage dtype
    param_item = np.dtype(setup.precision.param_dtype).itemsize
    trainable = params * _trainable_fraction(anatomy, setup)
    state = est.term("optimizer state") or est.term("optimizer state (host)")
    d, f, t = shape.get("data", 1), shape.get("fsdp", 1), shape.get("tensor", 1)
    compute_copy = params * compute_dtype.itemsize / param_item  # the local shard, compute dtype
    sent = 0.0  # seconds in collectives
    if d > 1:
        sent += 2 * (d - 1) / d * trainable / _axis_bandwidth(spec, shape, "data",
                                                              setup.target.per_node)
    if f > 1:
        gathered = compute_copy * f  # the whole (tensor-split) weights, compute dtype
        per_micro = 2 * (f - 1) / f * gathered + (f - 1) / f * trainable * f
        sent += m * per_micro / _axis_bandwidth(spec, shape, "fsdp", setup.target.per_node)
    if t > 1 and anatomy.blocks:
        ways = shape.get("data", 1) * shape.get("fsdp", 1)
        stream = sum(math.prod(b.values[0].shape) // ways * compute_dtype.itemsize * b.count
                     for b in anatomy.blocks)
        again = 2 if setup.remat.checkpoint else 0
        sent += m * (4 + again) * 2 * (t - 1) / t * stream / _axis_bandwidth(
            spec, shape, "tensor", setup.target.per_node)
    offloaded = est.term("offloaded activations (host)")
    host_bytes = 2 * (est.term("optimizer state (host)") + m * offloaded)
    parts = {
        "compute": flops / (spec.flops * rate),
        "collectives": sent,
        "host": host_bytes / spec.host,
        "update": (2 * params + trainable + 2 * state) / spec.hbm,
        "weights": m * 3 * compute_copy * f / spec.hbm,
    }
    return Cost(flops, m * redo / devices, parts, sum(parts.values()), c.data.batch_size,
                spec.name, devices)


def _trainable_fraction(anatomy: Anatomy, setup: Setup) -> float:
    frozen = setup.freeze_patterns
    if not frozen:
        return 1.0
    sizes = [(p, math.prod(s)) for p, s in anatomy.params]
    total = sum(n for _, n in sizes) or 1
    return sum(n for p, n in sizes if not any(fnmatch.fnmatchcase(p, q) for q in frozen)) / total


