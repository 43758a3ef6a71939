"""The base of every model section: a registry of kinds, and the hooks the rest of jaxmem asks.

A model kind is a frozen dataclass registered under its ``kind`` (``model: {kind: gpt, ...}``).
Everything model-specific that the harness needs is a hook here, so nothing else branches on
the kind: which checkpoint names the model tags, its layer stack, its freeze presets, which
tasks it can do, what the platform or the mesh must offer.

Example:
  >>> from jaxmem.models.base import ModelConfig
  >>> sorted(ModelConfig.KINDS)
  ['cnn', 'custom', 'encoder', 'gpt', 'llama', 'mlp']
  >>> ModelConfig.KINDS["mlp"]().checkpoint_names()
  ()
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from jaxmem import _convert
from jaxmem.errors import ConfigError, check_choice

if TYPE_CHECKING:
    from jaxmem.config import InferenceConfig
    from jaxmem.models.anatomy import Anatomy
    from jaxmem.models.workload import BuildOptions, Workload
    from jaxmem.sharding import Rules


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Base of the model sections; ``kind`` picks the registered subclass."""

    kind: str = "gpt"
    KINDS: ClassVar[dict[str, type[ModelConfig]]] = {}
    #: parameter path of the block list (``freeze.blocks``), and the embeddings' patterns
    BLOCKS_PATH: ClassVar[str | None] = None
    EMBEDDING_PATTERNS: ClassVar[tuple[str, ...]] = ()
    #: ``(glob over parameter paths, logical axes)``: how ``jaxmem.sharding`` splits them;
    #: parameters matching none are split by the ZeRO axes alone
    PARAM_AXES: ClassVar[tuple[tuple[str, tuple[str | None, ...]], ...]] = ()
    #: the model decodes one token at a time over a KV cache (``task: decode``)
    DECODES: ClassVar[bool] = False
    #: the model has transformer MLPs that ``inference.prune`` can prune
    PRUNABLE: ClassVar[bool] = False
    #: building the model runs the user's code (a custom factory): with worker processes the
    #: parent only :meth:`precheck` s it, so that a crash in that code is a row, not the end
    RUNS_USER_CODE: ClassVar[bool] = False

    @classmethod
    def register(cls, kind: str):
        """Class decorator: makes ``kind: <kind>`` in YAML build the decorated section."""

        def deco(sub: type[ModelConfig]) -> type[ModelConfig]:
            cls.KINDS[kind] = sub
            return sub

        return deco

    @classmethod
    def dispatch(cls, raw: Mapping[str, Any]) -> type[ModelConfig]:
        """The section class for ``raw['kind']`` (default ``gpt``)."""
        kind = raw.get("kind", "gpt")
        check_choice("kind", kind, cls.KINDS, what="model kind")
        return cls.KINDS[kind]

    def __post_init__(self) -> None:
        _convert.check_types(self)
        if type(self).KINDS.get(self.kind) is not type(self):
            check_choice("kind", self.kind, self.KINDS, what="model kind")
            raise ConfigError("kind", f"does not match {type(self).__name__}", value=self.kind)

    # ------------------------------------------------------------------------- hooks

    def build(self, opts: BuildOptions) -> Workload:
        """The model constructor, batch shapes and loss for this section."""
        raise NotImplementedError(f"model kind {self.kind!r} does not define build()")

    def precheck(self, opts: BuildOptions) -> None:
        """What can be checked about :meth:`build` without running it (ConfigError)."""

    def checkpoint_names(self) -> tuple[str, ...] | None:
        """Names this model tags with ``checkpoint_name`` (None: unknown until traced, e.g.
        a custom model)."""
        return ()

    def layer_count(self) -> tuple[int, bool] | None:
        """``(blocks, scanned)`` of the stack jaxmem applies remat to; None where the model
        applies remat itself (custom models)."""
        return None

    def check_task(self, task: str, inference: InferenceConfig) -> None:
        """Raises ConfigError for a forward-only task or setting this model cannot do
        (``DECODES``, ``PRUNABLE``)."""
        if task == "decode" and not self.DECODES:
            raise ConfigError("task", f"decode needs a model with a KV cache; model kind "
                              f"{self.kind!r} has none", value=task, choices=["train",
                                                                              "inference"])
        if inference.prune != "none" and not self.PRUNABLE:
            raise ConfigError("inference.prune", f"prunes transformer MLPs; model kind "
                              f"{self.kind!r} has none", value=inference.prune)

    def freeze_patterns(self, blocks: int, embeddings: bool) -> tuple[str, ...]:
        """Parameter path patterns for the freeze presets (the first ``blocks`` blocks, the
        embeddings); ConfigError where this model has no such preset."""
        for field, wanted, available in (("freeze.blocks", blocks, self.BLOCKS_PATH),
                                         ("freeze.embeddings", embeddings,
                                          self.EMBEDDING_PATTERNS)):
            if wanted and not available:
                raise ConfigError(field, f"model kind {self.kind!r} has no such preset; use "
                                  "freeze.patterns", value=wanted)
        layers = self.layer_count()
        if blocks and layers is not None:
            count, scanned = layers
            if scanned:
                raise ConfigError("freeze.blocks", "needs model.stack=loop: a scanned stack "
                                  "keeps every block in one array", value=blocks)
            if blocks > count:
                raise ConfigError("freeze.blocks", f"exceeds the model's {count} blocks",
                                  value=blocks)
        patterns = tuple(f"{self.BLOCKS_PATH}/{i}/*" for i in range(blocks))
        return patterns + (self.EMBEDDING_PATTERNS if embeddings else ())

    def anatomy(self, opts: BuildOptions, batch: int) -> Anatomy | None:
        """Parameters and forward values of a training step on ``batch`` examples, from shape
        formulas (``jaxmem.estimate``); None where only tracing can tell (custom models)."""
        return None

    def check_platform(self, platform: str) -> None:
        """Raises Unsupported when the model cannot run on ``platform`` (e.g. cuDNN on CPU)."""

    def check_sharding(self, mesh_shape: Mapping[str, int], rules: Rules) -> None:
        """Raises ConfigError if the mesh splits something the model cannot split."""
