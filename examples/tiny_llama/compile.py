"""Compile the example's Relax module for CPU and drive it through the Relax VM.

``compile_model`` uses the CPU-relevant subset of MLC's ``mlc_llm`` pipeline on ``llvm``
targets, built from TVM's own passes: ``FuseTransposeMatmul`` (MLC's phase 1, upstream in TVM),
TVM's ``relax.backend.cpu_generic`` passes (dispatch, ``LegalizeOps``, ``FuseOps``, ``FuseTIR``,
dataflow lowering, finalisation; i.e. ``relax.get_default_pipeline(llvm)``) and, after fusion,
dlight schedules (MLC's phase 4; MLC uses dlight's ``cpu.GEMV`` on llvm). The default uses this
module's own row-parallel GEMV / matmul rules instead of ``cpu.GEMV``, which compiles ~20x
slower and vectorises across weight rows; ``pipeline="dlight"`` selects it anyway. Decode's
matrix-vector products then read each weight once, in parallel on TVM's thread pool.
``pipeline="fused"`` has no schedule and ``pipeline="build"`` is ``tvm.compile``'s plain
default (no fusion: every weight is transposed on every call).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import tvm
from tvm import relax

from numaplan.passes.schedules import host_target, resolve_target  # noqa: F401 (re-exported)

#: ``pipeline`` name -> GEMV schedule of :func:`cpu_pipeline` (``"build"``: ``tvm.compile``'s
#: own default, no fusion at all).
PIPELINES = {"default": "rows", "dlight": "dlight", "fused": None, "build": None}


def cpu_pipeline(target: tvm.target.Target, *, gemv: str | None = "rows"
                 ) -> tvm.transform.Pass:
    """numaplan's CPU pipeline without a plan (no passes of numaplan's own beyond the
    collective lowering): ``gemv="rows"`` (the row-parallel rules of
    :mod:`numaplan.passes.schedules`), ``"dlight"`` (dlight's stock ``cpu.GEMV``) or ``None``."""
    from numaplan.passes.pipeline import numaplan_pipeline

    return numaplan_pipeline(target, None, schedule=gemv, lower_collectives=False)


def compile_model_timed(mod: tvm.IRModule, target: str | dict | tvm.target.Target = "llvm", *,
                        pipeline: str = "default",
                        pre_passes: Sequence[tvm.transform.Pass] = ()
                        ) -> tuple[relax.VMExecutable, float]:
    """:func:`compile_model` and the wall-clock seconds it took."""
    if pipeline not in PIPELINES:
        raise ValueError(f"unknown pipeline {pipeline!r}; known: {', '.join(PIPELINES)}")
    tgt = resolve_target(target)
    start = time.perf_counter()
    if pre_passes:
        with tgt:
            mod = tvm.transform.Sequential(list(pre_passes))(mod)
    if pipeline == "build":
        ex = tvm.compile(mod, tgt)
    else:
        ex = tvm.compile(mod, tgt, relax_pipeline=cpu_pipeline(tgt, gemv=PIPELINES[pipeline]))
    return ex, time.perf_counter() - start


def compile_model(mod: tvm.IRModule, target: str | dict | tvm.target.Target = "llvm", *,
                  pipeline: str = "default",
                  pre_passes: Sequence[tvm.transform.Pass] = ()) -> relax.VMExecutable:
    """Compile ``mod`` (e.g. from :func:`numaplan.tiny_llama.model.build_ir_module`) for CPU.

    Parameters
    ----------
    mod
        The Relax module. A TP > 1 module still holds ``R.ccl.allreduce``; it compiles (into
        ``runtime.disco.allreduce`` calls), but only runs inside Disco workers with a
        collective, or after a pass in ``pre_passes`` rewrote the collectives.
    target
        ``"llvm"`` / ``"host"`` (default): :func:`host_target`, i.e. llvm for this machine's
        CPU; or any TVM 0.27 target (a dict such as ``{"kind": "llvm", "mcpu": "skylake-avx512",
        "num-cores": 16}``, or a ``Target``), used as given.
    pipeline
        ``"default"``: ``FuseTransposeMatmul`` + TVM's CPU pipeline with fusion + the
        row-parallel GEMV schedule; ``"dlight"``: the same with dlight's stock ``cpu.GEMV``
        (MLC's choice; ~20x longer to compile); ``"fused"``: no GEMV schedule; ``"build"``:
        ``tvm.compile``'s plain default (no fusion: every weight is transposed on every call).
    pre_passes
        Relax passes run first, before ``LegalizeOps`` (e.g. numaplan's collective rewrite).

    Returns
    -------
    relax.VMExecutable
        Load with ``relax.VirtualMachine(ex, tvm.cpu())`` or ``ex.export_library(path)``.
    """
    return compile_model_timed(mod, target, pipeline=pipeline, pre_passes=pre_passes)[0]


def to_device(arrays: Sequence[np.ndarray], device: tvm.runtime.Device | None = None
              ) -> list[tvm.runtime.Tensor]:
    """numpy arrays as TVM tensors (the packed params a VM function takes)."""
    device = device or tvm.cpu()
    return [tvm.runtime.tensor(np.ascontiguousarray(a), device) for a in arrays]


def read_metadata(vm: relax.VirtualMachine) -> dict[str, Any]:
    """The parsed ``_metadata`` JSON of a loaded model."""
    return json.loads(str(vm["_metadata"]()))


class VMRunner:
    """Greedy single-sequence driver of the compiled example on one VM (TP = 1).

    Parameters
    ----------
    vm
        ``relax.VirtualMachine`` of the compiled module.
    params
        The packed params (TVM tensors or numpy arrays) in ``_metadata["params"]`` order.
    max_seq_len
        KV-cache rows to allocate (default: the model's ``context_window_size``).
    """

    def __init__(self, vm: relax.VirtualMachine, params: Sequence[Any],
                 max_seq_len: int | None = None, device: tvm.runtime.Device | None = None):
        self.vm = vm
        self.device = device or tvm.cpu()
        self.metadata = read_metadata(vm)
        self.params = [p if isinstance(p, tvm.runtime.Tensor) else
                       tvm.runtime.tensor(np.ascontiguousarray(p), self.device) for p in params]
        self.max_seq_len = max_seq_len or self.metadata["context_window_size"]
        self.kv_cache = vm["create_kv_cache"](tvm.runtime.ShapeTuple([self.max_seq_len]))
        self.pos = 0

    def _ids(self, ids: Sequence[int]) -> tvm.runtime.Tensor:
        arr = np.asarray(ids, dtype=np.int64)
        vocab = self.metadata["active_vocab_size"]
        if arr.ndim != 1 or not arr.size or arr.min() < 0 or arr.max() >= vocab:
            # TVM's embedding `take` does not check bounds (it would read out of range).
            raise ValueError(f"token ids must be a non-empty list in [0, {vocab})")
        return tvm.runtime.tensor(arr.astype(np.int32), self.device)

    def embed(self, ids: Sequence[int]) -> tvm.runtime.Tensor:
        """``[n, hidden]`` embeddings."""
        return self.vm["embed"](self._ids(ids), self.params)

    def prefill(self, ids: Sequence[int]) -> np.ndarray:
        """New sequence; logits ``[vocab]`` (float32) of its last token."""
        if len(ids) > self.max_seq_len:
            raise ValueError(f"{len(ids)} tokens do not fit a {self.max_seq_len}-row KV cache")
        hidden = self.embed(ids).numpy()[None]
        logits, self.kv_cache = self.vm["prefill"](tvm.runtime.tensor(hidden, self.device),
                                                   self.kv_cache, self.params)
        self.pos = len(ids)
        return logits.numpy()[0, -1]

    def decode(self, token: int) -> np.ndarray:
        """Append one token at position ``pos``; its logits ``[vocab]``."""
        if self.pos >= self.max_seq_len:
            raise ValueError(f"the KV cache is full ({self.max_seq_len} rows)")
        hidden = self.embed([token]).numpy()[None]
        logits, self.kv_cache = self.vm["decode"](
            tvm.runtime.tensor(hidden, self.device), self.kv_cache,
            tvm.runtime.ShapeTuple([self.pos]), self.params)
        self.pos += 1
        return logits.numpy()[0, -1]

    def generate(self, ids: Sequence[int], steps: int) -> tuple[list[np.ndarray], list[int]]:
        """Greedy: prefill then ``steps`` decodes; every step's logits and the argmax tokens."""
        logits = [self.prefill(ids)]
        tokens = [int(np.argmax(logits[-1]))]
        for _ in range(steps):
            logits.append(self.decode(tokens[-1]))
            tokens.append(int(np.argmax(logits[-1])))
        return logits, tokens
