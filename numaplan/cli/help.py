"""Every help string of the command line, in one place (so wording stays consistent)."""

HELP = {
    "prog": "Plan and enforce NUMA placement for tensor-parallel LLM inference on CPUs.",
    "verbose": "log decisions (-v: info, -vv: debug)",
    "debug": "show a traceback for internal errors",
    # topology
    "topology": "show the machine's NUMA topology (detected, or read from a file)",
    "sysfs_root": "read sysfs/procfs below this directory instead of / (fake trees, captures)",
    "numactl_file": "read the topology from saved `numactl -H` output",
    "lscpu_file": ("read the topology from saved `lscpu` output "
                   "(no memory sizes, assumed distances)"),
    "topology_json": "read a topology JSON written by `numaplan topology --json`",
    "json": "print JSON instead of a table",
    "output": "write the result to this file (atomically)",
    # probe
    "probe": "measure read bandwidth and latency between every CPU node and memory node",
    "quick": "smaller buffers and fewer repeats (seconds instead of tens of seconds)",
    "probe_output": "write the measured cost model as JSON to this file",
    "buffer_mib": "buffer size per cell in MiB (default: at least 4x the last-level cache)",
    "threads_per_node": "reader threads per node (default: one per usable physical core)",
}
