"""Test set-up shared by tests/ and the doctests in jaxmem/: CPU with 8 fake devices, strict
numerics. Runs before jax is imported anywhere."""

import os

os.environ["JAX_PLATFORMS"] = "cpu"
# pytest-xdist hands its workers the terminal's COLUMNS; tables would follow it (a test that
# wants a width passes COLUMNS itself)
os.environ.pop("COLUMNS", None)
_flag = "--xla_force_host_platform_device_count=8"
if _flag not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_flag}".strip()

import jax  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
