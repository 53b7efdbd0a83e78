"""Property tests (hypothesis): the parsers of untrusted input fail only with cvdeploy's own
errors, the audit log reader names what changed and never crashes, the registry keeps its
invariants under any sequence of operations.

Bounded here (profile ``ci``); ``make fuzz`` runs them with many more cases.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from PIL import Image

from cvdeploy.errors import ApiError, CvdeployError

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def _image(fmt: str, w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


SEEDS = [_image(f, 24, 16, i) for i, f in enumerate(("JPEG", "PNG", "BMP", "WEBP", "TIFF"))]


@st.composite
def mutated_images(draw: Any) -> bytes:
    """A valid small image with bytes flipped, cut, duplicated or inserted."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "cut", "insert", "dup"]))
        i = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[i] ^= draw(st.integers(1, 255))
        elif op == "cut":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=32))
        else:
            data[i:i] = data[i : i + draw(st.integers(1, 64))]
    return bytes(data)


# image decoding ------------------------------------------------------------------------------
@given(data=mutated_images() | st.binary(max_size=256))
def test_decoding_untrusted_bytes_is_an_answer_or_an_api_error(data: bytes) -> None:
    from cvdeploy.serve.inputs import decode_checked, image_pixels

    assert image_pixels("x", data) >= 0
    for fit in (None, (8, 8)):
        try:
            im = decode_checked("x", data, max_pixels=1_000_000, fit=fit)
        except ApiError as exc:
            assert exc.http_status in (400, 413, 415), exc
        else:
            assert im.image.ndim == 3 and im.image.dtype == np.uint8


@given(body=st.binary(max_size=512) | JSON.map(lambda d: json.dumps(d).encode()))
def test_json_bodies_parse_or_answer_400(body: bytes) -> None:
    from cvdeploy.serve.inputs import _json_images

    try:
        items = _json_images(body)
    except ApiError as exc:
        assert exc.http_status == 400
    else:
        assert all(isinstance(d, bytes) for _, d in items)


# spec and manifest parsers --------------------------------------------------------------------
@given(doc=JSON)
def test_spec_files_are_specs_or_spec_errors(tmp_path_factory: Any, doc: Any) -> None:
    from cvdeploy.export.sources import read_spec_file

    path = tmp_path_factory.mktemp("spec") / "spec.json"
    path.write_text(json.dumps(doc))
    with contextlib.suppress(CvdeployError):
        read_spec_file(path)


@pytest.fixture(scope="module")
def manifest(tiny_bundle: Path) -> dict[str, Any]:
    return dict(json.loads((tiny_bundle / "bundle.json").read_text()))


def _mutate(doc: Any, draw: Any, depth: int = 0) -> Any:
    if isinstance(doc, dict) and doc and depth < 6:
        key = draw(st.sampled_from(sorted(doc)))
        action = draw(st.sampled_from(["drop", "replace", "descend", "descend"]))
        out = dict(doc)
        if action == "drop":
            del out[key]
        elif action == "replace":
            out[key] = draw(JSON)
        else:
            out[key] = _mutate(doc[key], draw, depth + 1)
        return out
    if isinstance(doc, list) and doc and depth < 6:
        i = draw(st.integers(0, len(doc) - 1))
        return [*doc[:i], _mutate(doc[i], draw, depth + 1), *doc[i + 1 :]]
    return draw(JSON)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
def test_manifests_load_or_raise_bundle_errors(
    data: Any, manifest: dict[str, Any], tiny_bundle: Path, tmp_path_factory: Any
) -> None:
    from cvdeploy.bundle import Bundle

    d = tmp_path_factory.mktemp("b")
    shutil.copytree(tiny_bundle, d, dirs_exist_ok=True)
    doc = _mutate(manifest, data.draw)
    (d / "bundle.json").write_text(json.dumps(doc))
    with contextlib.suppress(CvdeployError):
        Bundle.load(d)


def test_a_deeply_nested_manifest_is_a_bundle_error(tmp_path: Path) -> None:
    from cvdeploy.bundle import Bundle
    from cvdeploy.errors import BundleError

    (tmp_path / "bundle.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(BundleError, match="not valid JSON"):
        Bundle.load(tmp_path)


# the audit log reader ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def audit_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    from cvdeploy.security.audit import AuditLog, write_key

    d = tmp_path_factory.mktemp("audit")
    from cvdeploy.security.audit import load_key

    key = load_key(write_key(d / "k"))
    log = AuditLog(d / "a.log", key)
    for i in range(8):
        log.record(actor=f"user:u{i}", action="predict", outcome="ok", target="tiny", n=i)
    return key, (d / "a.log").read_bytes()


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_audit_reader_names_every_change_and_never_crashes(
    data: Any, audit_files: tuple[bytes, bytes], tmp_path_factory: Any
) -> None:
    from cvdeploy.security.audit import AuditLog, verify_log

    key, original = audit_files
    lines = original.split(b"\n")[:-1]
    op = data.draw(st.sampled_from(["edit", "delete", "swap", "insert", "truncate", "bytes"]))
    changed = list(lines)
    i = data.draw(st.integers(0, len(lines) - 1))
    if op == "edit":
        raw = bytearray(changed[i])
        j = data.draw(st.integers(0, len(raw) - 1))
        raw[j] = data.draw(st.integers(32, 126))
        assume(bytes(raw) != changed[i])
        changed[i] = bytes(raw)
    elif op == "delete":
        del changed[i]
    elif op == "swap":
        j = data.draw(st.integers(0, len(lines) - 1))
        assume(i != j)
        changed[i], changed[j] = changed[j], changed[i]
    elif op == "insert":
        changed.insert(i, data.draw(st.sampled_from(lines[:i] + lines[i + 1 :])))
    elif op == "truncate":  # the tail: found only with a checkpoint (not given here)
        changed = changed[: max(1, i)]
    text = b"\n".join(changed) + b"\n"
    if op == "bytes":
        cut = data.draw(st.integers(0, len(original)))
        text = original[:cut] + data.draw(st.binary(max_size=64)) + original[cut:]
        assume(text != original)
    path = tmp_path_factory.mktemp("a") / "a.log"
    path.write_bytes(text)
    report = verify_log([path], key)
    if op == "truncate" or (op == "delete" and i == len(lines) - 1):
        assert report.ok  # the tail: undetectable without a checkpoint
    elif op != "bytes":
        assert not report.ok, (op, i)
    # a writer either continues a valid tail or refuses with a clear error
    with contextlib.suppress(CvdeployError):
        AuditLog(path, key).record(actor="x", action="y", outcome="ok")


# the registry ------------------------------------------------------------------------------
class RegistryMachine(RuleBasedStateMachine):
    """Promote and roll back at random; the state always parses and stays consistent."""

    sources: ClassVar[list[Path]] = []  # (`bundles` is the state machine's own attribute)

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        from cvdeploy.serve.registry import ModelRegistry

        self.tmp = Path(tempfile.mkdtemp(prefix="cvd-regsm-"))
        self.reg = ModelRegistry(self.tmp / "reg", create=True)
        for b in self.sources:
            self.reg.add(b)
        self.versions = ["1", "2", "3"][: len(self.sources)]
        self.production = "1"
        self.previous: list[str] = []

    @rule(v=st.sampled_from(["1", "2", "3", "9"]), stage=st.sampled_from(["production", "x"]))
    def promote(self, v: str, stage: str) -> None:
        try:
            before = self.reg.promote("tiny", v, stage=stage)
        except CvdeployError:
            assert v not in self.versions or stage != "production"
            return
        if stage == "production":
            assert before == self.production
            if before != v:
                self.previous.append(before)
            self.production = v

    @precondition(lambda self: True)
    @rule()
    def rollback(self) -> None:
        try:
            _, to = self.reg.rollback("tiny")
        except CvdeployError:
            assert not self.previous
            return
        assert to == self.previous.pop()
        self.production = to

    @invariant()
    def consistent(self) -> None:
        m = self.reg.model("tiny")
        assert m["stages"]["production"] == self.production
        assert m["previous"] == self.previous
        assert set(m["previous"]) <= set(m["versions"])
        assert not list(self.reg.root.glob(".registry.json.*.tmp"))

    def teardown(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def test_registry_state_machine(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.serve.conftest import make_bundle

    root = tmp_path_factory.mktemp("regsm")
    RegistryMachine.sources = [make_bundle(root / str(i), seed=i) for i in range(3)]
    run = RegistryMachine.TestCase
    run.settings = settings(max_examples=25, stateful_step_count=12, deadline=None)
    run().runTest()


_DEEP = r"""
import sys
from pathlib import Path
sys.setrecursionlimit(2**31 - 1)  # as onnx2tf does when it is imported
deep = "[" * 200_000 + "]" * 200_000
d = Path(sys.argv[1])
from cvdeploy.errors import CvdeployError
from cvdeploy.bundle import Bundle
(d / "b").mkdir()
(d / "b" / "bundle.json").write_text(deep)
try:
    Bundle.load(d / "b")
except CvdeployError as e:
    print("bundle:", type(e).__name__)
from cvdeploy.export.sources import read_spec_file
(d / "spec.json").write_text(deep)
try:
    read_spec_file(d / "spec.json")
except CvdeployError as e:
    print("spec:", type(e).__name__)
from cvdeploy.serve.registry import ModelRegistry
(d / "reg").mkdir()
(d / "reg" / "registry.json").write_text(deep)
try:
    ModelRegistry(d / "reg").state()
except CvdeployError as e:
    print("registry:", type(e).__name__)
from cvdeploy.security.audit import verify_log
(d / "a.log").write_text(deep + "\n")
print("audit:", [p["problem"] for p in verify_log([d / "a.log"], b"k" * 32).problems])
"""


def test_deep_json_with_a_raised_recursion_limit_is_an_error_not_a_crash(tmp_path: Path) -> None:
    """onnx2tf raises the recursion limit of the whole process at import; a file nested
    200,000 deep then overflowed the C stack (a segmentation fault) instead of raising."""
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", _DEEP, str(tmp_path)], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert r.stdout.split("\n")[:4] == [
        "bundle: BundleError",
        "spec: SpecError",
        "registry: InputError",
        "audit: ['not_json']",
    ], r.stdout
