"""A Llama example in MLC's format with a TVM Relax model, for numaplan's tests and benchmarks.

See README.md. The model itself ships in the package, :mod:`numaplan.tiny_llama` (``config``:
sizes, parameter order, no TVM; ``model``: the Relax nn model and ``build_ir_module``; ``build``:
``build_model_dir``), because ``numaplan bench`` builds and runs it; the modules of those names
here re-export it. Here only: ``reference`` (numpy reference and loaders; no TVM) and ``compile``
(``compile_model``, ``VMRunner``).
"""
