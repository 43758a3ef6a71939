"""Compile-only NVIDIA GPU devices through the jax CUDA plugin (extra gpu-targets)."""

from __future__ import annotations

import pytest

import jaxmem
from jaxmem import _gpu
from jaxmem.errors import ConfigError

pytestmark = pytest.mark.gpu_targets
needs_plugin = pytest.mark.skipif(
    not _gpu.plugin_available(),
    reason="needs the jax CUDA plugin (jax_plugins.xla_cuda12): pip install 'jaxmem[gpu-targets]'")

H100 = "NVIDIA H100 80GB HBM3"


def compile_quickstart(quickstart, *overrides) -> jaxmem.Record:
    """The quickstart's first configuration (remat=none, fp32) compiled for eight virtual
    H100s through the target, the batch split over all of them."""
    exp = jaxmem.Experiment.from_dict(quickstart.to_dict(), [
        "target=gpu:h100x8", "mesh.data=-1", "sweep.remat=[none]", "sweep.precision=[fp32]",
        *overrides])
    (record,) = jaxmem.run(exp)
    assert record.ok, record.error
    return record


@needs_plugin
def test_quickstart_compiles_for_eight_virtual_h100s(quickstart):
    r = compile_quickstart(quickstart)
    compiled = r.compiled
    assert (compiled["platform"], compiled["device_kind"], compiled["num_devices"]) == (
        "gpu", H100, 8)
    assert compiled["argument_bytes"] > 0 and compiled["temp_bytes"] > 0
    assert r.env["device_count"] == 8 and r.env["device_kind"] == H100
    usable = r.env["device_memory_bytes"]
    assert usable == int(0.75 * _gpu.GPU_KINDS["h100"].memory_bytes)  # JAX's allocator share
    assert compiled["fits_basis"] == "total_bytes" and compiled["fits"] is True
    assert compiled["headroom_bytes"] == usable - compiled["total_bytes"]


@needs_plugin
def test_bf16_mixed_lowers_temp_on_virtual_h100s(quickstart):
    """XLA:CPU computes bf16 in f32; XLA:GPU does not, so the saving shows."""
    fp32 = compile_quickstart(quickstart, "precision=fp32").compiled
    bf16 = compile_quickstart(quickstart, "precision=bf16-mixed").compiled
    assert bf16["temp_bytes"] < 0.8 * fp32["temp_bytes"]


@needs_plugin
def test_mem_fraction_sets_the_share_fits_checks(quickstart):
    r = compile_quickstart(quickstart, "measure.mem_fraction=0.5")
    assert r.env["device_memory_bytes"] == int(0.5 * _gpu.GPU_KINDS["h100"].memory_bytes)
    assert "measure.mem_fraction" in r.env["device_memory_source"]


@needs_plugin
@pytest.mark.parametrize("topology", ["2x1x8", "1x2x8"])
def test_two_nodes_give_sixteen_devices(topology):
    devices = _gpu.gpu_devices("h100", topology)
    assert len(devices) == 16
    assert len({d.id for d in devices}) == 16
    assert {d.device_kind for d in devices} == {H100}
    assert {d.platform for d in devices} == {"gpu"}


@needs_plugin
def test_devices_are_cached_and_cpu_stays_the_default_backend():
    import jax

    assert _gpu.gpu_devices("h100", "1x1x8") is _gpu.gpu_devices("h100", "1x1x8")
    assert jax.default_backend() == "cpu"


@pytest.mark.parametrize("topology", ["8", "2x8", "0x1x8", "1x1x0", "axbxc", "1x1x8x2"])
def test_bad_topology_raises_config_error(topology):
    with pytest.raises(ConfigError, match=r"^target\.name: topology must be") as e:
        _gpu.gpu_devices("h100", topology)
    assert e.value.value == f"gpu:h100:{topology}"


def test_unknown_kind_lists_the_kinds():
    with pytest.raises(ConfigError, match="valid choices: a100-40, a100-80, b200, h100, h200"):
        _gpu.gpu_devices("h300", "1x1x8")


def test_missing_plugin_says_what_to_install(monkeypatch):
    monkeypatch.setattr(_gpu, "plugin_available", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'jaxmem\[gpu-targets\]'"):
        _gpu.gpu_devices.__wrapped__("h100", "1x1x8")  # past the cache


@pytest.mark.parametrize("kind", sorted(_gpu.GPU_KINDS))
def test_spec_files_have_what_the_plugin_needs(kind):
    gpu = _gpu.GPU_KINDS[kind]
    text = gpu.config_file.read_text(encoding="utf-8")
    fields = _gpu.config_fields(text)
    assert text.startswith("# NVIDIA")
    assert all(fields.get(f, 0) > 0 for f in _gpu._REQUIRED)
    assert gpu.memory_bytes == fields["device_memory_size"]
    assert 40 * 10**9 < gpu.memory_bytes < 200 * 10**9
    assert 'platform_name: "CUDA"' in text and "cuda_compute_capability" in text


@needs_plugin
def test_explain_on_a_virtual_h100(quickstart):
    from jaxmem.explain import explain_program
    exp = jaxmem.Experiment.from_dict(quickstart.to_dict(), [
        "target=gpu:h100x1", "sweep.remat=[none,full]", "sweep.precision=[fp32]"])
    none, full = (explain_program(jaxmem.build_program(jaxmem.resolve(p.config)), p.name)
                  for p in exp.grid())
    for e in (none, full):
        assert e.device_kind == H100
        assert sum(b.bytes for b in e.buffers) == e.peak_bytes == max(e.timeline)
        assert e.compiled["argument_bytes"] <= e.peak_bytes <= e.compiled["total_bytes"]
    assert full.by_category["saved activation"] < none.by_category["saved activation"] / 2


@needs_plugin
def test_the_llama_h100_plan_compiles_shrunk():
    """experiments/plan_llama8b_h100x8.yaml with Llama 3 8B's heads and key/value heads but a
    small width and depth: FSDP over eight virtual H100s compiles and fits."""
    exp = jaxmem.Experiment.from_yaml("experiments/plan_llama8b_h100x8.yaml", [
        "model.num_layers=2", "model.seq_len=256", "model.d_model=512", "model.mlp_dim=1024",
        "model.vocab_size=4096"])
    (r,) = jaxmem.run(exp)
    assert r.ok, r.error
    assert r.compiled["num_devices"] == 8 and r.compiled["fits"] is True
    assert r.analytic["param_bytes_per_device"] * 8 == pytest.approx(
        r.analytic["param_bytes"], rel=0.01)
