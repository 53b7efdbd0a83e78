"""Per-image statistics: JPEG quality from the quantization table, reduced decodes that give
the same statistics as the reference's, prediction statistics."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from cvdeploy.diagnose import decode_for_features, image_features, jpeg_reduction, result_features
from cvdeploy.diagnose.features import IMAGE_FEATURES, jpeg_quality
from cvdeploy.pipeline import Classification, Detections


def _photo(h: int = 600, w: int = 800) -> np.ndarray:
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), (0, 0), 3)
    cv2.circle(img, (w // 2, h // 2), h // 4, (30, 200, 90), -1)
    return img


@pytest.mark.parametrize("q", [20, 50, 75, 95])
def test_jpeg_quality_is_read_from_the_quantization_table(q: int) -> None:
    ok, buf = cv2.imencode(".jpg", _photo(64, 64), [cv2.IMWRITE_JPEG_QUALITY, q])
    assert ok
    assert abs(jpeg_quality(buf.tobytes()) - q) <= 1.5


def test_jpeg_quality_is_nan_for_other_formats() -> None:
    _, png = cv2.imencode(".png", _photo(32, 32))
    assert math.isnan(jpeg_quality(png.tobytes())) and math.isnan(jpeg_quality(None))
    assert math.isnan(jpeg_quality(b"\xff\xd8 truncated"))


def test_reduced_decode_rule_matches_the_server() -> None:
    from cvdeploy.serve.inputs import jpeg_reduction as served  # the rule the server uses

    for size in [(4000, 3000), (1300, 700), (640, 480), (2560, 1280)]:
        for fit in [(640, 640), (320, 320), (416, 416)]:
            assert jpeg_reduction(size, fit) == served(size, fit)


def test_statistics_of_a_reduced_decode_equal_the_reference_decode() -> None:
    big = cv2.resize(_photo(), (3200, 2400))
    data = cv2.imencode(".jpg", big, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    fit = (640, 640)
    img, size, f = decode_for_features(data, fit)
    assert f == 2 and size == (3200, 2400) and img.shape[:2] == (1200, 1600)
    # the server decoded at the same reduction: same statistics, whoever computes them
    served = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
    a = image_features(img, data=data, size=size, side=640)
    b = image_features(served, data=data, size=size, side=640)
    assert np.allclose(a, b)
    assert (
        a[IMAGE_FEATURES.index("width")] == 3200
        and abs(a[IMAGE_FEATURES.index("jpeg_quality")] - 90) < 1
    )


def test_image_statistics_move_with_the_image() -> None:
    img = _photo(240, 320)
    base = image_features(img)
    dark = image_features((img * 0.5).astype(np.uint8))
    blur = image_features(cv2.GaussianBlur(img, (0, 0), 2.0))
    noisy = image_features(
        np.clip(img + np.random.default_rng(1).normal(0, 12, img.shape), 0, 255).astype(np.uint8)
    )
    i = IMAGE_FEATURES.index
    assert dark[i("brightness")] < 0.6 * base[i("brightness")]
    assert blur[i("sharpness")] < base[i("sharpness")] - 0.3
    assert noisy[i("noise")] > base[i("noise")] + 5
    gray = image_features(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY))
    assert gray[i("saturation")] == 0


def test_prediction_statistics() -> None:
    det = Detections(
        boxes=np.array([[0, 0, 10, 10], [0, 0, 20, 20], [5, 5, 6, 6]], np.float32),
        scores=np.array([0.9, 0.5, 0.1], np.float32),
        class_ids=np.array([0, 2, 1]),
    )
    feats, counts = result_features(det, conf=0.25, num_classes=3, image_size=(100, 100))
    assert feats[0] == 2 and feats[1] == pytest.approx(0.7) and feats[2] == pytest.approx(0.9)
    assert feats[3] == pytest.approx(np.median([0.01, 0.04]))
    assert counts.tolist() == [1.0, 0.0, 1.0]
    none, c0 = result_features(Detections.empty(), conf=0.25, num_classes=3, image_size=(9, 9))
    assert none[0] == 0 and math.isnan(none[1]) and c0.sum() == 0
    cls, cc = result_features(
        Classification(probs=np.array([0.1, 0.7, 0.2], np.float32)),
        conf=0.25,
        num_classes=3,
        image_size=(9, 9),
    )
    assert cls[0] == pytest.approx(0.7) and cc.tolist() == [0, 1, 0]
