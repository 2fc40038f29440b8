"""The workload layer: what an MLC model directory holds, tensor by tensor.

Reads ``mlc-chat-config.json`` and the weight index (``tensor-cache.json``, or the older
``ndarray-cache.json``) without touching the weights, classifies every tensor by role, and says
how MLC's tensor parallelism shards it. Never imports tvm or pulp.
"""

from numaplan.model.config import (
    HF_CONFIG_NAME,
    MLC_CONFIG_NAME,
    ModelConfig,
    parse_mlc_config,
    read_hf_config,
    read_mlc_config,
)
from numaplan.model.dtypes import DTYPE_ITEMSIZE, dtype_itemsize, encoded_itemsize
from numaplan.model.presets import (
    LLAMA3_8B_HF,
    LLAMA3_70B_HF,
    PRESETS,
    TINY_LLAMA_HF,
    preset_config,
    write_hf_config,
)
from numaplan.model.quantization import (
    QUANTIZATIONS,
    ParamSpec,
    Quantization,
    get_quantization,
)
from numaplan.model.roles import Role, TensorRole, classify_tensor
from numaplan.model.sharding import (
    REPLICATE,
    ShardRule,
    mlc_shard_rule,
    shard_byte_ranges,
    shard_mem_nbytes,
    shard_nbytes,
    shard_shape,
    slice_shard,
)
from numaplan.model.sizes import (
    allreduce_bytes,
    allreduces_per_step,
    kv_cache_bytes_per_token,
    layer_nbytes,
    replicated_nbytes,
    total_mem_nbytes,
    total_nbytes,
    worker_mem_nbytes,
    worker_nbytes,
)
from numaplan.model.synthetic import (
    SUPPORTED_FAMILIES,
    mlc_param_specs,
    pack_shards,
    synthesize_tensor_cache,
)
from numaplan.model.tensor_cache import (
    LEGACY_TENSOR_CACHE_NAME,
    TENSOR_CACHE_NAME,
    ShardFile,
    TensorCache,
    TensorRecord,
    check_shard_files,
    find_tensor_cache,
    parse_tensor_cache,
    read_tensor_cache,
)
from numaplan.model.tensor_parallel import tp_violations, valid_tp_degrees, validate_tp
from numaplan.model.workload import TensorInfo, Workload, load_workload, workload_from_index

__all__ = [
    "DTYPE_ITEMSIZE",
    "HF_CONFIG_NAME",
    "LEGACY_TENSOR_CACHE_NAME",
    "LLAMA3_8B_HF",
    "LLAMA3_70B_HF",
    "MLC_CONFIG_NAME",
    "PRESETS",
    "QUANTIZATIONS",
    "REPLICATE",
    "SUPPORTED_FAMILIES",
    "TENSOR_CACHE_NAME",
    "TINY_LLAMA_HF",
    "ModelConfig",
    "ParamSpec",
    "Quantization",
    "Role",
    "ShardFile",
    "ShardRule",
    "TensorCache",
    "TensorInfo",
    "TensorRecord",
    "TensorRole",
    "Workload",
    "allreduce_bytes",
    "allreduces_per_step",
    "check_shard_files",
    "classify_tensor",
    "dtype_itemsize",
    "encoded_itemsize",
    "find_tensor_cache",
    "get_quantization",
    "kv_cache_bytes_per_token",
    "layer_nbytes",
    "load_workload",
    "mlc_param_specs",
    "mlc_shard_rule",
    "pack_shards",
    "parse_mlc_config",
    "parse_tensor_cache",
    "preset_config",
    "read_hf_config",
    "read_mlc_config",
    "read_tensor_cache",
    "replicated_nbytes",
    "shard_byte_ranges",
    "shard_mem_nbytes",
    "shard_nbytes",
    "shard_shape",
    "slice_shard",
    "synthesize_tensor_cache",
    "total_mem_nbytes",
    "total_nbytes",
    "tp_violations",
    "valid_tp_degrees",
    "validate_tp",
    "worker_mem_nbytes",
    "worker_nbytes",
    "workload_from_index",
    "write_hf_config",
]
