"""Notebooks: paired with jupytext, outputs stripped, and they run."""

from __future__ import annotations

import time
from pathlib import Path

import jupytext
import nbclient
import pytest

EXPECTED = {  # a line each notebook prints when its cells ran through
    "00_quickstart": "remat=full,precision=bf16-mixed",
    "01_techniques": "bf16-mixed keeps 0.",
    "02_where_memory_goes": "bf16-mixed keeps 0.",
    "03_planning": "with the doctor's change: ok",
    "04_results_and_reports": "report written:",
    "05_estimate_by_hand": "parameters: by hand 3,487,232, the model 3,487,232",
    "06_sharding_and_pods": "fits: True",
    "07_inference_memory": "does not fit",
}
FOLDER = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(FOLDER.glob("*.py"))


def test_every_notebook_is_known_and_in_the_course():
    """A notebook added without a line here (and in notebooks/README.md) fails."""
    assert [p.stem for p in NOTEBOOKS] == sorted(EXPECTED)
    course = (FOLDER / "README.md").read_text()
    assert [s for s in EXPECTED if f"`{s}`" not in course] == []


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
def test_notebook_runs(script, record_property):
    nb = jupytext.read(script)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(script.parent)}})
    start = time.perf_counter()
    client.execute()
    record_property("notebook_seconds", time.perf_counter() - start)  # in the run's summary
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert EXPECTED[script.stem] in text
