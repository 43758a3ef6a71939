"""The README's promises: every result field documented, the API example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jaxmem.record import FIELDS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


@pytest.mark.parametrize("field", list(FIELDS))
def test_every_result_field_is_in_the_readme(field):
    assert f"`{field}`" in README


def test_readme_python_example_runs(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    (code,) = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    exec(compile(code, "README.md", "exec"), {})
    out = capsys.readouterr().out
    assert "'remat=none,precision=fp32', 'remat=dots,precision=fp32'" in out
    assert "MemoryReport(cpu x1: argument 16.0 MiB, output 16.0 MiB" in out


def test_readme_shows_the_two_commands():
    assert "make demo" in README and "make test" in README
