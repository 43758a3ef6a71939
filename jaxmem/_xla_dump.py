"""Reads what XLA writes about one compiled module under ``xla_dump_to``.

Three text files per module, written by XLA:CPU, libtpu and XLA:GPU alike (checked with jax
0.10.2, libtpu 0.0.42.1 and the CUDA 12 plugin):

* ``*after_optimizations.txt``: the optimized HLO. Each instruction's shape, opcode and
  ``metadata={op_name=... stack_frame_id=N}``; the module's ``FileNames``, ``FunctionNames``,
  ``FileLocations`` and ``StackFrames`` tables resolve a frame id to its call chain.
* ``*after_optimizations-live-range.txt``: the flattened instruction sequence (loop bodies
  included, in order), each buffer's live range over it, and the buffers live at the peak.
* ``*after_optimizations-buffer-assignment.txt``: every value's size and shape, and the
  allocation holding it (parameter, output, temporary block).

This module only parses; :mod:`jaxmem.explain` gives the figures meaning.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+) = (.*)$")
_COMP = re.compile(r"^(ENTRY\s+)?%?([\w.\-]+) \(.*\{\s*$")
_OPCODE = re.compile(r"^\s*([a-z][\w\-]*)\(")
_OP_NAME = re.compile(r'op_name="((?:[^"\\]|\\.)*)"')
_FRAME_ID = re.compile(r"stack_frame_id=(\d+)")
_SOURCE = re.compile(r'source_file="((?:[^"\\]|\\.)*)" source_line=(\d+)')
_OPERAND = re.compile(r"%([\w.\-]+)")
_FUSION_CALLS = re.compile(r"\bcalls=%?([\w.\-]+)")
_PARAM = re.compile(r"parameter\((\d+)\)")
_BODY = re.compile(r"\bbody=%?([\w.\-]+)")
_TABLE_ROW = re.compile(r"^(\d+) (.*)$")
_FIELDS = re.compile(r"(\w+)=(-?\d+)")
_VALUE = re.compile(r"^\s*value: <\d+ (\S+?)(?: \(phi\))? @\d+> \(size=(\d+),offset=(\d+)\): (.*)$")
_ALLOC = re.compile(r"^allocation (\d+): size \d+(.*):$")
_COLOR = re.compile(r"\bcolor (\d+)")
_SPACE = re.compile(r"S\((\d+)\)\}$")
_RANGE = re.compile(r"^\s+(\S+):(\d+)-(\d+)$")
_PEAK_AT = re.compile(r"^\s*Live ranges at (\d+) \(peak\):")
_PEAK_ROW = re.compile(r"^\s+(\S+): (\d+) bytes")


@dataclasses.dataclass(frozen=True)
class Instruction:
    """One HLO instruction: where it is and what the JAX program called it."""

    name: str
    computation: str
    shape: str
    opcode: str
    op_name: str
    frames: tuple[tuple[str, int], ...]  # (file, line), innermost first
    operands: tuple[str, ...]
    calls: str = ""  # a fusion's computation
    parameter: int = -1  # a parameter's number


@dataclasses.dataclass(frozen=True)
class Value:
    """One buffer XLA assigned: its size on the device and what kind of allocation holds it."""

    name: str  # defining instruction plus tuple index, e.g. ``while.3{1}``
    bytes: int
    shape: str
    allocation: str  # parameter | output | temporary | constant | thread-local | other
    slot: tuple[int, int]  # (allocation index, offset): values in one slot share memory
    memory_space: int  # 0: the device's main memory (HBM); others are on-chip or host

    @property
    def in_device_memory(self) -> bool:
        return self.memory_space == 0 and self.allocation != "thread-local"


@dataclasses.dataclass(frozen=True)
class Dump:
    """The parsed dump of one compiled module."""

    instructions: dict[str, Instruction]
    loops: dict[str, str]  # computation -> the op_name of the loop whose body it is
    bodies: dict[str, str]  # while instruction -> its body computation
    roots: dict[str, str]  # computation -> its ROOT instruction
    values: dict[str, Value]
    sequence: list[str]  # instruction names in the flattened program order
    ranges: dict[str, tuple[int, int]]  # buffer -> (first, last) position in the sequence
    peak_at: int
    peak: list[tuple[str, int]]  # buffers live at the peak with their bytes

    @classmethod
    def read(cls, directory: str | Path) -> Dump:
        """Parses the step module's three files in ``directory``."""
        hlo, live, assignment = _files(Path(directory))
        instructions, loops, bodies, roots = _parse_hlo(hlo.read_text())
        values = _parse_assignment(assignment.read_text())
        sequence, ranges, peak_at, peak = _parse_live_range(live.read_text())
        return cls(instructions, loops, bodies, roots, values, sequence, ranges, peak_at, peak)


def buffer_key(name: str) -> str:
    """The name a buffer goes by in every file: ``x.1`` and ``x.1{}`` are the same."""
    return name if name.endswith("}") else name + "{}"


def instruction_of(buffer: str) -> str:
    """``while.3{1}`` -> ``while.3``."""
    return buffer.split("{", 1)[0]


def _files(directory: Path) -> tuple[Path, Path, Path]:
    """The three files of the step's module. A compile may dump helper modules too; the step
    is the module with the largest buffer assignment."""
    assignments = sorted(directory.glob("*after_optimizations-buffer-assignment.txt"),
                         key=lambda f: (f.stat().st_size, f.name))
    if not assignments:
        raise FileNotFoundError(f"XLA wrote no *after_optimizations-buffer-assignment.txt in "
                                f"{directory}")
    prefix = assignments[-1].name.removesuffix("-buffer-assignment.txt")
    files = (directory / f"{prefix}.txt", directory / f"{prefix}-live-range.txt",
             assignments[-1])
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"XLA wrote no {f.name} in {directory}")
    return files


def _tables(text: str) -> dict[str, dict[int, str]]:
    tables: dict[str, dict[int, str]] = {}
    current: dict[int, str] | None = None
    for line in text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
        elif current is not None and (m := _TABLE_ROW.match(line)):
            current[int(m.group(1))] = m.group(2)
        elif not line.strip() and current is not None and current:
            current = None
    return tables


def _frame_resolver(text: str):
    tables = _tables(text)
    files = {k: v.strip('"') for k, v in tables.get("FileNames", {}).items()}
    locations = {k: dict((f, int(v)) for f, v in _FIELDS.findall(row))
                 for k, row in tables.get("FileLocations", {}).items()}
    frames = {k: dict((f, int(v)) for f, v in _FIELDS.findall(row))
              for k, row in tables.get("StackFrames", {}).items()}
    cache: dict[int, tuple[tuple[str, int], ...]] = {}

    def chain(frame_id: int) -> tuple[tuple[str, int], ...]:
        if frame_id in cache:
            return cache[frame_id]
        out, seen, fid = [], set(), frame_id
        # The printer writes a frame's parent as its id + 1 (so a root reads as 1, or its own
        # id); frames resolved this way follow the Python call chain (checked on nested calls).
        while fid in frames and fid not in seen:
            seen.add(fid)
            loc = locations.get(frames[fid].get("file_location_id", 0), {})
            if "file_name_id" in loc:
                out.append((files.get(loc["file_name_id"], "?"), loc.get("line", 0)))
            fid = frames[fid].get("parent_frame_id", 0) - 1
        cache[frame_id] = tuple(out)
        return cache[frame_id]
    return chain


def _shape_and_rest(rhs: str) -> tuple[str, str]:
    if not rhs.startswith("("):
        shape, _, rest = rhs.partition(" ")
        return shape, rest
    depth = 0
    for i, ch in enumerate(rhs):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return rhs[: i + 1], rhs[i + 1:].lstrip()
    return rhs, ""


def _balanced(text: str) -> str:
    """The text inside the parenthesis ``text`` opens with."""
    depth = 0
    for i, ch in enumerate(text):
        depth += ch == "("
        depth -= ch == ")"
        if depth == 0:
            return text[1:i]
    return text


def _parse_hlo(text: str):
    chain = _frame_resolver(text)
    instructions: dict[str, Instruction] = {}
    loops: dict[str, str] = {}
    bodies: dict[str, str] = {}
    roots: dict[str, str] = {}
    computation = ""
    for line in text.splitlines():
        if m := _COMP.match(line):
            computation = m.group(2)
            continue
        if not (m := _INSTR.match(line)) or not computation:
            continue
        name, rhs = m.groups()
        shape, rest = _shape_and_rest(rhs)
        opcode = (o.group(1) if (o := _OPCODE.match(rest)) else "")
        op_name = (o.group(1).replace("\\'", "'") if (o := _OP_NAME.search(rest)) else "")
        if f := _FRAME_ID.search(rest):
            frames = chain(int(f.group(1)))
        elif s := _SOURCE.search(rest):
            frames = ((s.group(1), int(s.group(2))),)
        else:
            frames = ()
        args = _balanced(rest[len(opcode):]) if opcode else ""
        operands = tuple(_OPERAND.findall(args))
        calls = c.group(1) if opcode == "fusion" and (c := _FUSION_CALLS.search(rest)) else ""
        number = int(n.group(1)) if opcode == "parameter" and (n := _PARAM.match(rest)) else -1
        instructions[name] = Instruction(name, computation, shape, opcode, op_name, frames,
                                         operands, calls, number)
        if line.lstrip().startswith("ROOT "):
            roots[computation] = name
        if opcode == "while" and (b := _BODY.search(rest)):
            loops[b.group(1)] = op_name or name
            bodies[name] = b.group(1)
    return instructions, loops, bodies, roots


def _parse_assignment(text: str) -> dict[str, Value]:
    values: dict[str, Value] = {}
    kind, index, color = "other", -1, 0
    for line in text.splitlines():
        if m := _ALLOC.match(line):
            index, tags = int(m.group(1)), m.group(2)
            kind = ("parameter" if "parameter" in tags else "output" if "live-out" in tags
                    or "output shape" in tags else "constant" if "constant" in tags
                    else "thread-local" if "thread-local" in tags
                    else "temporary" if "temp" in tags else "other")
            color = int(c.group(1)) if (c := _COLOR.search(tags)) else 0
        elif m := _VALUE.match(line):
            name, size, offset, shape = m.groups()
            key = buffer_key(name)
            if key not in values:
                shape = shape.strip()
                space = color or (int(m.group(1)) if (m := _SPACE.search(shape))
                                  and not shape.startswith("(") else 0)
                values[key] = Value(key, int(size), shape, kind, (index, int(offset)), space)
    return values


def _parse_live_range(text: str):
    sequence: list[str] = []
    ranges: dict[str, tuple[int, int]] = {}
    peak: list[tuple[str, int]] = []
    peak_at, section = -1, ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped == "InstructionSequence:":
            section = "sequence"
        elif stripped == "BufferLiveRange:":
            section = "ranges"
        elif m := _PEAK_AT.match(line):
            section, peak_at = "peak", int(m.group(1))
        elif stripped.startswith("Stack trace breakdown"):
            section = ""
        elif section == "sequence" and ":" in stripped:
            sequence.append(stripped.split(":", 1)[1])
        elif section == "ranges" and (m := _RANGE.match(line)):
            ranges[buffer_key(m.group(1))] = (int(m.group(2)), int(m.group(3)))
        elif section == "peak" and (m := _PEAK_ROW.match(line)):
            peak.append((buffer_key(m.group(1)), int(m.group(2))))
    return sequence, ranges, peak_at, peak
