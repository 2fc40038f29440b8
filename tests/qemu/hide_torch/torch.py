"""Stand-in for ``torch`` inside the QEMU tier's guests: importing it raises ImportError.

``tvm_ffi`` imports torch whenever it is installed (it is not a numaplan dependency, but a
developer's virtualenv may have it). Under TCG that import costs ~35 s in every process that
imports TVM, about half of a Disco worker's start. The tier puts this directory first on the
guests' ``PYTHONPATH`` so that they run as a ``make setup`` virtualenv (and CI) does.
"""

raise ImportError("torch is hidden inside the QEMU tier's guests (tests/qemu/hide_torch)")
