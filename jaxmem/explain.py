"""What is live at a compiled step's peak, and where it comes from (source ``compiled``).

XLA is asked to write its plan of the module (``xla_dump_to`` in the compile options, for this
compile only) and :mod:`jaxmem._xla_dump` reads it back: the program order with loop bodies
flattened into it, every buffer's live range and size, and each instruction's JAX ``op_name``
and Python call chain. From these, per device:

* **timeline**: the bytes of device memory live at each position of the program order. Values
  that share memory (an in-place update, a loop's carried buffer and its body's parameter)
  occupy one slot and count once. Sizes are XLA's buffer sizes, so layout padding (TPU tiles)
  is included. Only the device's main memory counts (HBM; on TPU, on-chip VMEM/SMEM and
  thread-local scalars are left out and reported as ``other_memory_bytes``). Loop bodies'
  working sets are counted where the body runs, unlike XLA:CPU's ``peak_memory_in_bytes``.
* **peak**: the timeline's maximum and where it is (the instruction, its ``op_name``, and the
  loop whose body holds it); the buffers live there, largest first, sum to it exactly.
* **category** of each buffer: an argument's role (parameter, model state, optimizer state,
  batch, kv cache, or plain ``argument``) read from its ``args[k]`` path; ``output`` for
  results not written into an argument; ``saved activation`` for a forward-pass value (its
  ``op_name`` has ``jvp(``) whose last use is in the backward pass (``transpose(``, or inside
  a backward loop); ``gradient`` for a backward-pass value shaped like a parameter;
  ``workspace`` for the rest. The names are heuristics read from JAX's ``op_name``s.
* **source**: the innermost Python frame outside jax/flax/optax and jaxmem's helpers; for a
  value a loop stacks (scan residuals) or returns, the frame of the operation that made it.
  ``checkpoint_name``: the name a jaxpr ``checkpoint_name`` gave the value made on that line.

Example:
  >>> import jax, jax.numpy as jnp
  >>> import jaxmem
  >>> x = jax.ShapeDtypeStruct((256, 256), jnp.float32)
  >>> e = jaxmem.explain(lambda a: jnp.tanh(a @ a) @ a, x)
  >>> sum(b.bytes for b in e.buffers) == e.peak_bytes
  True
"""

from __future__ import annotations

import collections
import dataclasses
import re
import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import jax

from jaxmem._xla_dump import Dump, Instruction, Value, instruction_of
from jaxmem.analytic import jaxpr_checkpoint_names, user_frame
from jaxmem.compiled import MemoryReport

#: argument roles, by the attribute of a Program that holds the argument
ROLES = {"params": "parameter", "rest": "model state", "opt_state": "optimizer state",
         "batch": "batch", "cache": "kv cache"}
CATEGORIES = ("parameter", "model state", "optimizer state", "batch", "kv cache", "argument",
              "saved activation", "gradient", "workspace", "output")
_ARG = re.compile(r"^args\[(\d+)\]")
_DTYPE_SHAPE = re.compile(r"^(\w+)\[([\d,]*)\]")


@dataclasses.dataclass(frozen=True)
class Buffer:
    """One buffer live at the peak, per device.

    Attributes:
      bytes: its size on the device (XLA's, padding included).
      shape, dtype: the per-device array (``()`` for a tuple's index table).
      category: see the module docstring.
      hlo_op: the opcode of the HLO instruction that defines it (``fusion``, ``parameter``...).
      hlo_name: that instruction's name.
      op_name: the JAX operation (``jit(step)/jvp()/while/body/dot_general``) or argument path.
      source: ``file:line`` of the innermost frame outside jax/flax/optax, "" if unknown.
      checkpoint_name: the ``checkpoint_name`` its value carries, where one is known.
      live: first and last position in the program order.
    """

    bytes: int
    shape: tuple[int, ...]
    dtype: str
    category: str
    hlo_op: str
    hlo_name: str
    op_name: str
    source: str
    checkpoint_name: str | None
    live: tuple[int, int]

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["shape"], out["live"] = list(self.shape), list(self.live)
        return out


@dataclasses.dataclass(frozen=True)
class Explanation:
    """A compiled step's peak, per device, and what makes it up.

    Attributes:
      name: the configuration (or function) explained.
      platform, device_kind: what it was compiled for.
      peak_bytes: the most device memory live at once (see the module docstring).
      peak_index: where, in the program order; ``peak_instruction`` and ``peak_op_name``
        name the instruction, ``peak_loop`` the loop whose body it is in (None: outside).
      buffers: every buffer live at the peak, largest first; their bytes sum to the peak.
      by_category, by_source: bytes at the peak by category and by source (``file:line``,
        or the argument's role for arguments).
      timeline: device bytes live at each position of the program order.
      loops: ``(op_name, first, last)`` positions of each loop body in the program order.
      other_memory_bytes: bytes at the peak in other memory spaces (on-chip), not counted.
      xla_live_range_peak_bytes: the peak XLA printed in its live-range dump, for reference.
      compiled: the same compile's ``memory_analysis()`` (:class:`~jaxmem.MemoryReport`
        fields, per device), to hold the peak against.
    """

    name: str
    platform: str
    device_kind: str
    peak_bytes: int
    peak_index: int
    peak_instruction: str
    peak_op_name: str
    peak_loop: str | None
    buffers: tuple[Buffer, ...]
    by_category: dict[str, int]
    by_source: dict[str, int]
    timeline: tuple[int, ...]
    loops: tuple[tuple[str, int, int], ...]
    other_memory_bytes: int
    xla_live_range_peak_bytes: int
    compiled: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self, top: int | None = None) -> dict[str, Any]:
        """JSON-ready; ``top`` keeps the largest buffers only (the totals keep them all)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["buffers"] = [b.to_dict() for b in self.buffers[:top]]
        out["timeline"] = list(self.timeline)
        out["loops"] = [list(x) for x in self.loops]
        return out


def explain(fn: Callable[..., Any], *args: Any, name: str | None = None,
            roles: Mapping[int, str] | None = None,
            checkpoint_names: Mapping[tuple[str, int], str] | None = None,
            **kwargs: Any) -> Explanation:
    """Compiles ``fn`` for ``args`` (arrays or ShapeDtypeStructs) and explains its peak.

    ``fn`` is wrapped in ``jax.jit`` unless it already is. ``roles`` names the category of
    positional argument ``k`` (default ``argument``); ``checkpoint_names`` maps a source
    ``(file, line)`` to the checkpoint name of the value made there.
    """
    jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
    lowered = jitted.lower(*args, **kwargs)
    with tempfile.TemporaryDirectory(prefix="jaxmem-explain-") as tmp:
        compiled = lowered.compile(compiler_options={"xla_dump_to": tmp})
        dump = Dump.read(tmp)
    report = MemoryReport.from_compiled(compiled, lower_seconds=0.0, compile_seconds=0.0)
    e = from_dump(dump, name or getattr(fn, "__name__", "fn"), report.platform,
                  report.device_kind, roles or {}, checkpoint_names or {})
    keep = ("argument_bytes", "output_bytes", "alias_bytes", "temp_bytes", "peak_bytes",
            "total_bytes")
    figures = report.to_dict()
    return dataclasses.replace(e, compiled={k: figures[k] for k in keep})


def _shape(value: Value) -> tuple[tuple[int, ...], str]:
    m = _DTYPE_SHAPE.match(value.shape)
    if not m:
        return (), "tuple"
    return tuple(int(d) for d in m.group(2).split(",") if d), m.group(1)


def source_of(frames: tuple[tuple[str, int], ...]) -> str:
    """``file:line`` of the innermost frame outside the libraries, shortened."""
    if (frame := user_frame(frames)) is None:
        return ""
    file, line = frame
    if "/jaxmem/" in file:
        file = "jaxmem/" + file.rsplit("/jaxmem/", 1)[1]
    return f"{file}:{line}"


def _producer(dump: Dump, buffer: str) -> Instruction:
    """The instruction that made a buffer's value: through a loop's output (the body's result)
    and a loop's stacking (a dynamic-update-slice's update operand)."""
    name, index = instruction_of(buffer), buffer[len(instruction_of(buffer)):]
    instr = dump.instructions.get(name, _NONE)
    for _ in range(8):
        if instr.opcode == "while" and index not in ("", "{}") and instr.name in dump.bodies:
            root = dump.instructions.get(dump.roots.get(dump.bodies[instr.name], ""), _NONE)
            k = int(index.strip("{}").split(",")[0])
            if root.opcode != "tuple" or k >= len(root.operands):
                return instr
            instr, index = dump.instructions.get(root.operands[k], _NONE), ""
        elif instr.op_name.endswith("dynamic_update_slice"):
            return _update_of(dump, instr) or instr
        else:
            return instr
    return instr


def _passes_through(op: Instruction) -> bool:
    """Ops that reshape a loop's slice on its way into the stack, not the ones that make it."""
    return ("dynamic_update_index_in_dim" in op.op_name
            or (op.opcode in ("bitcast", "reshape", "copy", "convert") and not op.frames))


def _update_of(dump: Dump, instr: Instruction) -> Instruction | None:
    """The value a dynamic-update-slice writes, looking inside a fusion when it is one."""
    if instr.opcode == "dynamic-update-slice":
        op = dump.instructions.get(instr.operands[1]) if len(instr.operands) > 1 else None
        if op is not None and op.opcode == "parameter" and op.parameter >= 0:
            return None  # a fusion's parameter: the caller resolves it
        return op if op is not None and op.frames else None
    if instr.opcode == "fusion" and instr.calls:
        inner = [i for i in dump.instructions.values()
                 if i.computation == instr.calls and i.opcode == "dynamic-update-slice"]
        for dus in inner:
            op = dump.instructions.get(dus.operands[1]) if len(dus.operands) > 1 else None
            while op is not None and op.operands and _passes_through(op):
                op = dump.instructions.get(op.operands[0])
            if op is None:
                continue
            if op.opcode == "parameter" and 0 <= op.parameter < len(instr.operands):
                outer = dump.instructions.get(instr.operands[op.parameter])
                if outer is not None and outer.frames:
                    return outer
            elif op.frames:
                return op
    for operand in instr.operands:
        op = dump.instructions.get(operand)
        if (op is not None and op.shape != instr.shape and op.frames
                and not op.op_name.endswith("dynamic_update_slice")):
            return op
    return None


def _attribution(dump: Dump, members: list[tuple[int, int, Value]]) -> Instruction:
    """Of the values sharing one slot, the one that says where the memory's content was made:
    an argument's parameter; else a value a loop stacked or returned, traced to its maker; else
    the earliest made value with a known source."""
    made = []
    for _, _, value in sorted(members, key=lambda m: m[0]):
        own = dump.instructions.get(instruction_of(value.name), _NONE)
        if value.allocation == "parameter" and own.opcode == "parameter":
            return own
        made.append((own, _producer(dump, value.name)))
    for own, maker in made:
        if maker is not own and source_of(maker.frames):
            return maker
    for _own, maker in made:
        if source_of(maker.frames):
            return maker
    return made[0][1] if made else _NONE


def _slots(dump: Dump, length: int) -> dict[tuple[int, int], list[tuple[int, int, Value]]]:
    """Device-memory values grouped by the memory they occupy, with their live ranges
    (arguments' held for the whole step)."""
    slots: dict[tuple[int, int], list[tuple[int, int, Value]]] = collections.defaultdict(list)
    for key, (start, end) in dump.ranges.items():
        value = dump.values.get(key)
        if value is not None and value.in_device_memory:
            slots[value.slot].append((start, end, value))
    return {slot: _held(members, length) for slot, members in slots.items()}


def _held(members: list[tuple[int, int, Value]], length: int) -> list[tuple[int, int, Value]]:
    """An argument's buffer is the caller's: it is held for the whole step, whatever the live
    ranges of the values in it say."""
    if any(v.allocation == "parameter" for _, _, v in members):
        return [(0, max(length - 1, e), v) for _, e, v in members]
    return members


def _timeline(slots, length: int) -> list[int]:
    delta = [0] * (length + 2)
    for members in slots.values():
        members = sorted(members, key=lambda m: m[0])
        start, end, size = members[0][0], members[0][1], members[0][2].bytes
        for s, e, v in members[1:]:
            if s > end:  # a gap: the slot is free in between
                delta[start] += size
                delta[end + 1] -= size
                start, end, size = s, e, v.bytes
            else:
                end, size = max(end, e), max(size, v.bytes)
        delta[start] += size
        delta[end + 1] -= size
    out, running = [], 0
    for d in delta[:length]:
        running += d
        out.append(running)
    return out


def from_dump(dump: Dump, name: str, platform: str, device_kind: str,
              roles: Mapping[int, str],
              checkpoint_names: Mapping[tuple[str, int], str]) -> Explanation:
    """The explanation of a parsed dump (see :func:`explain`)."""
    length = max(len(dump.sequence), max((e for _, e in dump.ranges.values()), default=-1) + 1)
    slots = _slots(dump, length)
    timeline = _timeline(slots, length)
    peak_index = max(range(length), key=timeline.__getitem__) if length else 0
    param_shapes = {_shape(v) for v in dump.values.values()
                    if (i := dump.instructions.get(instruction_of(v.name), _NONE)).opcode
                    == "parameter" and v.allocation == "parameter"
                    and _role(i.op_name, roles) == "parameter"}

    buffers = []
    for members in slots.values():
        live = [(s, e, v) for s, e, v in members if s <= peak_index <= e]
        if not live:
            continue
        s, e, value = max(live, key=lambda m: m[2].bytes)
        instr = dump.instructions.get(instruction_of(value.name), _NONE)
        maker = _attribution(dump, members)
        first = min(m[0] for m in members)
        span = (first, max(m[1] for m in members))
        shape, dtype = _shape(value)
        source = source_of(maker.frames)
        ckpt = checkpoint_names.get(user_frame(maker.frames))
        category = _category(dump, value, maker, span, roles, param_shapes)
        if value.allocation == "parameter":
            source = source or f"({category})"
        buffers.append(Buffer(value.bytes, shape, dtype, category, instr.opcode, instr.name,
                              maker.op_name or instr.op_name, source, ckpt, span))
    buffers.sort(key=lambda b: (-b.bytes, b.hlo_name))

    by_category: dict[str, int] = collections.Counter()
    by_source: dict[str, int] = collections.Counter()
    for b in buffers:
        by_category[b.category] += b.bytes
        by_source[b.source or b.op_name or b.hlo_name] += b.bytes
    peak_name = dump.sequence[peak_index] if peak_index < len(dump.sequence) else ""
    peak_instr = dump.instructions.get(peak_name, _NONE)
    other = sum(v.bytes for k, (s, e) in dump.ranges.items()
                if (v := dump.values.get(k)) is not None and not v.in_device_memory
                and v.allocation != "thread-local" and s <= peak_index <= e)
    loops = tuple(_loop_spans(dump))
    return Explanation(
        name=name, platform=platform, device_kind=device_kind,
        peak_bytes=timeline[peak_index] if timeline else 0, peak_index=peak_index,
        peak_instruction=peak_name, peak_op_name=peak_instr.op_name,
        peak_loop=dump.loops.get(peak_instr.computation), buffers=tuple(buffers),
        by_category=dict(sorted(by_category.items(), key=lambda kv: -kv[1])),
        by_source=dict(sorted(by_source.items(), key=lambda kv: -kv[1])),
        timeline=tuple(timeline), loops=loops, other_memory_bytes=other,
        xla_live_range_peak_bytes=sum(b for _, b in dump.peak))


_NONE = Instruction("", "", "", "", "", (), ())  # an instruction the dump does not name


def _role(op_name: str, roles: Mapping[int, str]) -> str:
    """An argument's category from its path (``args[2][0].mu[...]`` is argument 2)."""
    m = _ARG.match(op_name)
    return roles.get(int(m.group(1)), "argument") if m else "argument"


def _category(dump: Dump, value: Value, instr: Instruction, live: tuple[int, int],
              roles: Mapping[int, str], param_shapes: set) -> str:
    if value.allocation == "parameter":
        return _role(instr.op_name, roles)
    if value.allocation == "output":
        return "output"
    if _backward(instr.op_name):
        return "gradient" if _shape(value) in param_shapes else "workspace"
    if "jvp(" in instr.op_name and live[1] < len(dump.sequence):
        last = dump.instructions.get(dump.sequence[live[1]], _NONE)
        if _backward(last.op_name) or _backward(dump.loops.get(last.computation, "")):
            return "saved activation"
    return "workspace"


def _backward(op_name: str) -> bool:
    """JAX names the ops of a VJP's backward pass ``transpose(...)``."""
    return "transpose(" in op_name


def _loop_spans(dump: Dump):
    spans: dict[str, list[int]] = {}
    for i, n in enumerate(dump.sequence):
        comp = dump.instructions.get(n, _NONE).computation
        if comp in dump.loops:
            span = spans.setdefault(dump.loops[comp], [i, i])
            span[1] = i
    return [(op, a, b) for op, (a, b) in spans.items()]


def program_roles(program: Any) -> dict[int, str]:
    """Which category each positional argument of a :class:`~jaxmem.program.Program` is."""
    out = {}
    for k, arg in enumerate(program.abstract_args):
        for attr, role in ROLES.items():
            if arg is not None and getattr(program, attr, None) is arg:
                out[k] = role
                break
    return out


def explain_program(program: Any, name: str = "") -> Explanation:
    """Explains a :class:`~jaxmem.program.Program`'s step, arguments by role."""
    traced = program.step.trace(*program.abstract_args)
    names = jaxpr_checkpoint_names(traced.jaxpr)
    return explain(program.step, *program.abstract_args, name=name,
                   roles=program_roles(program), checkpoint_names=names)
