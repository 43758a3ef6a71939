"""Every combination the README calls invalid is refused before anything compiles: exit 2, one
line naming the field, nothing under --out."""

from __future__ import annotations

from pathlib import Path

import pytest
from jax._src import compiler

from jaxmem.cli import cli

TINY_GPT = ("model: {kind: gpt, vocab_size: 64, seq_len: 16, num_layers: 2, d_model: 32, "
            "num_heads: 2, stack: %s}\n")
CUSTOM = "model: {kind: custom, factory: 'examples.custom_model:workload', options: {width: 8}}\n"

REFUSED = {
    "freeze.blocks on a scanned stack": (
        TINY_GPT % "scan" + "freeze: {blocks: 1}\n", [],
        "freeze.blocks: needs model.stack=loop"),
    "freeze.blocks above the block count": (
        TINY_GPT % "loop" + "freeze: {blocks: 3}\n", [],
        "freeze.blocks: exceeds the model's 2 blocks, got 3"),
    "freeze.patterns matching nothing": (
        TINY_GPT % "loop" + "freeze: {patterns: ['trunk/nothing/*']}\n", [],
        "freeze.patterns: matches no parameter"),
    "freeze.embeddings on a model without them": (
        "model: {kind: mlp}\nfreeze: {embeddings: true}\n", [],
        "freeze.embeddings: model kind 'mlp' has no such preset"),
    "remat.nested on a loop stack": (
        TINY_GPT % "loop" + "remat: {policy: full, nested: true}\n", [],
        "remat.nested: needs a scanned stack"),
    "remat.every not dividing the scanned layers": (
        TINY_GPT % "scan" + "remat: {policy: full, every: 3}\n", [],
        "remat.every: must divide the 2 scanned layers"),
    "remat granularity on a custom model": (
        CUSTOM + "remat: {policy: full, every: 2}\n", [],
        "remat.every: needs a built-in model"),
    "a name policy on a built-in model without the names": (
        "model: {kind: mlp}\nremat: minimal\n", [],
        "remat.policy: names checkpoints model kind 'mlp' does not tag"),
    "a name policy on a custom model that tags none": (
        CUSTOM + "remat: 'save:query'\n", [],
        "remat.policy: names checkpoints the model does not tag (query)"),
    "a custom factory that does not import": (
        "model: {kind: custom, factory: 'broken_factory:workload'}\n", [],
        "model.factory: cannot import module (SyntaxError"),
    "a custom factory without remat_policy under remat": (
        "model: {kind: custom, factory: 'plain_factory:workload'}\nremat: full\n", [],
        "remat.policy: factory plain_factory:workload takes no remat_policy argument"),
    "decode without a KV cache": (
        "task: decode\nmodel: {kind: encoder}\n", [],
        "task: decode needs a model with a KV cache"),
    "pruning a model without transformer MLPs": (
        "task: inference\nmodel: {kind: cnn}\ninference: {prune: masked}\n", [],
        "inference.prune: prunes transformer MLPs"),
    "remat on a forward-only task": (
        "task: inference\nremat: full\n", [], "remat: applies to task train, not inference"),
    "run mode on a compile-only target": (
        "target: tpu:v5e:2x2\n", ["--mode", "run"], "target.name: is compile-only"),
    "allocator settings in compile mode": (
        "measure: {preallocate: false}\n", [], "measure: allocator settings apply to --mode run"),
    "mem_fraction in compile mode off a GPU target": (
        "measure: {mem_fraction: 0.9}\n", [], "measure: allocator settings apply to --mode run"),
    "a mesh larger than the target": (
        "mesh: {data: 64}\ndata: {batch_size: 64}\n", [], "spans 64 devices but the target has 8"),
    "a sweep with one bad point": (
        TINY_GPT % "scan" + "sweep: {remat: [none, {policy: full, every: 3}]}\n", [],
        "remat.every: must divide the 2 scanned layers"),
}

FACTORIES = {
    "broken_factory.py": "def workload(batch_size:\n    pass\n",
    "failing_model.py": ("import examples.custom_model as m\n"
                         "def workload(batch_size, remat_policy='none'):\n"
                         "    w = m.workload(batch_size, width=8, depth=1)\n"
                         "    def loss(model, batch):\n"
                         "        raise RuntimeError('the model itself fails')\n"
                         "    return m.jaxmem.Workload(init=w.init, batch=w.batch, loss=loss)\n"),
    "plain_factory.py": ("import examples.custom_model as m\n"
                         "def workload(batch_size):\n"
                         "    return m.workload(batch_size, width=8, depth=1)\n"),
}


@pytest.fixture
def compiles(monkeypatch):
    """Counts XLA compiles in this process (every jit, lower().compile() and eager op)."""
    count = [0]
    real = compiler.compile_or_get_cached

    def spy(*args, **kwargs):
        count[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(compiler, "compile_or_get_cached", spy)
    return count


def invoke(cli_runner, workdir: Path, text: str, args: list[str], verb: str = "run"):
    path = workdir / "exp.yaml"
    path.write_text(text)
    extra = ["--out", str(workdir / "out"), "--no-progress"] if verb == "run" else []
    return cli_runner.invoke(cli, [verb, str(path), *extra, *args])


@pytest.mark.parametrize("case", list(REFUSED))
def test_refused_before_anything_compiles(cli_runner, workdir, compiles, case):
    text, args, expected = REFUSED[case]
    result = invoke(cli_runner, workdir, text, args)
    assert result.exit_code == 2, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("jaxmem: error: ") and expected in line, line
    assert not (workdir / "out").exists()
    assert compiles[0] == 0


def test_residuals_of_a_forward_only_task_are_refused(cli_runner, workdir, compiles):
    result = invoke(cli_runner, workdir, "task: inference\n", [], verb="residuals")
    assert result.exit_code == 2
    assert "task: has no backward pass" in result.stderr and compiles[0] == 0


def test_the_spy_sees_compiles_and_a_forced_policy_runs_with_a_note(cli_runner, workdir,
                                                                     compiles):
    result = invoke(cli_runner, workdir, CUSTOM + "remat: {policy: 'save:query', "
                    "allow_untagged: true}\n", [])
    assert result.exit_code == 0, result.output
    assert compiles[0] > 0
    import jaxmem

    (row,) = jaxmem.read_results(workdir / "out")
    assert row.ok
    assert any("does not tag (query)" in n for n in row.notes), row.notes


def test_a_model_whose_own_code_fails_is_a_row_not_bad_input(cli_runner, workdir):
    """Checking the names a custom model tags traces it; if its code fails, that is its row."""
    result = invoke(cli_runner, workdir, "model: {kind: custom, factory: "
                    "'failing_model:workload'}\nremat: 'save:query'\n", [])
    assert result.exit_code == 0, result.output
    import jaxmem

    (row,) = jaxmem.read_results(workdir / "out")
    assert row.status == "error" and "the model itself fails" in row.error
