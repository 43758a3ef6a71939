"""Shared helpers of the estimate's tests: configurations and XLA's figure for them."""

from __future__ import annotations

import dataclasses
import importlib

import pytest

import jaxmem
from jaxmem import _convert
from jaxmem.build import build_program
from jaxmem.compiled import compiled_memory
from jaxmem.config import Config

estimate_module = importlib.import_module("jaxmem.estimate")  # the function shadows it

GPT = {"kind": "gpt", "vocab_size": 512, "seq_len": 64, "num_layers": 2, "d_model": 64,
       "num_heads": 4}
CNN = {"kind": "cnn", "image_size": 64, "channels": [64, 128]}


def make_config(**raw) -> Config:
    """A validated configuration from raw YAML-like fields."""
    return _convert.from_dict(Config, raw)


def compiled_total(config: Config) -> int:
    """XLA's total bytes per device for ``config``'s step (a compile on abstract shapes)."""
    program = build_program(jaxmem.resolve(config))
    return compiled_memory(program.step, *program.abstract_args).total_bytes


def set_backend(monkeypatch: pytest.MonkeyPatch, platform: str, **flags) -> None:
    """Replace ``platform``'s backend profile with ``flags`` changed, for this test."""
    monkeypatch.setitem(estimate_module.BACKENDS, platform, dataclasses.replace(
        estimate_module.BACKENDS[platform], **flags))


def rule_errors(monkeypatch: pytest.MonkeyPatch, config: Config, platform: str = "cpu",
                **off) -> tuple[float, float]:
    """The estimate's error against XLA's compiled total of ``config`` (estimate / compiled
    - 1) with ``platform``'s rules, then with the ``off`` flags changed (for this test)."""
    total = compiled_total(config)
    with_rule = estimate_module.estimate(config).total_bytes / total - 1
    set_backend(monkeypatch, platform, **off)
    return with_rule, estimate_module.estimate(config).total_bytes / total - 1
