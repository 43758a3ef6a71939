"""Every shipped experiment file validates, and runs: each row measured, none failed."""

from __future__ import annotations

from pathlib import Path

import pytest

import jaxmem
from jaxmem.report import render_text

FILES = sorted((Path(__file__).resolve().parents[1] / "experiments").glob("*.yaml"))
# run elsewhere: the quickstart by the session fixture, GPT-2 small by the benchmark, the
# GPT-2-sized sharding files shrunk below (plan_v5e whole: `make bench-plan`, ~1 min)
COVERED = {"quickstart", "gpt2_small", "sharding", "plan_v5e", "llama", "plan_llama8b_v5p",
           "fsdp_trap",  # 2 x 45 s at 256 chips: recorded in benchmarks/results/fsdp_trap
           "plan_llama8b_h100x8",  # the llama files shrunk below (h100: make test-gpu-targets)
           "checkpoint"}  # shrunk below
#: sweeps that change only what compile mode does not measure (allocator settings: run mode)
SAME_MEMORY = {"allocator"}
MEMORY_FIGURES = ("compiled.total_bytes", "compiled.host_temp_bytes", "analytic.residual_bytes",
                  "analytic.opt_state_bytes", "analytic.param_bytes", "analytic.kv_cache_bytes")
SHRINK = ["model.num_layers=2", "model.seq_len=128", "model.d_model=192",
          "model.vocab_size=4096"]


@pytest.mark.parametrize("name", ["sharding",
                                  pytest.param("plan_v5e", marks=pytest.mark.tpu_target)])
def test_sharding_experiments_run_shrunk(name):
    path = next(f for f in FILES if f.stem == name)
    overrides = SHRINK + (["target=tpu:v5e:4x4", "data.batch_size=16"] if name == "plan_v5e"
                          else [])
    records = jaxmem.run(jaxmem.Experiment.from_yaml(path, overrides))
    assert all(r.ok for r in records), [(r.name, r.error) for r in records if not r.ok]
    for r in records:
        assert r.compiled["num_devices"] == (16 if name == "plan_v5e" else 8)
    if name == "sharding":  # dp, fsdp, tp, fsdp+tp: everything but dp splits the state
        per_device = [r.analytic["param_bytes_per_device"] for r in records]
        assert per_device[0] == records[0].analytic["param_bytes"]
        assert all(p < per_device[0] / 3 for p in per_device[1:])
    else:
        assert records[0].compiled["fits"] is True


def test_checkpoint_experiment_runs_shrunk(tmp_path):
    """FSDP over 8 saved, restored into FSDP and into TP 2x4, sharded and through the host."""
    path = next(f for f in FILES if f.stem == "checkpoint")
    records = jaxmem.run(jaxmem.Experiment.from_yaml(path, SHRINK), out=tmp_path)
    assert all(r.ok for r in records), [(r.name, r.error) for r in records if not r.ok]
    assert [r.runtime["checkpoint_restored_into"] for r in records] == [
        "fsdp over data=1 fsdp=8 tensor=1"] * 2 + ["tp over data=2 fsdp=1 tensor=4"] * 2
    assert [r.runtime["checkpoint_restore"] for r in records] == ["sharded", "unsharded"] * 2
    for r in records:
        rt = r.runtime
        assert rt["checkpoint_restored_equal"] is True
        # parameters and both Adam moments in float32, and the step counter
        assert rt["checkpoint_state_bytes"] == pytest.approx(3 * r.analytic["param_bytes"],
                                                             abs=64)
        assert 0.5 < rt["checkpoint_bytes_on_disk"] / rt["checkpoint_state_bytes"] < 1.5
        assert rt["checkpoint_save_s"] > 0 and rt["checkpoint_restore_s"] > 0
        assert rt["checkpoint_restore_device_peak_bytes"] is None  # XLA:CPU: no memory_stats
        assert Path(rt["checkpoint_path"]).is_relative_to(tmp_path / "artifacts")


#: Llama 3's heads and key/value heads, a small width, depth and vocabulary
LLAMA_SHRINK = ["model.num_layers=2", "model.seq_len=128", "model.d_model=512",
                "model.mlp_dim=1024", "model.vocab_size=4096"]


@pytest.mark.parametrize("name, overrides", [
    ("llama", []),
    pytest.param("plan_llama8b_v5p", ["target=tpu:v5p:2x2x1", "data.batch_size=4"],
                 marks=pytest.mark.tpu_target),
])
def test_llama_experiments_run_shrunk(name, overrides):
    path = next(f for f in FILES if f.stem == name)
    records = jaxmem.run(jaxmem.Experiment.from_yaml(path, LLAMA_SHRINK + overrides))
    assert all(r.ok for r in records), [(r.name, r.error) for r in records if not r.ok]
    if name == "llama":  # remat none, minimal, full: less kept each time
        saved = [r.analytic["residual_bytes"] for r in records]
        assert saved == sorted(saved, reverse=True) and len(set(saved)) == 3
    else:
        assert records[0].compiled["num_devices"] == 4 and records[0].compiled["fits"] is True


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_experiment_file_validates(path):
    exp = jaxmem.Experiment.from_yaml(path)
    names = [p.name for p in exp.grid()]
    assert len(names) == len(set(names)) >= 1


@pytest.mark.parametrize("path", [f for f in FILES if f.stem not in COVERED],
                         ids=lambda p: p.stem)
def test_experiment_runs(path, monkeypatch):
    monkeypatch.chdir(path.parents[1])  # custom_model.yaml imports examples/ from the root
    records = jaxmem.run(jaxmem.Experiment.from_yaml(path))
    assert all(r.ok for r in records), [(r.name, r.error) for r in records if not r.ok]
    shown = render_text(records, width=1000)
    assert all(f" {r.name} " in shown for r in records)
    if len(records) > 1 and path.stem not in SAME_MEMORY:  # the sweep changes memory
        figures = {tuple(r.get(f) for f in MEMORY_FIGURES) for r in records}
        assert len(figures) > 1, f"every configuration of {path.stem} measured the same"


def test_section_sweeps_merge_into_the_base_section():
    exp = jaxmem.Experiment.from_dict({
        "measure": {"mode": "run", "steps": 3},
        "sweep": {"measure": [{}, {"preallocate": False}],
                  "remat": [{"policy": "full", "every": 2}]}})
    points = exp.grid()
    assert [p.name for p in points] == [
        "measure[base],remat[policy=full every=2]",
        "measure[preallocate=false],remat[policy=full every=2]"]
    assert [p.config.measure.steps for p in points] == [3, 3]
    assert points[1].config.measure.preallocate is False
    assert points[0].config.remat.every == 2
