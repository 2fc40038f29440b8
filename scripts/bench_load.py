"""Shard loading throughput: numaplan's loader vs a plain read of the same files.

numaplan's loader (one worker, W=1, so it loads every byte) maps the shard files, cuts the
worker's pieces with MLC's shard rules, writes them into node-bound memory, widens bf16-encoded
float32, and audits every page with move_pages. The plain read is ``readinto`` of every
``params_shard_*.bin`` into one preallocated buffer. Both run warm (files in the page cache,
after one untimed pass) and, when the page cache can be dropped (root), cold. The plain read into
fresh memory and the loader alternate, repeat after repeat, so that load from other processes
hits both alike; min and median are printed, with the loader's time per phase (``LoadReport.
phases_s``). Target: the loader at >= 70% of the plain read's throughput.

Usage: python scripts/bench_load.py [--size bench|default] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from numaplan.bench import load_inputs  # noqa: E402
from numaplan.runtime.loader import load_worker_params  # noqa: E402


def drop_caches() -> bool:
    try:
        os.sync()
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def plain_read(files: list[Path], buf: np.ndarray) -> int:
    pos = 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            n = fh.readinto(memoryview(buf)[pos:pos + f.stat().st_size])
            pos += n
    return pos


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="bench")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--model-dir")
    args = ap.parse_args()
    from numaplan.tiny_llama.build import build_model_dir

    d = Path(args.model_dir) if args.model_dir else build_model_dir(
        Path(tempfile.mkdtemp()) / f"tiny-{args.size}", size=args.size, dtype=args.dtype)
    wl, plan, names, files, file_bytes = load_inputs(d)
    buf = np.empty(file_bytes, dtype=np.uint8)
    buf[::4096] = 1  # fault the destination in: the loader's arena is fresh memory each time
    plain_read(files, buf)
    arena, arrays, _ = load_worker_params(d, wl, plan, 0, names)
    del arrays
    arena.close()

    def load_once():
        a, arrays, rep = load_worker_params(d, wl, plan, 0, names)
        load_once.last = rep
        del arrays
        a.close()
        return rep

    def timed(fn):
        t0 = time.perf_counter()
        out = fn()
        return time.perf_counter() - t0, out

    reused, fresh, loader, phases = [], [], [], []
    for _ in range(args.repeats):
        reused.append(timed(lambda: plain_read(files, buf))[0])
        # A plain load reads into fresh memory, as the loader must: both pay the first touch.
        fresh.append(timed(lambda: plain_read(files, np.empty(file_bytes, dtype=np.uint8)))[0])
        t, rep = timed(load_once)
        loader.append(t)
        phases.append(rep.phases_s)
    rep = load_once.last
    med, lo = statistics.median, min
    print(f"model {d.name}: {file_bytes / 1e6:.1f} MB in {len(files)} shard files, "
          f"{rep.bytes_loaded / 1e6:.1f} MB in memory"
          + (" (float32 widened from bf16)" if rep.bytes_loaded > file_bytes else ""))
    print(f"{'warm page cache':<22} {'min s':>7} {'median s':>9} {'GB/s (median)':>14}")
    for name, ts in (("plain read (reused)", reused), ("plain read (fresh)", fresh),
                     ("numaplan loader", loader)):
        print(f"{name:<22} {lo(ts):>7.3f} {med(ts):>9.3f} {file_bytes / med(ts) / 1e9:>14.2f}")
    print("loader phases (min / median ms): " + ", ".join(
        f"{k} {1e3 * lo(p[k] for p in phases):.0f} / {1e3 * med([p[k] for p in phases]):.0f}"
        for k in phases[0]) + f"; audit {100 * rep.on_planned_fraction:.1f}% on planned node")
    ratios = [f / t for f, t in zip(fresh, loader, strict=True)]
    print(f"loader / plain read into fresh memory: {lo(fresh) / lo(loader):.2f}x (min times), "
          f"{med(ratios):.2f}x (median of {len(ratios)} alternating pairs, range "
          f"{lo(ratios):.2f}-{max(ratios):.2f}); into a reused buffer: "
          f"{med(reused) / med(loader):.2f}x (medians)")
    if drop_caches():
        drop_caches()
        t0 = time.perf_counter()
        plain_read(files, buf)
        pc = time.perf_counter() - t0
        drop_caches()
        t0 = time.perf_counter()
        load_once()
        lc = time.perf_counter() - t0
        print(f"cold page cache: plain {file_bytes / pc / 1e9:.2f} GB/s, loader "
              f"{file_bytes / lc / 1e9:.2f} GB/s ({pc / lc:.2f}x)")
    else:
        print("cold page cache: skipped (cannot drop caches here)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
