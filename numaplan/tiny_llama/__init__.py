"""The embedded default model: a small Llama decoder in MLC LLM's format, with its Relax model.

It ships in the package because ``numaplan bench`` (and ``make demo``) plan, compile and run it
on the machine at hand, with no MLC install and no downloaded weights. Modules: ``config``
(sizes, parameter order; no TVM), ``model`` (the ``tvm.relax.frontend.nn`` model and
``build_ir_module``, the builder ``numaplan-model.json`` names), ``build`` (``build_model_dir``:
an MLC model directory with seeded random weights). The numpy reference and the standalone
compile helpers the tests use live beside the example's documentation in ``examples/tiny_llama``.
"""
