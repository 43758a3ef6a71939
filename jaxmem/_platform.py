"""Which platforms jaxmem's commands let JAX start when ``JAX_PLATFORMS`` is unset.

With libtpu installed (the ``tpu-targets`` extra, for virtual TPU targets), JAX tries a TPU
first; on a machine without TPU chips libtpu then prints initialisation errors ("Failed to find
host bounds", "unexpected worker hostname") on every command. So when ``JAX_PLATFORMS`` is
unset, the commands leave the TPU out unless this machine has TPU chips (the device files a
TPU VM exposes: ``/dev/accel*`` or ``/dev/vfio/<n>``), and keep CUDA where an NVIDIA GPU and
the CUDA plugin are present. Virtual targets (``tpu:``, ``gpu:``) compile either way. A set
``JAX_PLATFORMS`` (even empty: JAX's own choice) is left alone; the Python API never changes it.

Example:
  >>> from jaxmem import _platform
  >>> _platform.default_platforms({"JAX_PLATFORMS": "cuda"}) is None  # the user's choice
  True
"""

from __future__ import annotations

import glob
import importlib.util
import os
from collections.abc import Mapping

#: device files of TPU chips on a TPU VM (v4: accel; v5e, v5p, v6e: vfio groups)
TPU_DEVICE_FILES = ("/dev/accel*", "/dev/vfio/[0-9]*")
#: packages of the jax CUDA plugin
CUDA_PLUGINS = ("jax_plugins.xla_cuda12", "jax_plugins.xla_cuda13", "jax_cuda12_plugin",
                "jax_cuda13_plugin")


def tpu_chips_present() -> bool:
    return any(glob.glob(pattern) for pattern in TPU_DEVICE_FILES)


def gpu_present() -> bool:
    if not os.path.exists("/dev/nvidia0"):
        return False
    for name in CUDA_PLUGINS:
        try:
            if importlib.util.find_spec(name) is not None:
                return True
        except ModuleNotFoundError:  # the parent package is missing
            continue
    return False


def default_platforms(environ: Mapping[str, str] | None = None) -> str | None:
    """What ``JAX_PLATFORMS`` the commands use, or None to leave JAX's default."""
    environ = os.environ if environ is None else environ
    if "JAX_PLATFORMS" in environ or tpu_chips_present():
        return None
    return "cuda,cpu" if gpu_present() else "cpu"


def apply() -> None:
    """Sets the default for this process and the processes it starts (before JAX's backends
    start: the CLI calls it first)."""
    platforms = default_platforms()
    if platforms is None:
        return
    os.environ["JAX_PLATFORMS"] = platforms
    import jax

    jax.config.update("jax_platforms", platforms)
