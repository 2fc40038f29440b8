"""numa-vm: run a command inside a throw-away multi-node NUMA Linux guest (QEMU).

The guest boots Debian's stock kernel (extracted from its ``.deb``, never installed) with a
small busybox initramfs, mounts this machine's root filesystem read-only over virtio-9p with a
tmpfs overlay on top, and runs the command as root in the host's current directory with the
host's own Python and virtual environment (same paths). Writes inside the guest are thrown away
except in the *output directory*, which is shared read-write and appears inside the guest at
the same absolute path as on the host (``$NUMA_VM_OUT``).

Modules
-------
``cli``
    The command line (``scripts/numa-vm``).
``cache``
    ``setup``: QEMU, the kernel, busybox and the initramfs, kept in the cache directory.
``guest``
    The guest's NUMA layout, the QEMU command line, and running one command with a timeout.
``init.sh``
    The guest's ``/init`` (busybox sh).
"""

from __future__ import annotations
