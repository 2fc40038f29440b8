"""Every file numaplan reads, corrupted: the outcome is exit 0 (the corruption left a valid file)
or exit 1/2 with one line that names the file, never an internal error or a traceback, and a
failed command that writes leaves no file behind.

Each reader runs through the command line's own error mapping (:func:`numaplan.cli.main.exit_code`;
``main`` itself for the commands that write, below). Corruptions are byte
edits (cut, delete, insert hostile tokens, overwrite, duplicate) and, for JSON, edits of the
decoded document (a value replaced by one of another type or an extreme one, a key or item
removed). CI (``CI`` set, fixed seed) draws :data:`EXAMPLES` per reader; a local run draws fewer.
Every failure a search found is pinned with ``@example`` beside its test.
"""

from __future__ import annotations

import copy
import functools
import io
import json
import os
import shutil
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from numaplan.cli.main import exit_code, main
from numaplan.cost import cost_from_slit
from numaplan.model import load_workload, read_hf_config
from numaplan.plan import read_plan
from numaplan.plan.settings import PlanSettings, load_cost
from numaplan.plan.table import render_plan_table
from numaplan.topology import load_topology, read_sample, sample_path, synthetic_topology
from tests.cost.test_intel_mlc import FULL_RUN
from tests.model.mlc_fixtures import write_mlc_dir
from tests.topology.test_pasted import LSCPU

_CI = bool(os.environ.get("CI")) or os.environ.get("NUMAPLAN_HYPOTHESIS_PROFILE") == "ci"
#: Examples per reader: at least 1000 in CI; NUMAPLAN_HYPOTHESIS_EXAMPLES asks for more.
EXAMPLES = max(1000 if _CI else 100, int(os.environ.get("NUMAPLAN_HYPOTHESIS_EXAMPLES", 0)))
FUZZ = settings(max_examples=EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.large_base_example])

ROOT = Path(__file__).resolve().parents[2]
HWLOC = ROOT / "tests" / "topology" / "data" / "hwloc"
GOLDEN = ROOT / "tests" / "golden"

# -- corruptions --------------------------------------------------------------------------------

#: Byte strings that break parsers in interesting ways.
HOSTILE = (b"\r\n", b"\n\n", b"\x00", b"\xff\xfe", b"\xe2\x80\xa8", b"-1", b"0", b"1e999",
           b"NaN", b"99999999999999999999999", b"\t", b" ", b'"', b"'", b"<", b"</object>",
           b"<!--", b"&amp;", b"{}", b"[]", b"null", b",", b":", b"(", b")", b"-", b"node 0 ",
           b"\xd9\xa3", b"\xef\xbc\x91")


@st.composite
def byte_edits(draw: st.DrawFn, seed: bytes, *, focus: int | None = None) -> bytes:
    """``seed`` with one to four byte edits (within the first ``focus`` bytes when given)."""
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 4))):
        end = len(data) if focus is None else min(focus, len(data))
        i = draw(st.integers(0, end))
        op = draw(st.sampled_from(("cut", "delete", "insert", "overwrite", "duplicate")))
        span = draw(st.integers(1, 64))
        if op == "cut":
            del data[i:]
        elif op == "delete":
            del data[i:i + span]
        elif op == "insert":
            data[i:i] = draw(st.sampled_from(HOSTILE) | st.binary(min_size=1, max_size=8))
        elif op == "overwrite" and i < len(data):
            data[i] = draw(st.integers(0, 255))
        elif op == "duplicate":
            data[i:i] = data[i:i + span]
    return bytes(data)


JSON_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.sampled_from((0, -1, 1, 2**31, 2**63, 2**64 + 1, 0.5, -0.0, 1e308, float("nan"),
                     float("inf"), "", "0", "-1", "q4f16_1", "llama", "raw", "float16",
                     [], {}, [[]], [0], [-1, 2**40], {"": None})),
    st.text(max_size=12),
    st.lists(st.integers(-3, 2**33), max_size=4),
)


@st.composite
def _slot(draw: st.DrawFn, doc: dict | list) -> tuple[dict | list, object] | None:
    """A (container, key) of a decoded JSON document, found by a random walk from the root
    (cheap on large documents, and shallow and deep slots alike get drawn)."""
    container: dict | list = doc
    while True:
        keys = list(container) if isinstance(container, dict) else list(range(len(container)))
        if not keys:
            return None
        key = draw(st.sampled_from(keys))
        value = container[key]  # type: ignore[index]
        if not isinstance(value, dict | list) or not value or draw(st.booleans()):
            return container, key
        container = value


@st.composite
def json_edits(draw: st.DrawFn, seed: bytes) -> bytes:
    """The JSON document ``seed`` with one to three values replaced or removed, encoded again."""
    doc = json.loads(seed)  # a fresh copy to edit (faster than deep-copying a decoded one)
    for _ in range(draw(st.integers(1, 3))):
        slot = draw(_slot(doc)) if isinstance(doc, dict | list) else None
        if slot is None:
            break
        container, key = slot
        if draw(st.booleans()):
            del container[key]  # type: ignore[arg-type]
        else:
            # A copy: the sampled lists and dicts are shared, and a later edit may reach inside.
            container[key] = copy.deepcopy(draw(JSON_VALUES))  # type: ignore[index]
    return json.dumps(doc).encode()


@functools.cache
def corruptions(seed: bytes) -> st.SearchStrategy[bytes]:
    """Byte edits of ``seed``, plus document edits when it is JSON."""
    try:
        json.loads(seed)
    except ValueError:
        return byte_edits(seed)
    return st.one_of(byte_edits(seed), json_edits(seed))


# -- the check ----------------------------------------------------------------------------------

def _files(directory: Path | None) -> dict[str, bytes]:
    if directory is None or not directory.exists():
        return {}
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


def check_outcome(call: Callable[[], int | None], path: Path, *, out: Path | None = None,
                  named: Path | None = None) -> int:
    """Run ``call`` as the command line would; assert a clean success or a clean refusal.

    The error must name ``named`` (default: the corrupted ``path``); a model directory's files
    are checked against each other, so there any file of the directory may be the one named.
    """
    before = _files(out)
    err = io.StringIO()
    with redirect_stderr(err), redirect_stdout(io.StringIO()):
        code = call()
    stderr = err.getvalue()
    assert code in (0, 1, 2), stderr
    assert "Traceback" not in stderr, stderr
    if code:
        errors = [ln for ln in stderr.splitlines() if ln.startswith("numaplan: ")]
        assert len(errors) == 1 and errors[0].startswith("numaplan: error: "), stderr
        named = named or path
        assert str(named) in errors[0], f"the error does not name {named}: {errors[0]}"
        assert _files(out) == before, "a failed command changed its output"
    return code


def mapped(fn: Callable[[], object]) -> Callable[[], int]:
    """``fn`` through the command line's error mapping."""
    def call() -> int:
        fn()
        return 0
    return lambda: exit_code(call)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _topology(work: Path, source: str, name: str, data: bytes) -> None:
    path = work / name
    path.write_bytes(data)
    check_outcome(mapped(lambda: load_topology(**{source: path})), path)


# -- topology sources ---------------------------------------------------------------------------

NUMACTL_SEEDS = [sample_path(n).read_bytes() for n in ("epyc", "hsw", "xeonmax")]
LSCPU_SEEDS = [t.encode() for t in LSCPU.values()]
HWLOC_SEEDS = [p.read_bytes() for p in sorted(HWLOC.glob("*.xml"))]
TOPOLOGY_JSON_SEEDS = [read_sample(n).to_json().encode() for n in ("hsw", "xeonmax")]


@FUZZ
@given(data=st.sampled_from(NUMACTL_SEEDS).flatmap(corruptions))
def test_numactl_text(work, data):
    _topology(work, "numactl_file", "numactl.txt", data)


@FUZZ
@given(data=st.sampled_from(LSCPU_SEEDS).flatmap(corruptions))
def test_lscpu_text(work, data):
    _topology(work, "lscpu_file", "lscpu.txt", data)


@FUZZ
@given(data=st.sampled_from(HWLOC_SEEDS).flatmap(corruptions))
@example(data=HWLOC_SEEDS[0].replace(b'encoding="UTF-8"', b'encoding="TF-8"'))
def test_hwloc_xml(work, data):
    _topology(work, "hwloc_file", "topology.xml", data)


@FUZZ
@given(data=st.sampled_from(TOPOLOGY_JSON_SEEDS).flatmap(corruptions))
def test_topology_json(work, data):
    _topology(work, "json_path", "topology.json", data)


# -- model directories --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def mlc_dir(work) -> Path:
    return write_mlc_dir(work / "mlc")


def _model_reader(mlc_dir: Path, name: str, data: bytes) -> None:
    path = mlc_dir / name
    good = path.read_bytes()
    path.write_bytes(data)
    try:
        check_outcome(mapped(lambda: load_workload(mlc_dir)), path, named=mlc_dir)
    finally:
        path.write_bytes(good)


def _seed(mlc_dir: Path, name: str) -> bytes:
    return (mlc_dir / name).read_bytes()


@FUZZ
@given(data=st.data())
def test_mlc_chat_config(mlc_dir, data):
    data = data.draw(corruptions(_seed(mlc_dir, "mlc-chat-config.json")))
    _model_reader(mlc_dir, "mlc-chat-config.json", data)


@FUZZ
@given(data=st.data())
def test_tensor_cache_index(mlc_dir, data):
    data = data.draw(corruptions(_seed(mlc_dir, "tensor-cache.json")))
    _model_reader(mlc_dir, "tensor-cache.json", data)


@FUZZ
@given(data=st.data())
def test_hugging_face_config(mlc_dir, data):
    path = mlc_dir / "hf" / "config.json"
    good = path.read_bytes()
    path.write_bytes(data.draw(corruptions(good)))
    try:
        check_outcome(mapped(lambda: read_hf_config(path, quantization="q4f16_1")), path)
    finally:
        path.write_bytes(good)


# -- plans and cost models ----------------------------------------------------------------------

PLAN_SEEDS = [p.read_bytes() for p in sorted(GOLDEN.glob("*.plan.json"))[:3]]


def _edited(seed: bytes, edit: Callable[[dict], object]) -> bytes:
    doc = json.loads(seed)
    edit(doc)
    return json.dumps(doc).encode()


@FUZZ
@given(data=st.sampled_from(PLAN_SEEDS).flatmap(corruptions))
@example(data=_edited(PLAN_SEEDS[2], lambda d: d["collectives"]["intra_node_groups"].__setitem__(
    0, [])))
def test_plan_json(work, data):
    path = work / "plan.json"
    path.write_bytes(data)
    check_outcome(mapped(lambda: render_plan_table(read_plan(path))), path)


XEONMAX = read_sample("xeonmax")
COST_SEED = cost_from_slit(XEONMAX, penalty=0.5).to_json().encode()


@FUZZ
@given(data=corruptions(COST_SEED))
def test_cost_json(work, data):
    path = work / "cost.json"
    path.write_bytes(data)
    check_outcome(mapped(lambda: load_cost(PlanSettings(cost_model=str(path)), XEONMAX)), path)


TWO_SOCKETS = synthetic_topology(sockets=2)


@FUZZ
@given(data=corruptions(FULL_RUN.encode()))
@example(data=FULL_RUN.replace(" 141.0\n       1\t 141.5\t  81.5", " 141.81.5").encode())
def test_intel_mlc_output(work, data):
    path = work / "mlc.txt"
    path.write_bytes(data)
    check_outcome(mapped(lambda: load_cost(PlanSettings(mlc_output=str(path)), TWO_SOCKETS)),
                  path)


# -- GGUF ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def gguf_seed(work) -> tuple[bytes, int]:
    """A small GGUF file and the length of its header (metadata and tensor infos)."""
    gguf = pytest.importorskip("gguf", reason="GGUF conversion needs the gguf package")
    from tests.convert.test_convert import write_gguf

    path = work / "seed.gguf"
    write_gguf(path)
    return path.read_bytes(), gguf.GGUFReader(path).data_offset


@FUZZ
@given(data=st.data())
def test_gguf_header(work, gguf_seed, data):
    from numaplan.convert.gguf_model import GGUFModel

    seed, header = gguf_seed
    path = work / "model.gguf"
    path.write_bytes(data.draw(byte_edits(seed, focus=header)))
    check_outcome(mapped(lambda: GGUFModel(path).model_config()), path)


# -- commands that write: nothing is left behind by a failure ----------------------------------

#: The writing commands plan or convert when a corruption leaves the input valid (~0.1 s), so
#: they draw a tenth as many examples (100 in CI); the readers above take the 1000.
WRITERS = settings(FUZZ, max_examples=max(50 if _CI else 15, EXAMPLES // 10))
HSW = read_sample("hsw")


def _fresh(directory: Path) -> Path:
    shutil.rmtree(directory, ignore_errors=True)
    return directory


@WRITERS
@given(which=st.sampled_from(("mlc-chat-config.json", "tensor-cache.json", "cost.json",
                              "numactl.txt")), data=st.data())
def test_compile_writes_all_or_nothing(work, mlc_dir, which, data):
    cost, topo = work / "compile-cost.json", work / "compile-numactl.txt"
    cost.write_text(cost_from_slit(HSW, penalty=0.5).to_json())
    topo.write_bytes(sample_path("hsw").read_bytes())
    path = {"cost.json": cost, "numactl.txt": topo}.get(which, mlc_dir / which)
    good = path.read_bytes()
    path.write_bytes(data.draw(corruptions(good)))
    out = _fresh(work / "compiled")
    try:
        check_outcome(lambda: main(["compile", str(mlc_dir), "--no-build", "-o", str(out),
                                    "--numactl-file", str(topo), "--cost", str(cost)]),
                      path, out=out, named=mlc_dir if path.parent == mlc_dir else path)
    finally:
        path.write_bytes(good)


@WRITERS
@given(data=st.sampled_from(NUMACTL_SEEDS).flatmap(corruptions))
def test_topology_output_all_or_nothing(work, data):
    path = work / "numactl-out.txt"
    path.write_bytes(data)
    out = _fresh(work / "topology-out")
    out.mkdir()
    check_outcome(lambda: main(["topology", "--numactl-file", str(path), "--json", "-o",
                                str(out / "topology.json")]), path, out=out)


@WRITERS
@given(data=st.data())
def test_convert_writes_all_or_nothing(work, gguf_seed, data):
    seed, header = gguf_seed
    path = work / "convert.gguf"
    path.write_bytes(data.draw(byte_edits(seed, focus=header)))
    out = _fresh(work / "converted")
    code = check_outcome(lambda: main(["convert", str(path), "-o", str(out)]), path, out=out)
    if code:
        assert not out.exists() or not any(out.iterdir()), "a failed convert left a directory"
