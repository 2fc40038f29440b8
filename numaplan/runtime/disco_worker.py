"""Entry point of numaplan's Disco worker processes (workers 1..W-1).

``python -m numaplan.runtime.disco_worker <worker_id> <num_workers> <num_groups> <read_fd>
<write_fd>``, started by TVM's process pool. It applies the 0.27 Disco import fix and imports
:mod:`numaplan.runtime.worker`, which registers numaplan's worker-side functions (setup, loader,
collective, generation), then hands the pipes to TVM's worker loop. Worker 0 is a thread of the
controller, which imports the same module.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    """Run the worker loop; returns when the controller closes the pipes."""
    if len(argv) != 5:
        print("usage: python -m numaplan.runtime.disco_worker <worker_id> <num_workers> "
              "<num_groups> <read_fd> <write_fd>", file=sys.stderr)
        return 2
    # A worker runs compiled code only: TVM's runtime library, not the compiler (libtvm_compiler
    # is ~260 MB with LLVM inside, and its Python packages, relax among them, come with it).
    # This halves a worker's start on a host and cuts it several-fold under emulation. A user's
    # explicit TVM_USE_RUNTIME_LIB wins.
    os.environ.setdefault("TVM_USE_RUNTIME_LIB", "1")
    from numaplan.runtime.disco import import_disco

    import_disco()
    import tvm_ffi

    import numaplan.runtime.worker  # noqa: F401  (registers numaplan.runtime.* functions)

    worker_id, num_workers, num_groups, read_fd, write_fd = (int(a) for a in argv)
    tvm_ffi.get_global_func("runtime.disco.WorkerProcess")(
        worker_id, num_workers, num_groups, read_fd, write_fd)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except (OSError, KeyboardInterrupt):
        # The controller went away: nothing to report to.
        sys.exit(0)
