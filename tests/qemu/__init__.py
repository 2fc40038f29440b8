"""QEMU tier: numaplan inside multi-node NUMA guests (scripts/numa-vm)."""
