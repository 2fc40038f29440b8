"""The proposal's model-level API: ``LlamaConfig`` with NUMA settings, and ``LlamaForCausalLM``.

The MLC proposal puts ``numa_tensor_parallel``, ``numa_inter_node_penalty`` and
``numa_prefer_local_memory`` on MLC's ``LlamaConfig`` and says the model then "automatically uses
NUMA optimizations". In numaplan a model definition does not decide placement: the planner does,
per machine, when the library is built. So here the NUMA fields are the placement request the
model carries, and they reach the planner through :meth:`LlamaConfig.engine_config` (or
``numaplan compile`` options of the same names); the architecture fields are MLC's, with the
Llama-2-7B values as defaults, and :class:`LlamaForCausalLM` is numaplan's Relax definition
(:mod:`numaplan.nn.decoder`, MLC's parameter names and shapes) for one of
``tensor_parallel_shards`` workers.

Examples
--------
>>> cfg = LlamaConfig(num_hidden_layers=2, tensor_parallel_shards=2,
...                   numa_tensor_parallel=True, numa_inter_node_penalty=0.3)
>>> cfg.mlc_chat_config("q4f16_1")["model_config"]["num_key_value_heads"]
32
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from numaplan.cost import DEFAULT_PENALTY, Penalty
from numaplan.engine import EngineConfig
from numaplan.model.architecture import Architecture, parse_architecture
from numaplan.model.random_model import chat_config


class LlamaConfig(BaseModel):
    """MLC's Llama configuration (field names of ``mlc_llm/model/llama/llama_model.py``) plus
    the proposal's NUMA settings.

    ``num_key_value_heads`` and ``head_dim`` default, as in MLC, to ``num_attention_heads``
    and ``hidden_size // num_attention_heads``. An unknown field is an error, so a misspelt
    option is not silently dropped.
    """

    model_config = ConfigDict(extra="forbid")

    hidden_size: int = Field(default=4096, gt=0)
    intermediate_size: int = Field(default=11008, gt=0)
    num_attention_heads: int = Field(default=32, gt=0)
    num_hidden_layers: int = Field(default=32, gt=0)
    rms_norm_eps: float = Field(default=1e-5, gt=0)
    vocab_size: int = Field(default=32000, gt=0)
    position_embedding_base: float = Field(default=10000.0, gt=0)
    context_window_size: int = 4096
    prefill_chunk_size: int = Field(default=2048, gt=0)
    num_key_value_heads: int | None = Field(default=None, gt=0)
    head_dim: int | None = Field(default=None, gt=0)
    tensor_parallel_shards: int = Field(default=1, gt=0)
    max_batch_size: int = Field(default=1, gt=0)
    tie_word_embeddings: bool = False
    rope_scaling: dict[str, Any] | None = None
    numa_tensor_parallel: bool = False
    numa_inter_node_penalty: Penalty = DEFAULT_PENALTY
    numa_prefer_local_memory: bool = True
    numa_nodes: list[int] | None = None

    @model_validator(mode="after")
    def _defaults_as_mlc(self) -> LlamaConfig:
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of "
                                 f"num_attention_heads={self.num_attention_heads}; give head_dim")
            self.head_dim = self.hidden_size // self.num_attention_heads
        return self

    def mlc_chat_config(self, quantization: str = "q0f16") -> dict[str, Any]:
        """The ``mlc-chat-config.json`` MLC's ``gen_config`` writes for this configuration."""
        return chat_config(
            "llama", quantization, hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads or self.num_attention_heads,
            num_hidden_layers=self.num_hidden_layers, vocab_size=self.vocab_size,
            head_dim=self.head_dim, tie_word_embeddings=self.tie_word_embeddings,
            context_window_size=self.context_window_size,
            prefill_chunk_size=self.prefill_chunk_size,
            rope_theta=self.position_embedding_base, rms_norm_eps=self.rms_norm_eps,
            rope_scaling=self.rope_scaling)

    def architecture(self, quantization: str = "q0f16") -> Architecture:
        """The architecture numaplan's model definition builds (validated as a config file)."""
        return parse_architecture(self.mlc_chat_config(quantization))

    def engine_config(self, model: str, **fields: Any) -> EngineConfig:
        """An :class:`~numaplan.engine.EngineConfig` for a model directory of this
        architecture, carrying this configuration's NUMA settings and W (``fields``: any other
        EngineConfig field)."""
        return EngineConfig(
            model=model, tensor_parallel_shards=self.tensor_parallel_shards,
            numa_tensor_parallel=self.numa_tensor_parallel,
            numa_inter_node_penalty=self.numa_inter_node_penalty,
            numa_prefer_local_memory=self.numa_prefer_local_memory,
            numa_nodes=self.numa_nodes, **fields)


def LlamaForCausalLM(config: LlamaConfig, quantization: str = "q0f16") -> Any:
    """numaplan's Relax model (a ``tvm.relax.frontend.nn.Module``) for one of the config's
    ``tensor_parallel_shards`` workers, with MLC's parameter names and shapes; the config rides
    along as ``.config`` (its NUMA settings are the plan request, see the module docstring).

    Raises
    ------
    ModelFormatError
        When the heads or the intermediate size do not split over ``tensor_parallel_shards``.
    """
    from numaplan.model.quantization import get_quantization
    from numaplan.nn.decoder import CausalLM

    arch = config.architecture(quantization)
    arch.per_shard(config.tensor_parallel_shards)  # the error names what does not split
    model = CausalLM(arch, get_quantization(quantization), config.tensor_parallel_shards)
    model.config = config
    return model
