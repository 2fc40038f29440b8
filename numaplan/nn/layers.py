"""Linear and embedding layers in MLC's parameter layout, for every quantization numaplan runs.

No quantization (``q0f32``, ``q0f16``, ``q0bf16``): ``X.weight [out, in]`` (and ``X.bias``) in
the model dtype. Group quantization, ``NK`` layout (``q4f16_1``, ``q4f32_1``; MLC's
``GroupQuantizeLinear`` / ``GroupQuantizeEmbedding``): ``X.q_weight`` uint32 ``[out, in / 8]``
holding eight 4-bit values per word, lowest bits first, and ``X.q_scale [out, in / 32]`` in the
model dtype; a weight is ``(q - 7) * scale`` (``mlc_llm/quantization/group_quantization.py``).

Matrix products accumulate in float32 whatever the model dtype (a float16 sum over 4096 terms
loses several bits) and cast once at the end. Quantized products run numaplan's kernels
(:mod:`numaplan.nn.kernels`): the int4 codes are unpacked in registers, never into a dequantized
weight matrix in memory; a decode token's dense product runs the kernels' GEMV as well.
"""

from __future__ import annotations

from tvm import te, tirx
from tvm.relax.frontend import nn
from tvm.relax.frontend.nn import Tensor, op

from numaplan.model.quantization import Quantization
from numaplan.nn import kernels

#: The zero point of MLC's symmetric int4 code: stored 0..14 stand for -7..7.
Q4_ZERO = 7


def dequantize_q4(q_weight: Tensor, q_scale: Tensor, in_features: int, dtype: str,
                  name: str = "dequantize") -> Tensor:
    """``W[o, i] = (nibble(q_weight[o, i // 8], i % 8) - 7) * q_scale[o, i // 32]``."""
    out_features = q_weight.shape[0]
    group = in_features // q_scale.shape[1] if isinstance(q_scale.shape[1], int) else 32

    def body(q: te.Tensor, s: te.Tensor) -> te.Tensor:
        def value(o, i):
            word = q[o, i // 8]
            nib = (word >> ((i % 8) * 4).astype("uint32")) & tirx.const(15, "uint32")
            centred = nib.astype("float32") - tirx.const(float(Q4_ZERO), "float32")
            return (centred * s[o, i // group].astype("float32")).astype(dtype)

        return te.compute((out_features, in_features), value, name=name)

    return op.tensor_expr_op(body, name, [q_weight, q_scale])


class Linear(nn.Module):
    """``y = x W^T (+ b)`` with ``W`` stored as the quantization says.

    Parameters
    ----------
    in_features, out_features
        The sizes this worker builds (already divided for tensor parallelism).
    quant
        The quantization scheme.
    bias
        Whether the layer has a bias (model dtype, never quantized).
    quantized
        False keeps this layer in the model dtype even under group quantization (an
        ``lm_head`` when the scheme does not quantize the final projection).
    """

    def __init__(self, in_features: int, out_features: int, quant: Quantization, *,
                 bias: bool = False, quantized: bool = True) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.dtype = quant.model_dtype
        self.grouped = quant.is_group_quant and quantized
        if self.grouped:
            if quant.layout != "NK" or quant.quantize_bits != 4:
                raise ValueError(f"{quant.name}: numaplan runs 4-bit NK group quantization "
                                 "only")
            groups = quant.num_groups(in_features)
            if in_features % quant.group_size:
                raise ValueError(f"in_features={in_features} is not a multiple of the group "
                                 f"size {quant.group_size}")
            self.q_weight = nn.Parameter((out_features, groups * quant.storage_per_group),
                                         "uint32")
            self.q_scale = nn.Parameter((out_features, groups), self.dtype)
        else:
            self.weight = nn.Parameter((out_features, in_features), self.dtype)
        self.bias = nn.Parameter((out_features,), self.dtype) if bias else None

    def to(self, dtype: str | None = None) -> None:
        """Parameters keep the dtypes the scheme gives them."""

    def forward(self, x: Tensor, out_dtype: str | None = None) -> Tensor:
        """Apply the layer; ``out_dtype`` defaults to the model dtype."""
        if self.grouped:
            y = q4_product(x, self.q_weight, self.q_scale, self.out_features, self.in_features)
        else:
            y = dense_product(x, self.weight, self.out_features, self.in_features)
        if self.bias is not None:
            y = y + self.bias.astype("float32")
        target = out_dtype or self.dtype
        return y if target == "float32" else y.astype(target)


def _tokens(x: Tensor) -> tuple[list, object]:
    """The leading dims of ``x`` and their product (a static 1 for one decode token)."""
    lead = list(x.shape[:-1])
    count: object = 1
    for d in lead:
        count = d * count
    return lead, count


def q4_product(x: Tensor, q_weight: Tensor, q_scale: Tensor, n: int, k: int) -> Tensor:
    """``x @ dequant(q_weight, q_scale)^T`` in float32 through numaplan's kernels: the decode
    GEMV for one token; for a batched decode step (one token per sequence: the last leading
    dim is a static 1) under the int8 policy, the same GEMV run for every token over each
    weight row (a sequence's logits do not depend on its batch); the tiled matmul otherwise
    (prefill). The weight stays packed in memory."""
    lead, count = _tokens(x)
    x_dtype, s_dtype = x.dtype, q_scale.dtype
    int8 = kernels.current_policy().q4_activations == "int8"
    one_per_sequence = bool(lead) and isinstance(lead[-1], int) and lead[-1] == 1
    if count == 1 and kernels.q4_lanes(k):
        gemv = kernels.q4_gemv_int8 if int8 else kernels.q4_gemv
        func, rows, name = gemv(n, k, x_dtype, s_dtype), 1, "q4_gemv"
    elif one_per_sequence and int8 and kernels.q4_lanes(k):
        func, rows = kernels.q4_gemv_int8_tokens(n, k, x_dtype, s_dtype), count
        name = "q4_gemv_tokens"
    else:
        func, rows, name = kernels.q4_matmul(n, k, x_dtype, s_dtype), count, "q4_matmul"
    x2 = op.reshape(x, (rows, k))
    y = op.tensor_ir_op(func, name, [x2, q_weight, q_scale],
                        Tensor.placeholder([rows, n], "float32"))
    return op.reshape(y, (*lead, n))


def dense_product(x: Tensor, w: Tensor, n: int, k: int) -> Tensor:
    """``x @ w^T`` in float32: numaplan's GEMV for one token, a scheduled matmul otherwise."""
    lead, count = _tokens(x)
    if count == 1:
        y = op.tensor_ir_op(kernels.dense_gemv(n, k, x.dtype), "dense_gemv",
                            [op.reshape(x, (1, k)), w], Tensor.placeholder([1, n], "float32"))
        return op.reshape(y, (*lead, n))
    return op.matmul(x, op.permute_dims(w), out_dtype="float32")


class Embedding(nn.Module):
    """Token embedding, quantized like a linear when the scheme quantizes embeddings.

    With tied word embeddings the same parameters are also the output projection
    (:meth:`lm_head`).
    """

    def __init__(self, vocab_size: int, hidden_size: int, quant: Quantization) -> None:
        super().__init__()
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.dtype = quant.model_dtype
        self.grouped = quant.is_group_quant and quant.quantize_embedding
        if self.grouped:
            groups = quant.num_groups(hidden_size)
            self.q_weight = nn.Parameter((vocab_size, groups * quant.storage_per_group),
                                         "uint32")
            self.q_scale = nn.Parameter((vocab_size, groups), self.dtype)
        else:
            self.weight = nn.Parameter((vocab_size, hidden_size), self.dtype)

    def to(self, dtype: str | None = None) -> None:
        """Parameters keep the dtypes the scheme gives them."""

    def forward(self, ids: Tensor) -> Tensor:
        """``[n] int32 -> [n, hidden]`` in the model dtype."""
        if not self.grouped:
            return op.take(self.weight, ids, axis=0)
        rows_q = op.take(self.q_weight, ids, axis=0)
        rows_s = op.take(self.q_scale, ids, axis=0)
        return dequantize_q4(rows_q, rows_s, self.hidden_size, self.dtype,
                             name="dequantize_embedding")

    def lm_head(self, x: Tensor) -> Tensor:
        """Tied output projection: ``x @ E^T`` in float32."""
        if self.grouped:
            return q4_product(x, self.q_weight, self.q_scale, self.vocab_size, self.hidden_size)
        return dense_product(x, self.weight, self.vocab_size, self.hidden_size)
