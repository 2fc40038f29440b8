"""Model definitions in ``tvm.relax.frontend.nn`` with MLC LLM's parameter layout and function
ABI (the compiler side of :mod:`numaplan.model`; imports tvm).

:func:`numaplan.nn.export.build_ir_module` builds the Relax module of one tensor-parallel worker
for any ``model_type`` in :data:`numaplan.model.architecture.MODEL_TYPES`.
"""
