"""``numaplan serve``'s command line: mistakes are one line and a non-zero exit, before any
planning or compiling."""

from __future__ import annotations

import socket

from numaplan.cli.main import main


def test_an_address_in_use_fails_before_the_engine_starts(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", str(tmp_path / "no-model"), "--port", str(port)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("numaplan: error: cannot listen on 127.0.0.1:") and "\n" not in err


def test_bad_options(tmp_path, capsys):
    model = str(tmp_path / "m")
    assert main(["serve", model, "--mode", "turbo"]) == 2
    assert main(["serve", model, "--numa-inter-node-penalty", "3"]) != 0
    assert main(["serve", model, "--port", "70000"]) == 2
    assert main(["serve", model, "--max-queue", "-1"]) == 2
    assert "--max-queue must be >= 0" in capsys.readouterr().err


def test_a_missing_model_is_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing"), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("numaplan: error:") and "\n" not in err
