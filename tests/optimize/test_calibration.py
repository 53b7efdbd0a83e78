"""Calibration hygiene: refuse fewer than 100 images, warn below 300, record what was used."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvdeploy.errors import DatasetError, UsageError
from cvdeploy.optimize.calibration import build_calibration_set
from tests.optimize.conftest import image_folder


def test_fewer_than_100_is_refused(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "few", 12)
    with pytest.raises(UsageError) as exc:
        build_calibration_set(folder)
    assert "12 calibration image" in exc.value.message
    assert "--force" in (exc.value.hint or "")


def test_force_accepts_with_a_warning(tmp_path: Path) -> None:
    folder = image_folder(tmp_path / "few", 12)
    cal = build_calibration_set(folder, force=True)
    assert cal.count == 12
    assert any("--force" in w for w in cal.warnings)


def test_fewer_than_300_warns_and_records(calib_120: Path) -> None:
    cal = build_calibration_set(calib_120, method="entropy")
    assert cal.count == 120
    assert any("300" in w for w in cal.warnings)
    rec = cal.record()
    assert rec["calib_count"] == 120
    assert rec["calib_method"] == "entropy"
    assert len(rec["calib_sha256"]) == 64


def test_size_limits_and_hash_follows_the_list(calib_120: Path) -> None:
    a = build_calibration_set(calib_120, size=100)
    b = build_calibration_set(calib_120, size=110)
    assert a.count == 100 and b.count == 110
    assert a.sha256 != b.sha256
    assert a.sha256 == build_calibration_set(calib_120, size=100).sha256


def test_bad_method_and_missing_data(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        build_calibration_set(tmp_path, method="kl")
    with pytest.raises(DatasetError):
        build_calibration_set(tmp_path / "nope")
