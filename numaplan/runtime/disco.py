"""Importing TVM's Disco runtime in apache-tvm 0.27.

``tvm.runtime`` imports ``disco`` before ``libtvm_runtime_extra.so`` is loaded at the end of
``import tvm``; the first import then caches an empty FFI table and ``from tvm.runtime import
disco`` yields ``None`` (docs/background.md 5.1). Initialising the FFI table after ``import
tvm`` and importing the module again works. This module does that once.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType

_disco: ModuleType | None = None


def import_disco() -> ModuleType:
    """``tvm.runtime.disco``, usable."""
    global _disco
    if _disco is not None:
        return _disco
    import tvm  # noqa: F401  (loads the runtime libraries first)
    import tvm_ffi

    if tvm_ffi.get_global_func("runtime.disco.WorkerProcess", allow_missing=True) is None:
        # Runtime-only TVM (TVM_USE_RUNTIME_LIB=1, as numaplan's workers run) does not load
        # libtvm_runtime_extra, where Disco lives.
        from tvm import libinfo
        from tvm_ffi.libinfo import load_lib_ctypes

        load_lib_ctypes("tvm", "tvm_runtime_extra", "RTLD_GLOBAL",
                        extra_lib_paths=libinfo.package_lib_paths())
    mod = sys.modules.get("tvm.runtime.disco")
    if mod is None or not hasattr(mod, "ProcessSession"):
        tvm_ffi.init_ffi_api("runtime.disco", "tvm.runtime.disco._ffi_api")
        mod = importlib.import_module("tvm.runtime.disco")
    if not hasattr(mod, "ProcessSession"):
        tvm_ffi.init_ffi_api("runtime.disco", "tvm.runtime.disco._ffi_api")
        mod = importlib.reload(mod)
    _disco = mod
    return mod
