"""``jaxmem report``: one self-contained HTML page from a results folder."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from html.parser import HTMLParser

import pytest

import jaxmem
from jaxmem import results
from jaxmem.html_report import compiled_parts
from jaxmem.record import Record

TINY = """\
name: tiny
model: {kind: mlp, hidden: [64, 64]}
data: {batch_size: 16}
sweep:
  remat: [none, full]
"""


class _Page(HTMLParser):
    """What the report's structure tests look at: headings, images, table rows, links."""

    def __init__(self) -> None:
        super().__init__()
        self.headings: list[str] = []
        self.images: list[str] = []
        self.rows: dict[int, list[str]] = {}
        self.external: list[str] = []
        self._heading = False
        self._table = -1
        self._tr_class: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("h1", "h2", "h3"):
            self._heading = True
            self.headings.append("")
        if tag == "img":
            self.images.append(a.get("src", ""))
        if tag == "table":
            self._table += 1
            self.rows[self._table] = []
        if tag == "tr":
            self.rows[self._table].append(a.get("class") or "")
        if tag in ("script", "link", "iframe") or any(
                k in ("src", "href") and not (v or "").startswith("data:") for k, v in attrs):
            self.external.append(f"{tag} {a}")

    def handle_endtag(self, tag):
        if tag in ("h1", "h2", "h3"):
            self._heading = False

    def handle_data(self, data):
        if self._heading:
            self.headings[-1] += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


@pytest.fixture(scope="module")
def quickstart_folder(quickstart_records, tmp_path_factory):
    folder = tmp_path_factory.mktemp("qs")
    with results.Writer(folder) as writer:
        for record in quickstart_records.values():
            writer.append(record)
    return folder


def test_compiled_parts_add_up_to_the_total_and_split_sharded_arguments():
    exp = jaxmem.Experiment.from_dict({
        "model": {"kind": "mlp", "hidden": [256, 256]}, "target": "cpu:8",
        "data": {"batch_size": 64},
        "sweep": {"cases": [{"sharding": "dp", "mesh": {"data": -1}},
                            {"sharding": "fsdp", "mesh": {"fsdp": -1}}]}})
    dp, fsdp = jaxmem.run(exp)
    for r in (dp, fsdp):
        parts = compiled_parts(r)
        assert sum(parts.values()) == r.get("compiled.total_bytes")
        assert parts["parameters"] == r.get("analytic.param_bytes_per_device")
        assert parts["batch"] == r.get("analytic.batch_bytes_per_device")
    # FSDP holds an eighth of the weights (the few vectors too small to split stay whole)
    assert compiled_parts(fsdp)["parameters"] * 8 == pytest.approx(
        compiled_parts(dp)["parameters"], rel=0.01)
    assert compiled_parts(Record("e", 0, "x", "compile", "error")) is None


def test_report_is_one_self_contained_page_with_chart_table_notes_environment(
        quickstart_records, quickstart_folder, cli_runner):
    from jaxmem.cli import cli

    done = cli_runner.invoke(cli, ["report", str(quickstart_folder)])
    assert done.exit_code == 0, done.output
    path = quickstart_folder / "report.html"
    assert done.stdout.strip() == str(path)
    page = _parse(path.read_text())
    assert page.external == []  # nothing fetched from elsewhere: the file travels alone
    assert [h for h in page.headings if h in ("Memory per device", "Table", "Notes",
                                              "Environment")] == [
        "Memory per device", "Table", "Notes", "Environment"]
    assert len(page.images) == 1  # the memory chart; no explain folder here
    png = base64.b64decode(page.images[0].split(",", 1)[1])
    assert png[:4] == b"\x89PNG"
    table_rows = page.rows[0]
    assert len(table_rows) == 1 + len(quickstart_records)  # header + one row each
    text = path.read_text()
    for name in quickstart_records:
        assert f"<td class=\"l\">{name}</td>" in text
    assert "total/dev" in text and "jax_version" in text


def test_report_shows_explanations_failed_rows_and_refuses_what_is_not_results(
        tmp_path, cli_runner):
    from jaxmem.cli import cli

    (tmp_path / "tiny.yaml").write_text(TINY)
    out = tmp_path / "runs"
    assert cli_runner.invoke(cli, ["run", str(tmp_path / "tiny.yaml"), "--out", str(out),
                                   "--workers", "0"]).exit_code == 0
    done = cli_runner.invoke(cli, ["explain", str(tmp_path / "tiny.yaml"), "--out",
                                   str(out / "explain")])
    assert done.exit_code == 0, done.output
    assert sorted(p.name for p in (out / "explain").iterdir()) == [
        "remat=full.json", "remat=full.png", "remat=none.json", "remat=none.png"]
    with results.Writer(out, resume=True) as writer:  # a failed row beside them
        writer.append(Record("tiny", 2, "broken", "compile", "error", error="boom"))
    done = cli_runner.invoke(cli, ["report", str(out), "-o", str(tmp_path / "r.html")])
    assert done.exit_code == 0, done.output
    text = (tmp_path / "r.html").read_text()
    page = _parse(text)
    assert len(page.images) == 3  # the memory chart and two timelines
    assert "Why: what is live at the peak (jaxmem explain)" in page.headings
    assert [h for h in page.headings if h.startswith("remat=")] == ["remat=none (cpu)",
                                                                     "remat=full (cpu)"]
    assert page.rows[0].count("failed") == 1 and "error in row 2: boom" in text
    assert not (out / "report.html").exists()  # -o was honoured

    bad = cli_runner.invoke(cli, ["report", str(tmp_path / "nowhere")])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1
    assert "cannot read" in bad.output


@pytest.mark.skipif(shutil.which("chromium") is None, reason="no headless Chromium here")
def test_report_renders_in_headless_chromium(quickstart_folder, tmp_path):
    """The page as a browser draws it: a screenshot that is not blank (the chart and table
    are drawn, not a white page or an error page)."""
    from PIL import Image

    path = jaxmem.write_report(quickstart_folder, tmp_path / "r.html")
    shot = tmp_path / "shot.png"
    subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-background-networking", "--disable-component-update",
                    "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
                    "--window-size=1200,1600", f"--screenshot={shot}", path.as_uri()],
                   capture_output=True, timeout=120, check=True)
    image = Image.open(shot).convert("RGB")
    colours = image.getcolors(maxcolors=1 << 20)
    assert image.size == (1200, 1600)
    assert colours is None or len(colours) > 200  # text, bars and lines, not one flat colour
    assert re.search(r"Memory per device", path.read_text())
