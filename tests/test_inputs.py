"""Bad input, as a new user writes it: exit 2 with one line and nothing written, or a valid,
documented result; never a traceback, a hang or a signal. Hypothesis generates hundreds of
experiments (valid and invalid, every section, sweeps, --set) on top of the known cases."""

from __future__ import annotations

import codecs
import shutil
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import jaxmem
from jaxmem.cli import cli
from jaxmem.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
MLP = "model: {kind: mlp, in_features: 8, hidden: [8], out_features: 2}\ndata: {batch_size: 4}\n"
BOMB = "".join(f"{k}: &{k} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['x'] * 9)}]\n"
               for p, k in zip(["", "a", "b", "c", "d", "e", "f"], "abcdefg", strict=True))

#: (experiment file bytes, extra CLI arguments, what the one error line says)
KNOWN: dict[str, tuple[bytes, list[str], str]] = {
    "latin-1 text": (("name: caf\xe9\n" + MLP).encode("latin-1"), [], "is not UTF-8 text"),
    "nested 600 levels": (("model: " + "[" * 600 + "]" * 600 + "\n").encode(), [],
                          "nests deeper than 64 levels"),
    "a recursive alias": (b"model: &m {kind: mlp, x: *m}\n", [], "an alias contains itself"),
    "a billion laughs": (BOMB.encode(), [], "expands to more than 100000 values"),
    "a duplicate key": ((MLP + "data: {batch_size: 2}\n").encode(), [],
                        "key 'data' appears twice"),
    "an empty file": (b"", [], "is empty"),
    "a comment only": (b"# nothing\n", [], "is empty"),
    "a list at the top": (b"- model\n", [], "expected a mapping at the top level"),
    "two documents": ((MLP + "---\n" + MLP).encode(), [], "malformed YAML"),
    "a python tag": (b"model: !!python/object/apply:os.system [ls]\n", [], "malformed YAML"),
    "name ..": ((MLP + "name: ..\n").encode(), [], "name: expected a folder name"),
    "name with a slash": ((MLP + "name: a/b\n").encode(), [], "name: expected a folder name"),
    "a NaN learning rate": ((MLP + "optimizer: {learning_rate: .nan}\n").encode(), [],
                            "optimizer.learning_rate: expected a finite number"),
    "an infinite weight decay": ((MLP + "optimizer: {weight_decay: .inf}\n").encode(), [],
                                 "optimizer.weight_decay: expected a finite number"),
    "an infinite timeout": ((MLP + "measure: {timeout_s: .inf}\n").encode(), [],
                            "measure.timeout_s: expected a finite number"),
    "sweep: []": ((MLP + "sweep: []\n").encode(), [], "sweep: expected a mapping"),
    "sweep: ''": ((MLP + "sweep: ''\n").encode(), [], "sweep: expected a mapping"),
    "sweep: 0": ((MLP + "sweep: 0\n").encode(), [], "sweep: expected a mapping"),
    "sweep: false": ((MLP + "sweep: false\n").encode(), [], "sweep: expected a mapping"),
    "a sweep of a section and its field": (
        (MLP + "sweep: {remat: [{policy: full}], remat.policy: [none]}\n").encode(), [],
        "sweeps the same field as"),
    "a hundred million points": (
        (MLP + "sweep: {data.seed: " + str(list(range(10_000))) + ", data.batch_size: "
         + str(list(range(1, 10_001))) + "}\n").encode(), [], "has more than 10000 points"),
    "the same point twice": ((MLP + "sweep: {remat: [full, full]}\n").encode(), [],
                             "are the same configuration"),
    "a vocabulary of 2**62": (b"model: {kind: gpt, vocab_size: 4611686018427387904}\n", [],
                              "model.vocab_size: is out of range"),
    "a sequence of 10**12": (b"model: {kind: gpt, seq_len: 1000000000000}\n", [],
                             "model.seq_len: is out of range"),
    "a v5e side beyond 16": ((MLP + "target: tpu:v5e:32x32\n").encode(), [],
                             "v5e slices are at most 16 chips along each side"),
    "100000 CPU devices": ((MLP + "target: cpu:100000\n").encode(), [],
                           "needs between 1 and 4096 devices"),
    "a 20-digit CPU count": ((MLP + "target: cpu:99999999999999999999\n").encode(), [],
                             "needs between 1 and 4096 devices"),
    "--out is a file": (MLP.encode(), ["--out", "{tmp}/exp.yaml"], "--out: "),
    "--out under a file": (MLP.encode(), ["--out", "{tmp}/exp.yaml/sub"], "--out: "),
    "--distributed on a plain machine": (MLP.encode(), ["--distributed"], "--distributed"),
    "a factory calling sys.exit at import": (
        b"model: {kind: custom, factory: 'exits_on_import:workload'}\n", [],
        "model.factory: cannot import module (SystemExit"),
    "--resume with --force": (MLP.encode(), ["--resume", "--force"], "--resume"),
    "a bad --set value": (MLP.encode(), ["--set", "data.batch_size=[[[[[[1]]]]]]"],
                          "data.batch_size: expected an integer"),
    "an unknown option": (MLP.encode(), ["--frobnicate"], "No such option '--frobnicate'"),
}
FACTORIES = {"exits_on_import.py": "import sys\nsys.exit(3)\n",
             "exits_when_called.py": ("import sys\n"
                                      "def workload(batch_size, remat_policy='none'):\n"
                                      "    sys.exit(3)\n")}


def run_cli(cli_runner, workdir: Path, data: bytes, args: list[str]):
    path = workdir / "exp.yaml"
    path.write_bytes(data)
    args = [a.replace("{tmp}", str(workdir)) for a in args]
    if "--out" not in args:
        args = ["--out", str(workdir / "out"), *args]
    return cli_runner.invoke(cli, ["run", str(path), "--no-progress", *args])


def assert_refused(result, workdir: Path, expected: str = "") -> None:
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("jaxmem: error: ") and expected in line, line
    assert not (workdir / "out").exists()


@pytest.mark.parametrize("case", list(KNOWN))
def test_known_bad_input_is_one_line_and_exit_2(cli_runner, workdir, case):
    data, args, expected = KNOWN[case]
    assert_refused(run_cli(cli_runner, workdir, data, args), workdir, expected)


def test_utf16_with_a_byte_order_mark_is_read(cli_runner, workdir):
    data = codecs.BOM_UTF16_LE + MLP.encode("utf-16-le")
    result = run_cli(cli_runner, workdir, data, [])
    assert result.exit_code == 0, result.output
    assert jaxmem.read_results(workdir / "out")[0].ok


def test_a_factory_calling_sys_exit_is_a_row(cli_runner, workdir):
    data = b"model: {kind: custom, factory: 'exits_when_called:workload'}\n"
    result = run_cli(cli_runner, workdir, data, [])
    assert result.exit_code == 0, result.output
    (row,) = jaxmem.read_results(workdir / "out")
    assert row.status == "error" and "called sys.exit(3)" in row.error


@pytest.mark.parametrize("call, expected", [
    (lambda: jaxmem.Experiment.from_yaml(ROOT / "README.md" / "x"), "cannot be read"),
    (lambda: jaxmem.Experiment.from_yaml(ROOT / "experiments"), "is a directory"),
    (lambda: jaxmem.Experiment.from_yaml(42), "path: expected a file path"),
    (lambda: jaxmem.Experiment.from_dict({}, "remat=full"), "overrides: expected a list"),
    (lambda: jaxmem.Experiment.from_dict([1]), "expected a mapping of sections"),
    (lambda: jaxmem.DataConfig(batch_size="2"), "batch_size: expected an integer"),
    (lambda: jaxmem.OptimizerConfig(learning_rate=float("nan")), "expected a finite number"),
    (lambda: jaxmem.MeshConfig(data=True), "data: expected an integer"),
    (lambda: jaxmem.Config(model="gpt"), "model: expected a ModelConfig"),
    (lambda: jaxmem.RematConfig(policy=None), "policy: expected a string"),
])
def test_python_api_errors_are_config_errors(call, expected):
    with pytest.raises(ConfigError, match=expected) as info:
        call()
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)


# ------------------------------------------------------------------------------ hypothesis

NAMES = st.sampled_from(["none", "full", "dots", "none", "full", "minimal", "save:query",
                         "bogus", "", 3, None])
ANY = st.one_of(st.none(), st.booleans(), st.integers(-3, 10), st.integers(2**31, 2**63),
                st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=6),
                st.lists(st.integers(-2, 8), max_size=3))


def mostly(valid: st.SearchStrategy) -> st.SearchStrategy:
    """``valid`` four times in five, anything otherwise."""
    return st.one_of(valid, valid, valid, valid, ANY)


SIZES = mostly(st.integers(1, 8))
MODELS = st.one_of(
    st.fixed_dictionaries({"kind": st.just("mlp"), "in_features": SIZES,
                           "hidden": mostly(st.lists(st.integers(1, 8), min_size=1,
                                                     max_size=2).map(tuple).map(list))}),
    st.fixed_dictionaries({"kind": st.just("gpt"), "vocab_size": mostly(st.integers(8, 32)),
                           "seq_len": mostly(st.sampled_from([8, 16])), "num_layers": SIZES,
                           "d_model": mostly(st.sampled_from([8, 16])),
                           "num_heads": mostly(st.sampled_from([1, 2])),
                           "stack": st.sampled_from(["loop", "scan", "loop", "zigzag"])}),
    st.fixed_dictionaries({"kind": st.sampled_from(["cnn", "cnn", "rnn", 7, None]),
                           "image_size": mostly(st.sampled_from([8, 12])),
                           "channels": st.lists(st.integers(1, 4), min_size=1, max_size=2)}),
)
SECTIONS = st.fixed_dictionaries({"model": MODELS}, optional={
    "data": st.fixed_dictionaries({"batch_size": mostly(st.sampled_from([2, 4]))},
                                  optional={"microbatches": SIZES, "seed": mostly(st.just(1))}),
    "remat": st.one_of(NAMES, st.fixed_dictionaries({"policy": NAMES},
                                                    optional={"every": SIZES,
                                                              "nested": ANY})),
    "precision": st.sampled_from(["fp32", "bf16-mixed", "fp32", "fp8", 1]),
    "optimizer": st.one_of(st.sampled_from(["adamw", "sgd", "adam"]),
                           st.fixed_dictionaries({"learning_rate": mostly(st.just(0.1))})),
    "freeze": st.fixed_dictionaries({}, optional={"blocks": SIZES, "embeddings": ANY,
                                                  "patterns": ANY}),
    "mesh": st.fixed_dictionaries({}, optional={"data": mostly(st.integers(-2, 3)),
                                                "fsdp": st.integers(-1, 2)}),
    "sharding": st.sampled_from(["dp", "dp", "fsdp", "tp", "zero", None]),
    "target": st.sampled_from(["local", "local", "cpu:2", "cpu:0", "tpu:v9:2x2", "gpu:k80x8",
                               "moon"]),
    "task": st.sampled_from(["train", "train", "inference", "decode", "sing"]),
    "measure": st.fixed_dictionaries({}, optional={"timeout_s": mostly(st.just(60)),
                                                   "steps": ANY}),
    "name": mostly(st.sampled_from(["ok", "..", "a/b", "", "fine.name"])),
    "sweep": mostly(st.dictionaries(
        st.sampled_from(["remat", "data.batch_size", "remat.policy", "model.nope"]),
        st.lists(st.sampled_from(["none", "full", 2, 4, 0, None]), min_size=1, max_size=3,
                 unique=True), max_size=2)),
})
TINY = st.sampled_from([
    {"kind": "mlp", "in_features": 8, "hidden": [8], "out_features": 2},
    {"kind": "mlp", "in_features": 4, "hidden": [4, 4], "out_features": 2},
    {"kind": "gpt", "vocab_size": 16, "seq_len": 8, "num_layers": 1, "d_model": 8,
     "num_heads": 2, "stack": "loop"},
    {"kind": "gpt", "vocab_size": 16, "seq_len": 8, "num_layers": 2, "d_model": 8,
     "num_heads": 2, "stack": "scan"},
    {"kind": "cnn", "image_size": 8, "in_channels": 1, "channels": [2], "num_classes": 2},
])
VALID = st.fixed_dictionaries({"model": TINY}, optional={
    "remat": st.sampled_from(["none", "full", "dots"]),
    "precision": st.sampled_from(["fp32", "bf16-mixed"]),
    "optimizer": st.sampled_from(["adamw", "sgd"]),
    "data": st.fixed_dictionaries({"batch_size": st.sampled_from([2, 4])}),
    "sweep": st.dictionaries(st.sampled_from(["remat", "precision"]),
                             st.lists(st.sampled_from(["none", "full"]), min_size=1,
                                      max_size=2, unique=True), max_size=1),
})
#: about one experiment in ten is valid by construction (each compiles: they cost the time)
EXPERIMENTS = st.integers(0, 9).flatmap(
    lambda k: VALID if k == 0 else SECTIONS if k < 8 else st.dictionaries(st.text(max_size=8),
                                                                          ANY))
SETS = st.lists(st.sampled_from(["remat=full", "data.batch_size=2", "model.kind=mlp",
                                 "sweep.remat=[none,full]", "nope=1", "precision", "=",
                                 "data.batch_size=.nan", "remat={policy: [", "name=x/y"]),
                max_size=2)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(sections=EXPERIMENTS, sets=SETS)
def test_generated_experiments_exit_0_or_2_and_never_crash(cli_runner, sections, sets):
    work = Path(tempfile.mkdtemp(prefix="jaxmem-fuzz-"))
    try:
        text = yaml.safe_dump(sections, allow_unicode=True)
        result = run_cli(cli_runner, work, text.encode(), [a for s in sets
                                                           for a in ("--set", s)])
        assert "Traceback" not in result.output, result.output
        event(f"exit {result.exit_code}")
        if result.exit_code == 2:
            assert_refused(result, work)
        else:
            assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
            assert jaxmem.read_results(work / "out")  # every configuration has its row
    finally:
        shutil.rmtree(work, ignore_errors=True)
