"""``jaxmem plan`` and the cost model it ranks by."""

from __future__ import annotations

import dataclasses
import json

import pytest

import jaxmem
from jaxmem import _convert
from jaxmem.build import build_program
from jaxmem.cli import cli
from jaxmem.compiled import compiled_memory
from jaxmem.config import Config
from jaxmem.cost import step_cost
from jaxmem.errors import ConfigError
from jaxmem.estimate import estimate
from jaxmem.fit import Probe
from jaxmem.plan import plan
from jaxmem.search_space import SearchSpace

GPT = {"kind": "gpt", "vocab_size": 256, "seq_len": 64, "num_layers": 2, "d_model": 64,
       "num_heads": 4, "stack": "scan"}
MiB = 2**20


def _config(**raw) -> Config:
    return _convert.from_dict(Config, raw)


def _by_estimate(config: Config) -> Probe:
    """A stand-in for the compiler: the estimate is the compiled figure."""
    return Probe(0, estimate(config).total_bytes, True)


def test_meshes_cover_every_preset_over_the_devices():
    meshes = list(SearchSpace().meshes(8))
    assert ("dp", {"data": 8, "fsdp": 1, "tensor": 1}) in meshes
    assert ("fsdp", {"data": 1, "fsdp": 8, "tensor": 1}) in meshes
    assert ("tp", {"data": 1, "fsdp": 1, "tensor": 8}) in meshes
    assert ("fsdp+tp", {"data": 1, "fsdp": 2, "tensor": 4}) in meshes
    assert all(m["data"] * m["fsdp"] * m["tensor"] == 8 for _, m in meshes)
    assert ("fsdp+tp", {"data": 1, "fsdp": 1, "tensor": 8}) not in meshes  # nothing to split
    assert list(SearchSpace().meshes(1)) == [("dp", {"data": 1, "fsdp": 1, "tensor": 1})]


@pytest.mark.parametrize("raw, message", [
    ({"remat": ["sometimes"]}, "plan.remat: unknown remat policy"),
    ({"microbatches": []}, "plan.microbatches: needs at least one choice"),
    ({"sharding": ["zero4"]}, "plan.sharding: unknown sharding preset"),
    ({"colour": 1}, "plan: unknown key"),
])
def test_bad_search_spaces_are_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        jaxmem.Experiment.from_dict({"model": GPT, "plan": raw})


def test_the_choice_fits_and_is_the_cheapest_that_does():
    config = _config(model=GPT, target="cpu:8", data={"batch_size": 32})
    budget = 4 * MiB
    p = plan(config, budget, space=SearchSpace(verify=0))
    assert p.searched > 100
    fitting = [c for c in p.ranked if c.fits_estimate]
    assert fitting and all(c.estimate_bytes <= budget for c in fitting)
    assert p.chosen == fitting[0]
    # the cheapest, or within 2% of it with fewer changes to the experiment
    cheapest = min(c.cost.per_sample for c in fitting)
    assert p.chosen.cost.per_sample <= cheapest * 1.02
    tied = [c for c in fitting if c.cost.per_sample <= cheapest * 1.02]
    assert len(p.chosen.changes) == min(len(c.changes) for c in tied)
    costs = [c.cost.per_sample for c in fitting[len(tied):]]
    assert costs == sorted(costs)
    assert not p.baseline.fits_estimate  # the naive step does not fit this budget
    by_memory = plan(config, budget, space=SearchSpace(verify=0), objective="memory")
    assert by_memory.chosen.estimate_bytes == min(c.estimate_bytes for c in fitting)


def test_a_candidate_the_compiler_refuses_passes_the_choice_on():
    config = _config(model=GPT, target="cpu:8", data={"batch_size": 32})
    seen = []

    def first_refused(c: Config) -> Probe:
        seen.append(c)
        return Probe(0, None, False, "oom") if len(seen) == 1 else _by_estimate(c)

    p = plan(config, 4 * MiB, space=SearchSpace(verify=3), measure=first_refused)
    assert p.compiles == 2
    assert p.ranked[0].fits is False and p.chosen is p.ranked[1] and p.chosen.fits


def test_the_chosen_step_compiles_within_the_budget_and_its_sets_rebuild_it():
    """End to end on this machine: the naive step does not fit, the plan's choice does, by
    compile, and its --set lines give back the same configuration."""
    exp = jaxmem.Experiment.from_dict({"model": GPT, "data": {"batch_size": 16},
                                       "plan": {"sharding": ["dp"], "state_dtype": ["auto"]}})
    program = build_program(jaxmem.resolve(exp.config))
    naive = compiled_memory(program.step, *program.abstract_args).total_bytes
    p = plan(exp.config, int(naive * 0.7), space=exp.plan)
    assert p.chosen is not None and p.chosen.fits and p.chosen.compiled_bytes <= naive * 0.7
    again = jaxmem.Experiment.from_dict({"model": GPT, "data": {"batch_size": 16}},
                                        list(p.chosen.changes))
    assert again.config == p.chosen.config


def test_vary_takes_each_candidate_at_its_largest_value():
    config = _config(model=GPT, data={"batch_size": 4})
    space = SearchSpace(remat=("none", "full"), microbatches=(1, 4), state_dtype=("auto",))
    p = plan(config, 16 * MiB, space=space, vary="data.batch_size", measure=_by_estimate)
    assert p.chosen.value >= p.baseline.value > 0
    assert p.fits["chosen"].value == p.chosen.value
    assert p.chosen.config.data.batch_size == p.chosen.value
    assert p.compiles == p.fits["chosen"].compiles + p.fits["baseline"].compiles


# --- the cost model ---------------------------------------------------------------------------

@pytest.mark.parametrize("model", [
    {**GPT, "stack": "loop"},
    {"kind": "llama", "vocab_size": 256, "seq_len": 64, "num_layers": 2, "d_model": 64,
     "num_heads": 4, "num_kv_heads": 2, "mlp_dim": 96},
    {"kind": "encoder", "num_layers": 2},
    {"kind": "mlp", "hidden": [256, 256]},
])
def test_flops_match_the_compiler(model):
    """3 x forward matmul FLOPs against XLA's count of the step (no loop, no remat): within
    10% (XLA also counts elementwise work)."""
    config = _config(model=model, data={"batch_size": 8})
    program = build_program(jaxmem.resolve(config))
    compiled = compiled_memory(program.step, *program.abstract_args)
    assert step_cost(config).flops == pytest.approx(compiled.flops, rel=0.10)


def test_costs_move_the_way_the_techniques_do():
    base = dict(model=GPT, data={"batch_size": 16})
    none = step_cost(_config(**base))
    full = step_cost(_config(**base, remat="full"))
    assert full.recompute_flops > 0 == none.recompute_flops
    assert full.flops == pytest.approx(none.flops + full.recompute_flops)
    assert full.flops_per_sample > none.flops_per_sample
    assert none.parts["collectives"] == 0
    dp = step_cost(_config(**base, target="cpu:8", mesh={"data": 8}))
    fsdp = step_cost(_config(**base, target="cpu:8", mesh={"fsdp": 8}, sharding="fsdp"))
    assert dp.parts["collectives"] > 0 and fsdp.parts["collectives"] > 0
    assert dp.flops == pytest.approx(none.flops / 8)
    v5e = dict(base, target="tpu:v5e:2x2", mesh={"data": 4})
    plain = step_cost(_config(**v5e))
    offload = step_cost(_config(**v5e, optimizer={"offload": True}))
    assert offload.parts["host"] > 0 == plain.parts["host"]
    assert plain.device == "TPU v5e"


# --- the command --------------------------------------------------------------------------------

def test_cli_json_lists_ranked_candidates(tmp_path, cli_runner):
    path = tmp_path / "exp.yaml"
    path.write_text("model: {kind: gpt, vocab_size: 256, seq_len: 64, num_layers: 2, "
                    "d_model: 64, num_heads: 4, stack: scan}\ndata: {batch_size: 8}\n"
                    "plan: {remat: [none, full], microbatches: [1, 2], state_dtype: [auto]}\n")
    result = cli_runner.invoke(cli, ["plan", str(path), "--budget", "8MiB", "--verify", "1",
                                     "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {"sets", "estimate_bytes", "compiled_bytes", "fits", "cost"} <= set(rows[0])
    assert rows[0]["rank"] == 0 and rows[0]["compiled_bytes"] and rows[0]["fits"]
    assert rows[-1]["baseline"] is True
    text = cli_runner.invoke(cli, ["plan", str(path), "--budget", "8MiB", "--verify", "0"])
    assert text.exit_code == 0 and "use it: jaxmem run" in text.stdout
    bad = cli_runner.invoke(cli, ["plan", str(path), "--objective", "speed"])
    assert bad.exit_code == 2
    bad = cli_runner.invoke(cli, ["plan", str(path), "--vary", "model.kind"])
    assert bad.exit_code == 2 and "model.kind" in bad.output


def test_search_space_round_trips_through_the_experiment():
    exp = jaxmem.Experiment.from_dict({"model": GPT, "plan": {"remat": ["full"], "verify": 1}})
    assert exp.plan == dataclasses.replace(SearchSpace(), remat=("full",), verify=1)
    assert jaxmem.Experiment.from_dict(exp.to_dict()).plan == exp.plan
