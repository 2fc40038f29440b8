"""A Llama example in MLC's format with a TVM Relax model, for numaplan's tests and benchmarks.

See README.md. Modules: ``config`` (sizes, parameter order; no TVM), ``model`` (the Relax nn
model and ``build_ir_module``), ``build`` (``build_model_dir``), ``reference`` (numpy reference
and loaders; no TVM), ``compile`` (``compile_model``, ``VMRunner``).
"""
