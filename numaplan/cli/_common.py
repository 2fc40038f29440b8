"""Argument groups and output helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from numaplan._io import write_atomic
from numaplan.cli.help import HELP
from numaplan.topology import Topology, load_topology


def add_topology_args(p: argparse.ArgumentParser) -> None:
    """Options that choose where the topology comes from (default: this machine)."""
    g = p.add_argument_group("topology source (default: detect this machine)")
    x = g.add_mutually_exclusive_group()
    x.add_argument("--sysfs-root", metavar="DIR", help=HELP["sysfs_root"])
    x.add_argument("--numactl-file", metavar="FILE", help=HELP["numactl_file"])
    x.add_argument("--lscpu-file", metavar="FILE", help=HELP["lscpu_file"])
    x.add_argument("--hwloc-file", metavar="XML", help=HELP["hwloc_file"])
    x.add_argument("--topology", metavar="JSON", help=HELP["topology_json"])


def topology_from_args(args: argparse.Namespace) -> Topology:
    """Load the topology the options name."""
    return load_topology(json_path=args.topology, sysfs_root=args.sysfs_root,
                         numactl_file=args.numactl_file, lscpu_file=args.lscpu_file,
                         hwloc_file=args.hwloc_file)


def emit(text: str, output: str | None) -> None:
    """Print ``text`` or write it atomically to ``output``."""
    if output:
        Path(output).parent.mkdir(parents=True, exist_ok=True)
        write_atomic(Path(output), text)
        print(f"wrote {output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
