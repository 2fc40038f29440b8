"""MLC quantization schemes by name, and the parameters each one turns a layer into.

The registry mirrors ``QUANTIZATION`` in ``mlc_llm/quantization/quantization.py`` for the
schemes numaplan plans for: no quantization (``q0*``) and group quantization (``q3*``, ``q4*``).
Group quantization replaces a linear ``X.weight [out, in]`` with ``X.q_weight`` (packed integers
in uint32) and ``X.q_scale`` (one scale per group, in the model dtype). In the ``NK`` layout
(``*_1``) groups run along the input dimension; the ``KN`` layout (``*_0``) stores the transpose,
which MLC refuses to shard, so numaplan reads those models but plans them for one worker only.

Sizing-only presets describe formats MLC has no kernels for, so that the planner and the
predictor can size and price them (``int8_weight_only``: int8 weights with one float16 scale
per 32, the 34 bytes per 32 weights of llama.cpp's Q8_0, within 6 % of SGLang's per-channel
W8A8 weights; ``q5_1_sizing``: 5-bit weights, 20 bytes per 32, with a 4-byte group scale, the
24 bytes per 32 weights of llama.cpp's Q5_1, whose float16 scale and float16 minimum this
preset holds as one float32, so its activations and KV cache are float32 too). Nothing can be
compiled or run with them: :func:`require_kernels` says so.
"""

from __future__ import annotations

import math
from types import MappingProxyType
from typing import Literal

from numaplan._base import Frozen
from numaplan.errors import ModelFormatError


class ParamSpec(Frozen):
    """A parameter as MLC's model declares it: name, full (unsharded) shape and dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: str


class Quantization(Frozen):
    """One MLC quantization scheme.

    ``model_dtype`` is the activation dtype (also that of scales, norms, biases and the KV
    cache). The group-quantization fields are ``None`` for ``kind == "no-quant"``.
    """

    name: str
    kind: Literal["no-quant", "group-quant"]
    model_dtype: Literal["float16", "bfloat16", "float32"]
    quantize_bits: int | None = None
    storage_dtype: Literal["uint32"] | None = None
    group_size: int | None = None
    layout: Literal["NK", "KN"] | None = None
    quantize_embedding: bool = False
    quantize_final_fc: bool = False
    #: Plans and predictions only: no kernels exist (compile and run refuse it).
    sizing_only: bool = False

    @property
    def is_group_quant(self) -> bool:
        """Whether linears become ``q_weight`` + ``q_scale``."""
        return self.kind == "group-quant"

    @property
    def elems_per_storage(self) -> int:
        """Quantized values packed in one uint32 (8 for int4, 10 for int3)."""
        self._require_group_quant()
        return 32 // self.quantize_bits  # type: ignore[operator]

    @property
    def storage_per_group(self) -> int:
        """uint32 words holding one group (4 for both q4 (32/8) and q3 (40/10))."""
        return self.group_size // self.elems_per_storage  # type: ignore[operator]

    @property
    def supports_tensor_parallel(self) -> bool:
        """False for the ``KN`` layout: MLC refuses to shard it (compile raises)."""
        return self.layout != "KN"

    def num_groups(self, in_features: int) -> int:
        """Groups along an input dimension of ``in_features`` (the last one is padded)."""
        self._require_group_quant()
        return math.ceil(in_features / self.group_size)  # type: ignore[operator]

    def linear_params(self, prefix: str, out_features: int, in_features: int, *,
                      bias: bool = False, final_fc: bool = False) -> tuple[ParamSpec, ...]:
        """The parameters of ``nn.Linear(in_features, out_features)`` named ``prefix``.

        Parameters
        ----------
        prefix
            Module path, e.g. ``"model.layers.0.self_attn.qkv_proj"``.
        out_features, in_features
            The unsharded sizes.
        bias
            Whether the linear has a bias (kept in the model dtype, never quantized).
        final_fc
            Whether this is the output projection (``lm_head``), quantized only when the scheme
            says ``quantize_final_fc``.

        Examples
        --------
        >>> q = get_quantization("q4f16_1")
        >>> [(p.name, p.shape, p.dtype) for p in q.linear_params("o", 4096, 4096)]
        [('o.q_weight', (4096, 512), 'uint32'), ('o.q_scale', (4096, 128), 'float16')]
        """
        params: list[ParamSpec] = []
        if self.is_group_quant and (not final_fc or self.quantize_final_fc):
            groups = self.num_groups(in_features)
            words = groups * self.storage_per_group
            if self.layout == "KN":
                params += [ParamSpec(name=f"{prefix}.q_weight", shape=(words, out_features),
                                     dtype="uint32"),
                           ParamSpec(name=f"{prefix}.q_scale", shape=(groups, out_features),
                                     dtype=self.model_dtype)]
            else:
                params += [ParamSpec(name=f"{prefix}.q_weight", shape=(out_features, words),
                                     dtype="uint32"),
                           ParamSpec(name=f"{prefix}.q_scale", shape=(out_features, groups),
                                     dtype=self.model_dtype)]
        else:
            params.append(ParamSpec(name=f"{prefix}.weight", shape=(out_features, in_features),
                                    dtype=self.model_dtype))
        if bias:
            params.append(ParamSpec(name=f"{prefix}.bias", shape=(out_features,),
                                    dtype=self.model_dtype))
        return tuple(params)

    def embedding_params(self, prefix: str, vocab_size: int, hidden_size: int
                         ) -> tuple[ParamSpec, ...]:
        """The parameters of ``nn.Embedding(vocab_size, hidden_size)`` named ``prefix``.

        A quantized embedding is grouped along the hidden dimension and never transposed, even
        in the ``KN`` layout (``GroupQuantizeEmbedding``).
        """
        if self.is_group_quant and self.quantize_embedding:
            groups = self.num_groups(hidden_size)
            return (ParamSpec(name=f"{prefix}.q_weight",
                              shape=(vocab_size, groups * self.storage_per_group), dtype="uint32"),
                    ParamSpec(name=f"{prefix}.q_scale", shape=(vocab_size, groups),
                              dtype=self.model_dtype))
        return (ParamSpec(name=f"{prefix}.weight", shape=(vocab_size, hidden_size),
                          dtype=self.model_dtype),)

    def norm_params(self, prefix: str, hidden_size: int) -> tuple[ParamSpec, ...]:
        """The weight of an RMSNorm named ``prefix`` (model dtype, no bias)."""
        return (ParamSpec(name=f"{prefix}.weight", shape=(hidden_size,), dtype=self.model_dtype),)

    def _require_group_quant(self) -> None:
        if not self.is_group_quant:
            raise ValueError(f"{self.name} is not a group quantization")


def _group(name: str, model_dtype: str, *, bits: int, group_size: int, layout: str,
           quantize_embedding: bool = True, quantize_final_fc: bool = True,
           sizing_only: bool = False) -> Quantization:
    return Quantization(name=name, kind="group-quant", model_dtype=model_dtype,  # type: ignore[arg-type]
                        quantize_bits=bits, storage_dtype="uint32", group_size=group_size,
                        layout=layout, quantize_embedding=quantize_embedding,  # type: ignore[arg-type]
                        quantize_final_fc=quantize_final_fc, sizing_only=sizing_only)


#: The schemes numaplan understands, by MLC name.
QUANTIZATIONS = MappingProxyType({q.name: q for q in (
    Quantization(name="q0f16", kind="no-quant", model_dtype="float16"),
    Quantization(name="q0bf16", kind="no-quant", model_dtype="bfloat16"),
    Quantization(name="q0f32", kind="no-quant", model_dtype="float32"),
    _group("q3f16_0", "float16", bits=3, group_size=40, layout="KN"),
    _group("q3f16_1", "float16", bits=3, group_size=40, layout="NK"),
    _group("q4f16_0", "float16", bits=4, group_size=32, layout="KN"),
    _group("q4f16_1", "float16", bits=4, group_size=32, layout="NK"),
    _group("q4bf16_0", "bfloat16", bits=4, group_size=32, layout="KN"),
    _group("q4bf16_1", "bfloat16", bits=4, group_size=32, layout="NK"),
    _group("q4f32_1", "float32", bits=4, group_size=32, layout="NK"),
    _group("q4f16_2", "float16", bits=4, group_size=32, layout="NK",
           quantize_embedding=False, quantize_final_fc=False),
    # Sizing only (see the module docstring); the embedding stays float16, as in Q8_0 models'
    # usual token tables and SGLang's INT8 checkpoints.
    _group("int8_weight_only", "float16", bits=8, group_size=32, layout="NK",
           quantize_embedding=False, quantize_final_fc=True, sizing_only=True),
    _group("q5_1_sizing", "float32", bits=5, group_size=32, layout="NK",
           quantize_embedding=False, quantize_final_fc=True, sizing_only=True),
)})

# MLC schemes whose parameters are not group/no-quant shaped; named so the error is precise.
_UNSUPPORTED_MLC = frozenset({"q4f16_autoawq", "q4f16_ft", "e5m2_e5m2_f16", "e4m3_e4m3_f16",
                              "e4m3_e4m3_f16_max_calibrate"})


def require_kernels(quant: Quantization) -> Quantization:
    """Return ``quant``, or raise when it is a sizing-only preset (nothing can run it).

    Raises
    ------
    ModelFormatError
        For a sizing-only preset, saying what it is for.

    Examples
    --------
    >>> require_kernels(get_quantization("q4f16_1")).name
    'q4f16_1'
    """
    if quant.sizing_only:
        raise ModelFormatError(f"{quant.name} is a sizing-only preset for planning and "
                               "predicting (MLC and numaplan have no kernels for it): plan with "
                               "`numaplan compile --no-build`; to run, convert the model to a "
                               "quantization with kernels (q4f16_1, q0f16, q0f32)")
    return quant


def get_quantization(name: str) -> Quantization:
    """Look up a quantization scheme by its MLC name.

    Parameters
    ----------
    name
        E.g. ``"q4f16_1"``, ``"q0f16"``.

    Raises
    ------
    ModelFormatError
        When the name is unknown or names an MLC scheme numaplan does not support; the message
        lists the supported names.

    Examples
    --------
    >>> get_quantization("q4f16_1").group_size
    32
    """
    try:
        return QUANTIZATIONS[name]
    except (KeyError, TypeError):
        pass
    known = ", ".join(QUANTIZATIONS)
    if isinstance(name, str) and name in _UNSUPPORTED_MLC:
        raise ModelFormatError(f"MLC quantization {name!r} is not supported by numaplan; "
                               f"supported: {known}")
    raise ModelFormatError(f"unknown quantization {name!r}; known: {known}")
