"""The README's promises: its measured table is current, every result field is documented, the
API example runs."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import jax
import pytest

from jaxmem.record import FIELDS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
_spec = importlib.util.spec_from_file_location("update_readme", ROOT / "scripts/update_readme.py")
update_readme = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(update_readme)


@pytest.mark.parametrize("field", list(FIELDS))
def test_every_result_field_is_in_the_readme(field):
    assert f"`{field}`" in README


def test_schema_table_is_generated_from_the_fields():
    assert update_readme.block(README, "fields") == update_readme.fields_table()


def test_demo_table_comes_from_a_real_run(quickstart_records):
    """The README's table is what the quickstart measures: cell for cell with the jax that
    measured it (``make readme`` regenerates it), and row for row with any other."""
    demo = update_readme.block(README, "demo")
    measured_with = re.search(r"jax (\S+), in \d+ s", demo)
    assert measured_with, demo[:200]
    shown = re.search(r"```\n(.*)\n```", demo, flags=re.S)[1]
    fresh = update_readme.demo_table(list(quickstart_records.values()))
    if measured_with[1] == jax.__version__:
        assert shown == fresh, "README's demo table is stale: run `make readme`"
    else:  # another XLA may round bytes differently; the rows and columns must still agree
        def skeleton(text: str) -> list[str]:
            return [re.sub(r"[\d.]+ ?(B|KiB|MiB|GiB|G|M)?( \([+\-=]?\d*%?\))?", "#", line)
                    for line in text.splitlines()]
        assert skeleton(shown)[:4] == skeleton(fresh)[:4]
        assert [n for n in quickstart_records] == re.findall(r"│ \d+ │ (\S+)", shown)


def test_readme_python_example_runs(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    (code,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'remat=none,precision=fp32', 'remat=dots,precision=fp32'" in out
    assert "MemoryReport(cpu x1: argument 16.0 MiB, output 16.0 MiB" in out


def test_readme_shows_the_two_commands():
    assert "make demo" in README and "make test" in README
