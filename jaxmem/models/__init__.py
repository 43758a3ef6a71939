"""Built-in models (``mlp``, ``cnn``, ``gpt``, ``encoder``, ``llama``) and user models (``custom``).

Each model kind is a config section (``model: {kind: ..., ...}``, a :class:`ModelConfig`
subclass) whose ``build`` returns a :class:`Workload`: the model constructor, the batch's shapes
and the loss. Nothing here imports ``jaxmem.config``: the configuration depends on the models,
not the other way round.
"""

from jaxmem.models.base import ModelConfig
from jaxmem.models.cnn import CNN, CNNConfig
from jaxmem.models.custom import CustomConfig
from jaxmem.models.encoder import Encoder, EncoderConfig
from jaxmem.models.gpt import GPT, GPTConfig
from jaxmem.models.llama import LlamaConfig
from jaxmem.models.mlp import MLP, MLPConfig
from jaxmem.models.transformer import CHECKPOINT_NAMES, TransformerConfig
from jaxmem.models.workload import Batch, BuildOptions, Workload

__all__ = [
    "CHECKPOINT_NAMES",
    "CNN",
    "CNNConfig",
    "CustomConfig",
    "Encoder",
    "EncoderConfig",
    "GPT",
    "GPTConfig",
    "LlamaConfig",
    "MLP",
    "MLPConfig",
    "ModelConfig",
    "TransformerConfig",
    "Batch",
    "BuildOptions",
    "Workload",
]
