"""Notebooks: paired with jupytext, outputs stripped, and they run."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbclient
import pytest

EXPECTED = {  # a line each notebook prints when its cells ran through
    "00_quickstart": "remat=full,precision=bf16-mixed",
    "01_techniques": "bf16-mixed keeps 0.",
    "02_where_memory_goes": "bf16-mixed keeps 0.",
    "03_planning": "with the doctor's change: ok",
}
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_paired_and_stripped(script):
    ipynb = script.with_suffix(".ipynb")
    assert ipynb.exists(), f"run: jupytext --sync {script}"
    paired = jupytext.read(ipynb)
    source = jupytext.read(script)
    assert [c.source for c in paired.cells] == [c.source for c in source.cells], (
        f"{ipynb.name} is out of sync: jupytext --sync {script}")
    for cell in paired.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, "strip outputs"


@pytest.mark.parametrize("script", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(script):
    nb = jupytext.read(script)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(script.parent)}})
    client.execute()
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert EXPECTED[script.stem] in text
