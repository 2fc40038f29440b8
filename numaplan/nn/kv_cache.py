"""TVM's paged KV cache for a numaplan model, built as MLC's ``create_tir_paged_kv_cache`` is.

MLC declares ``PagedKVCache.create_generic`` and lets its ``DispatchKVCacheCreation`` pass swap
in ``TIRPagedKVCache(target=...)``; without mlc_llm the TIR cache is constructed directly. For an
``llvm`` target TVM selects its CPU attention kernels. The cache applies the rotary embedding
(``RopeMode.NORMAL``: to q and k, before k is appended), so the model never computes it.

Runtime facts the engine must respect (checked with apache-tvm 0.27, see the runtime's driver):
the page size must be 16, and every argument of the creation function is a one-element shape.
"""

from __future__ import annotations

import tvm
from tvm import relax, tirx
from tvm.relax.frontend.nn.llm.kv_cache import PagedKVCache, RopeMode, TIRPagedKVCache

from numaplan.model.architecture import Architecture
from numaplan.model.quantization import Quantization

#: The page size TVM 0.27's CPU kernels assume (others fail at the first prefill).
PAGE_SIZE = 16


def paged_kv_cache(arch: Architecture, quant: Quantization, shards: int,
                   max_batch_size: tirx.Var, max_total_seq_len: tirx.Var,
                   prefill_chunk_size: tirx.Var, page_size: tirx.Var,
                   support_sliding_window: tirx.Var) -> PagedKVCache:
    """The cache of one tensor-parallel worker (its share of the KV heads), in the model dtype.

    Must be called while a module is being exported (it adds its kernels to the module); the
    target is the current one (:func:`numaplan.nn.export.export_model` sets it).
    """
    from numaplan.nn.kernels import current_policy

    target = tvm.target.Target.current(allow_none=True) or tvm.target.Target("llvm")
    per = arch.per_shard(shards)
    return TIRPagedKVCache(
        attn_kind="mha",
        max_batch_size=max_batch_size,
        max_total_seq_len=max_total_seq_len,
        prefill_chunk_size=prefill_chunk_size,
        page_size=page_size,
        support_sliding_window=support_sliding_window,
        layer_partition=relax.ShapeExpr([0, arch.num_hidden_layers]),
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=per["num_attention_heads"],
        num_key_value_heads=per["num_key_value_heads"],
        qk_head_dim=arch.head_dim,
        v_head_dim=arch.head_dim,
        mla_original_qk_head_dim=0,
        mla_original_v_head_dim=0,
        rope_mode=RopeMode.NORMAL,
        rope_scale=1,
        rope_theta=arch.rope_theta,
        rope_scaling=dict(arch.rope_scaling or {}),
        rope_ext_factors=relax.prim_value(0),
        rotary_dim=arch.head_dim,
        enable_disaggregation=False,
        dtype=current_policy().kv_dtype or quant.model_dtype,
        target=target,
    )
