"""What a tensor is for, read from its name.

MLC names parameters after the module path of its nn model, and every family spells those
differently (Llama ``self_attn.qkv_proj``, Qwen2 ``self_attn.c_attn``, early Phi-3
``mixer.qkv_proj`` / ``mixer.out_proj`` / ``ln``, GPT-style ``attn.c_proj`` / ``mlp.c_fc``...).
So the role comes from the *last module name* (plus, for the ambiguous ``c_proj`` / ``dense``,
whether it sits under an attention or an MLP block), never from one family's full names.

A bias takes the role of the linear it belongs to (``param == "bias"``): the shard rule of a
column-parallel bias follows its weight (Qwen2's ``c_attn.bias`` is split q|k|v like the weight),
while a row-parallel bias stays whole. Only a bias whose owner is not recognised gets
:attr:`Role.BIAS`. The 2023 caches name parameters ``param_0..param_N``; those carry no
information, so they are :attr:`Role.OTHER` and replicated.
"""

from __future__ import annotations

import re
from enum import StrEnum

from numaplan._base import Frozen


class Role(StrEnum):
    """The part of the network a tensor belongs to."""

    EMBEDDING = "embedding"
    ATTN_QKV = "attn_qkv"
    ATTN_OUT = "attn_out"
    MLP_IN = "mlp_in"
    MLP_OUT = "mlp_out"
    NORM = "norm"
    BIAS = "bias"
    LM_HEAD = "lm_head"
    OTHER = "other"


class TensorRole(Frozen):
    """The classification of one tensor name.

    ``param`` is the last name component (``weight``, ``q_weight``, ``q_scale``, ``bias``...);
    ``fused`` says the module concatenates several projections on dim 0 (qkv, gate|up), which
    is what makes MLC split it per segment.
    """

    role: Role
    layer: int | None = None
    param: str = ""
    fused: bool = False


# Last module names, lower-cased.
_QKV_FUSED = frozenset({"qkv_proj", "c_attn", "query_key_value", "wqkv", "qkv", "w_pack"})
_QKV_SPLIT = frozenset({"q_proj", "k_proj", "v_proj", "query", "key", "value", "wq", "wk", "wv"})
_ATTN_OUT = frozenset({"o_proj", "out_proj", "wo"})
_MLP_IN_FUSED = frozenset({"gate_up_proj", "gate_up", "w13", "up_gate_proj"})
_MLP_IN_SPLIT = frozenset({"up_proj", "gate_proj", "c_fc", "fc1", "fc_in", "w1", "w3",
                           "dense_h_to_4h"})
_MLP_OUT = frozenset({"down_proj", "fc2", "fc_out", "w2", "dense_4h_to_h"})
_LM_HEAD = frozenset({"lm_head", "embed_out"})
_EMBEDDING = frozenset({"wte", "embd", "embed", "embed_tokens", "word_embeddings",
                        "tok_embeddings", "embedding", "embeddings"})
# Names whose meaning depends on the enclosing block.
_CONTEXT_OUT = frozenset({"c_proj", "dense", "proj"})
_ATTN_BLOCKS = frozenset({"self_attn", "attn", "attention", "self_attention", "mixer"})
_MLP_BLOCKS = frozenset({"mlp", "ffn", "feed_forward", "feedforward"})

_LEGACY = re.compile(r"param_\d+")
_NORM = re.compile(r".*norm.*|ln(_?[a-z0-9]+)?")


def classify_tensor(name: str) -> TensorRole:
    """Classify an MLC parameter name.

    Parameters
    ----------
    name
        The record name, e.g. ``"model.layers.3.self_attn.qkv_proj.q_weight"``.

    Returns
    -------
    TensorRole
        The role, the layer index (the first all-digit component, ``None`` outside the
        repeated blocks), the parameter kind and whether the module is fused.

    Examples
    --------
    >>> r = classify_tensor("model.layers.3.self_attn.qkv_proj.q_weight")
    >>> (r.role.value, r.layer, r.param, r.fused)
    ('attn_qkv', 3, 'q_weight', True)
    >>> classify_tensor("transformer.h.0.mixer.out_proj.weight").role.value
    'attn_out'
    """
    if _LEGACY.fullmatch(name):
        return TensorRole(role=Role.OTHER)
    parts = name.split(".")
    param = parts[-1] if len(parts) > 1 else ""
    modules = [p.lower() for p in (parts[:-1] if len(parts) > 1 else parts)]
    layer = next((int(p) for p in modules if p.isdigit()), None)
    role, fused = _module_role(modules)
    if role is None:
        role = Role.BIAS if param == "bias" else Role.OTHER
    return TensorRole(role=role, layer=layer, param=param, fused=fused)


def _module_role(modules: list[str]) -> tuple[Role | None, bool]:
    if not modules:
        return None, False
    last = modules[-1]
    enclosing = set(modules[:-1])
    if last in _LM_HEAD or modules == ["output"]:
        return Role.LM_HEAD, False
    if last in _EMBEDDING or (last.startswith("embed") and not enclosing & _ATTN_BLOCKS):
        return Role.EMBEDDING, False
    if _NORM.fullmatch(last):
        return Role.NORM, False
    if last in _QKV_FUSED:
        return Role.ATTN_QKV, True
    if last in _QKV_SPLIT:
        return Role.ATTN_QKV, False
    if last in _ATTN_OUT:
        return Role.ATTN_OUT, False
    if last in _MLP_IN_FUSED:
        return Role.MLP_IN, True
    if last in _MLP_IN_SPLIT:
        return Role.MLP_IN, False
    if last in _MLP_OUT:
        return Role.MLP_OUT, False
    if last in _CONTEXT_OUT:
        if enclosing & _ATTN_BLOCKS:
            return Role.ATTN_OUT, False
        if enclosing & _MLP_BLOCKS:
            return Role.MLP_OUT, False
    return None, False
