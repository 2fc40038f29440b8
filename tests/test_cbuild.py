"""The shared build-at-first-use helper: fallback between flag sets, errors, no leftovers."""

from __future__ import annotations

import pytest

from numaplan import _cbuild
from numaplan.errors import CBuildError


@pytest.fixture
def cc():
    cc = _cbuild.find_compiler()
    if cc is None:
        pytest.skip("no C compiler")
    return cc


def test_first_flag_set_that_builds_wins_and_is_cached(cc, tmp_path):
    src = tmp_path / "k.c"
    src.write_text("int answer(void) { return 42; }\n")
    cache = tmp_path / "cache"
    bad = ("-shared", "-fPIC", "--no-such-flag-numaplan")
    good = ("-O2", "-shared", "-fPIC")
    path = _cbuild.compile_cached(src, "k", (bad, good), cc=cc, cache=cache)
    assert path == _cbuild.library_path(src, "k", cc, good, cache) and path.is_file()
    assert sorted(p.name for p in cache.iterdir()) == [path.name]  # no temporary file left
    mtime = path.stat().st_mtime_ns
    assert _cbuild.compile_cached(src, "k", (bad, good), cc=cc, cache=cache) == path
    assert path.stat().st_mtime_ns == mtime
    src.write_text("int answer(void) { return 43; }\n")  # an edit is a new build
    assert _cbuild.compile_cached(src, "k", (good,), cc=cc, cache=cache) != path


def test_every_flag_set_failing_is_a_c_build_error(cc, tmp_path):
    src = tmp_path / "broken.c"
    src.write_text("this is not C\n")
    with pytest.raises(CBuildError, match=r"compiling broken\.c with .* failed"):
        _cbuild.compile_cached(src, "b", (("-shared", "-fPIC"),), cc=cc, cache=tmp_path / "c")
    assert not list((tmp_path / "c").iterdir())


def test_no_compiler_is_a_c_build_error(monkeypatch, tmp_path):
    monkeypatch.setattr(_cbuild, "find_compiler", lambda: None)
    with pytest.raises(CBuildError, match="no C compiler found"):
        _cbuild.compile_cached(tmp_path / "k.c", "k", (("-O2",),))
