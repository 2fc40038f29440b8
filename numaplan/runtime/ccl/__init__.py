"""numaplan's CPU collective: shared memory, NUMA-aware, for W tensor-parallel ranks on one host.

The compiled model calls ``numaplan.ccl.allreduce / broadcast_from_worker0 / allgather /
scatter_from_worker0`` (the names, codes and descriptor are the ABI in :mod:`numaplan.ccl_abi`;
the calls are emitted by :mod:`numaplan.passes.lower_collectives`); each rank (a Disco worker:
rank 0 is a thread of the controller process, ranks 1..W-1 are subprocesses) owns one
:class:`Communicator` and :func:`numaplan.runtime.ccl.tvm_functions.register_tvm_functions`
routes those calls to it. The work is done by a C kernel (``kernel.c``), built with the system
compiler at first use; this package never imports tvm.

Modules
-------
- :mod:`~numaplan.runtime.ccl.spec`: :class:`CommSpec`, what every rank agrees on;
- :mod:`~numaplan.runtime.ccl.segments`: the shared-memory segments (layout, creation, mapping);
- :mod:`~numaplan.runtime.ccl.kernel`: building and loading the C kernel;
- :mod:`~numaplan.runtime.ccl.engine`: the kernel wired to one rank's view of the segments;
- :mod:`~numaplan.runtime.ccl.communicator`: :class:`Communicator`, the collectives;
- :mod:`~numaplan.runtime.ccl.failure`: the kernel's error codes as ``CollectiveError``;
- :mod:`~numaplan.runtime.ccl.stats`: :class:`CommStats`;
- :mod:`~numaplan.runtime.ccl.registry`: segments and communicators to clean up, :func:`cleanup`;
- :mod:`~numaplan.runtime.ccl.tvm_functions`: ``numaplan.ccl.*`` registered for the Relax VM.

Quick use::

    spec = CommSpec.from_plan(plan, new_namespace())  # or CommSpec(namespace=..., ...)
    with Communicator.create(spec, rank) as comm:        # after the rank's thread is pinned
        comm.allreduce(x, OP_SUM, out=out)
    cleanup(spec.namespace)                              # controller, at shutdown or after a crash

Shared memory
-------------
One segment per node of the communicator (``/dev/shm/<namespace>-node<N>``, mode 0600), created
by the node's first rank (its *leader*) after that rank is pinned, bound with mbind(2) to the
node's memory node before any page exists, then allocated, touched and audited with
move_pages(2) (:attr:`Communicator.creation_audits`). It holds every rank of the node's
sequence/descriptor/done words (one 128-byte line each) and two data slots per rank (double
buffer, by sequence parity), plus two node-level slots for the hierarchical algorithm's partial
sums. Every rank maps every segment. Layout: :mod:`numaplan.runtime.ccl.segments`.

Algorithms (``algorithm=`` argument, or ``"by_size"`` for the spec's table)
---------------------------------------------------------------------------
The table is the plan's (:func:`numaplan.ccl_abi.plan_algorithms`); the compile pass picks from
the same table for messages of static size, so a call gets the same algorithm either way.

- ``one_shot``: every rank copies its input into its slot and publishes; each rank then reduces
  all W buffers itself. One synchronisation; best at decode sizes.
- ``two_shot``: reduce-scatter (rank r reduces slice r of every buffer, in place in its own
  slot, and publishes) then all-gather of the slices. Two synchronisations, 2/W of the traffic
  per rank; wins from about 1 MiB.
- ``hierarchical``: members hand their buffer to the node leader, which reduces the node's
  buffers into the node's partial slot; leaders read every other node's partial (the only data
  that crosses nodes: one message per node pair) and reduce in node order; each leader then
  publishes the result in its slot and the members copy it.

Every reduction runs in rank (or node) order on every rank, so all ranks get bit-identical
results, and accumulates float16/bfloat16 in float32 (ints in int64, float64 in float64).
Messages larger than the slot are processed in slot-sized chunks (one sequence step each).

Memory ordering (why sequence words are enough, and the double buffer is never overrun)
--------------------------------------------------------------------------------------
Each call has a sequence number s, incremented identically on every rank (chunks count as
calls). A publication is: write the data into ``slot[s % 2]``, write the call descriptor into
``line[1 + s % 2]``, then store ``line[0] = s`` with *release* semantics. A reader spins with
*acquire* loads until ``line[0] >= s``, checks the descriptor, then reads ``slot[s % 2]``:
release/acquire make the data visible before the word. Every rank also stores ``done = s``
(release) when it finishes call s.

Invariant (I): *when a rank completes call c, every rank has completed call c - 1.*
- one_shot, two_shot, allgather: a rank completes c only after seeing every peer's word of
  call c, which each peer stores when it starts c, i.e. after completing c - 1.
- hierarchical: a member completes c after its leader's ``fin`` of c, which the leader
  publishes after seeing every other leader's ``part`` of c, which each leader publishes after
  seeing its members' words of c: all ranks had started c.
- broadcast / scatter: the root would otherwise wait for nobody, so it first waits until every
  rank's ``done >= c - 1``; the others complete c after the root's word of c.

Consequences: (a) ranks are at most one call apart, so a reader of call s sees a word equal to
s or s + 1, and ``>=`` is the right test (a peer already in s + 1 writes the other parity);
(b) slot ``s % 2`` (and descriptor ``s % 2``) is next written at call s + 2 or later, by a rank
that has completed call s + 1 and therefore, by (I), only when every reader of call s has
completed call s: a fast rank can never overwrite a buffer a peer is still reading. In-place
reuse inside a call is safe too: two-shot writes the reduced slice r into its own slot while
peers read only *other* slices of it in that phase (slices are cache-line aligned), and the
hierarchical leader writes the node result into its own slot, which no one reads in that call
until ``fin``. No global barrier and no acknowledgement word are needed beyond ``done``.

Waiting spins with the CPU pause hint (``spin_us``), then yields (until ``yield_us``), then sleeps
with a doubling interval (up to ``sleep_max_us``), and gives up after ``timeout_s`` with a
:class:`~numaplan.errors.CollectiveError` naming the peer that did not arrive. Every
``check_interval_s`` while waiting it also checks whether that peer's process is dead (gone or
zombie: error at once, no need to wait for the timeout) and whether another rank aborted the
communicator.

Failure and cleanup
-------------------
After an error the communicator is *broken*: it records the reason in node 0's segment and
raises the abort flag so that peers stop waiting too (they raise ``CollectiveError`` naming the
rank that aborted); every later call raises at once. :func:`cleanup` unlinks every segment of a
namespace whatever state the ranks are in; processes that still map them keep their memory
until they exit. The creator of a segment unlinks it on :meth:`Communicator.close` and, through
an ``atexit`` hook, at interpreter exit; a process killed with SIGKILL leaves its segments to
:func:`cleanup`.
"""

from numaplan.ccl_abi import (
    ALGORITHMS,
    OP_AVG,
    OP_MAX,
    OP_MIN,
    OP_PROD,
    OP_SUM,
    AlgorithmRule,
    algorithms_from_choices,
    default_algorithms,
    describe_desc,
)
from numaplan.errors import CollectiveError
from numaplan.runtime.ccl.communicator import Communicator, dtype_code
from numaplan.runtime.ccl.registry import cleanup
from numaplan.runtime.ccl.spec import DEFAULT_TIMEOUT_S, CommSpec
from numaplan.runtime.ccl.stats import CallKindStats, CommStats
from numaplan.runtime.shm import new_namespace

__all__ = [
    "ALGORITHMS",
    "DEFAULT_TIMEOUT_S",
    "OP_AVG",
    "OP_MAX",
    "OP_MIN",
    "OP_PROD",
    "OP_SUM",
    "AlgorithmRule",
    "CallKindStats",
    "CollectiveError",
    "CommSpec",
    "CommStats",
    "Communicator",
    "algorithms_from_choices",
    "cleanup",
    "default_algorithms",
    "describe_desc",
    "dtype_code",
    "new_namespace",
]
