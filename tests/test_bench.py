"""The benchmark suite's two entry points, ``numaplan bench`` and ``python -m numaplan.bench``:
every documented flag, a stage that cannot run at a W, a stage that fails, bad arguments.

Sizes and iteration counts are the smallest that still measure something, so these stay fast.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time

import pytest

import numaplan.bench as bench
from numaplan.cli.main import main as cli_main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: The flags the README and the MLC proposal document.
FLAGS = ("--tensor-parallel-shards", "--enable-numa-tp", "--output-file", "--png", "--sizes",
         "--iters", "--only", "--tokens")
QUICK = ["--iters", "5", "--sizes", "256,1024"]


@pytest.mark.parametrize("entry", [bench.main, lambda argv: cli_main(["bench", *argv])],
                         ids=["python -m numaplan.bench", "numaplan bench"])
def test_help_lists_every_flag(entry, capsys):
    with pytest.raises(SystemExit) as exc:
        entry(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(flag in out for flag in FLAGS)


def test_the_proposals_command_skips_what_cannot_run_and_writes_the_rest(tmp_path, capsys):
    # The example model has 4 KV heads: W=8 cannot decode it, the all-reduce still runs.
    out = tmp_path / "r.json"
    rc = bench.main(["--tensor-parallel-shards", "8", "--enable-numa-tp", "--output-file",
                     str(out), "--only", "allreduce,decode", *QUICK])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["method"] == {"tensor_parallel_shards": 8, "enable_numa_tp": True,
                             "statistic": "median over iterations after warm-up"}
    ar = doc["results"]["allreduce"]
    assert ar["world_size"] == 8 and {r["elements"] for r in ar["rows"]} == {256, 1024}
    assert all(r["iters"] == 5 for r in ar["rows"])
    assert "does not divide num_key_value_heads=4" in doc["results"]["decode"]["skipped"]
    assert "decode skipped at W=8" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_a_failing_stage_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    def broken():
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(bench, "bench_planner", broken)
    monkeypatch.setattr(bench, "bench_load", lambda model_dir: {"benchmark": "load", "ratio": 1})
    out = tmp_path / "out" / "r.json"
    assert cli_main(["bench", "--only", "planner,load", "--output-file", str(out)]) == 1
    results = json.loads(out.read_text())["results"]
    assert results["planner"] == {"benchmark": "planner",
                                  "error": "RuntimeError: solver exploded"}
    assert results["load"] == {"benchmark": "load", "ratio": 1}


def test_png_draws_the_allreduce(tmp_path, matplotlib_extra):
    png = tmp_path / "ar.png"
    assert cli_main(["bench", "--tensor-parallel-shards", "2", "--only", "allreduce",
                     "--png", str(png), *QUICK]) == 0
    assert png.read_bytes().startswith(PNG_MAGIC)


@pytest.mark.parametrize("argv, message", [
    (["--only", "allreduce,nope"], "unknown stage 'nope'"),
    (["--tensor-parallel-shards", "0"], "invalid positive integer value: '0'"),
    (["--sizes", "1024,x"], "invalid list of sizes value"),
    (["--tokens", "-1"], "invalid positive integer value"),
])
def test_bad_arguments_are_one_line_usage_errors(argv, message, capsys):
    assert cli_main(["bench", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    with pytest.raises(SystemExit) as exc:
        bench.main(argv)
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_an_unwritable_output_fails_before_measuring(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(bench, "bench_planner", lambda: pytest.fail("a stage ran"))
    blocker = tmp_path / "file"
    blocker.write_text("")
    for entry in (bench.main, lambda argv: cli_main(["bench", *argv])):
        assert entry(["--only", "planner", "--output-file", str(blocker / "r.json")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"{blocker / 'r.json'}: cannot write" in err
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@pytest.mark.slow
@pytest.mark.tvm
def test_decode_with_placement(tmp_path):
    out = tmp_path / "r.json"
    assert bench.main(["--only", "decode", "--tensor-parallel-shards", "2", "--enable-numa-tp",
                       "--tokens", "3", "--output-file", str(out)]) == 0
    d = json.loads(out.read_text())["results"]["decode"]
    assert d["tensor_parallel_shards"] == 2 and d["numa_placement"] is True
    assert d["tokens"] == 3 and d["tokens_per_s"] > 0


def _rank_1_dies(rank: int, *args: object) -> None:
    if rank == 1:
        os._exit(7)
    bench._rank_main(rank, *args)


def _rank_1_hangs(rank: int, *args: object) -> None:
    if rank == 1:
        time.sleep(600)
    bench._rank_main(rank, *args)


@pytest.mark.parametrize("rank_main, message", [
    (_rank_1_dies, "all-reduce rank 1 died before reporting (exit code 7)"),
    (_rank_1_hangs, "all-reduce ranks [0, 1] did not report within 3 s"),
])
def test_allreduce_waits_for_a_lost_rank_no_longer_than_its_bound(rank_main, message):
    class Lossy(bench.NUMATensorParallelBenchmark):
        pass

    Lossy.rank_main = staticmethod(rank_main)
    b = Lossy({"tensor_parallel_shards": 2, "iters": 5, "timeout_s": 3})
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match=re.escape(message)):
        b.run_allreduce_benchmark([256])
    assert time.monotonic() - t0 < 30


@pytest.mark.parametrize("fail", [False, True], ids=["run", "failing run"])
def test_no_temporary_directory_is_left(tmp_path, monkeypatch, fail):
    def load(model_dir):
        assert model_dir.is_dir()  # the example model is written in the run's directory
        if fail:
            raise KeyboardInterrupt
        return {"benchmark": "load"}

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(bench, "bench_load", load)
    monkeypatch.setattr(bench, "_example_model", lambda tmp, size="default":
                        tmp.joinpath(size).mkdir() or tmp / size)
    out = tmp_path / "r.json"
    argv = ["--only", "planner,load", "--output-file", str(out)]
    if fail:
        with pytest.raises(KeyboardInterrupt):
            bench.main(argv)
    else:
        assert bench.main(argv) == 0
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]
    assert json.loads(out.read_text())["results"]["planner"]["status"] == "optimal"
