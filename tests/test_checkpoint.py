"""Checkpoints measured: orbax save and restore of the training state, into another layout."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import jaxmem

TINY = {
    "target": "cpu:8",
    "model": {"kind": "gpt", "vocab_size": 256, "seq_len": 32, "num_layers": 2, "d_model": 64,
              "num_heads": 4},
    "data": {"batch_size": 8},
    "sharding": "fsdp", "mesh": {"fsdp": -1},
    "measure": {"mode": "run", "warmup_steps": 0, "steps": 1},
    "checkpoint": {"enabled": True, "sharding": "tp", "mesh": {"data": 2, "tensor": 4}},
}


RESTORE_ONE = """
import sys
import jax, jax.numpy as jnp
jax.config.update("jax_num_cpu_devices", 8)
from jax.sharding import NamedSharding, PartitionSpec as P
from jaxmem.checkpoint import Sampler, restore, save
how, folder = sys.argv[1], sys.argv[2]
mesh = jax.make_mesh((8,), ("x",))
sharding = NamedSharding(mesh, P("x", None))
big = jax.device_put(jnp.arange(2**26, dtype=jnp.float32).reshape(8192, 8192), sharding)
expected = float(jnp.sum(big))
path, _ = save({"w": big}, folder)
big.delete()
abstract = {"w": jax.ShapeDtypeStruct((8192, 8192), jnp.float32, sharding=sharding)}
with Sampler(list(mesh.devices.flat)) as sampled:
    state = restore(path, abstract, how)
assert state["w"].sharding == sharding and float(jnp.sum(state["w"])) == expected
print(sampled.host_peak)
"""


def test_unsharded_restore_goes_through_host_memory_and_sharded_does_not(tmp_path):
    """Each restore in a fresh process (as run mode does), so neither reuses the other's
    freed memory: the unsharded one holds the whole array in host memory besides its shards."""
    peaks = {}
    for how in ("sharded", "unsharded"):
        done = subprocess.run([sys.executable, "-c", RESTORE_ONE, how, str(tmp_path / how)],
                              capture_output=True, text=True, timeout=300,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
        assert done.returncode == 0, done.stderr[-2000:]
        peaks[how] = int(done.stdout.split()[-1])
    assert peaks["unsharded"] - peaks["sharded"] > 0.5 * 2**28, peaks  # a 256 MiB array


@pytest.mark.parametrize(("changes", "field"), [
    ({"checkpoint": {"enabled": False, "restore": "unsharded"}}, "checkpoint.enabled"),
    ({"checkpoint": {"enabled": True, "mesh": {"data": 3}}}, "checkpoint"),
    ({"checkpoint": {"enabled": True, "sharding": "nope"}}, "checkpoint.sharding"),
    ({"task": "inference"}, "checkpoint"),
])
def test_bad_checkpoint_settings_name_the_field(changes, field):
    with pytest.raises(jaxmem.ConfigError) as e:
        jaxmem.Experiment.from_dict({**TINY, **changes}).grid()
    assert str(e.value).startswith(f"{field}:"), str(e.value)


def test_checkpoint_outside_run_mode_is_bad_input(tmp_path):
    exp = jaxmem.Experiment.from_dict({**TINY, "measure": {}})
    with pytest.raises(jaxmem.ConfigError, match="checkpoint.enabled: saves and restores"):
        jaxmem.run(exp, out=tmp_path / "out")
    assert not (tmp_path / "out").exists()
