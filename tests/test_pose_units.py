"""DWPose's arithmetic (services/pose/dwpose.py) on hand-made model outputs: the detector's anchor
decoding, score and class filters and NMS; the crop box; SimCC decoding back to image pixels; the
OpenPose body the skeleton is drawn from. No model files."""
import numpy as np
import pytest

from services.pose import dwpose

N_ANCHORS = 80 * 80 + 40 * 40 + 20 * 20


def coarse_row(gx: int, gy: int) -> int:
    """The output row of the stride-32 anchor at grid cell (gx, gy) (strides 8, 16, 32 in order)."""
    return 80 * 80 + 40 * 40 + gy * 20 + gx


def detector_output(*anchors) -> np.ndarray:
    out = np.zeros((1, N_ANCHORS, 85), np.float32)
    for row, (w, h), obj, cls, prob in anchors:
        out[0, row, :4] = [0.5, 0.5, np.log(w / 32), np.log(h / 32)]
        out[0, row, 4] = obj
        out[0, row, 5 + cls] = prob
    return out


def test_detector_input_keeps_the_aspect_top_left_on_grey():
    img = np.full((160, 320, 3), 255, np.uint8)
    tensor, ratio = dwpose.detector_input(img)
    assert tensor.shape == (1, 3, 640, 640) and tensor.dtype == np.float32 and ratio == 2.0
    assert (tensor[0, :, :320, :] == 255).all() and (tensor[0, :, 320:, :] == 114).all()


def test_person_boxes_decode_filter_and_merge():
    out = detector_output(
        (coarse_row(5, 7), (128, 256), 0.9, 0, 0.9),   # a person, centre (176, 240)
        (coarse_row(6, 7), (128, 256), 0.9, 0, 0.8),   # the same person one cell right, weaker: merged
        (coarse_row(15, 7), (128, 256), 0.9, 0, 0.7),  # another person, far right: kept
        (coarse_row(10, 2), (64, 64), 0.9, 2, 0.95),   # a car: not a person
        (coarse_row(10, 15), (128, 256), 0.5, 0, 0.5),  # 0.25 <= 0.3: too unsure
    )
    boxes = dwpose.person_boxes(out, ratio=2.0)
    assert boxes.shape == (2, 5)
    np.testing.assert_allclose(boxes[0, :4], [(176 - 64) / 2, (240 - 128) / 2, (176 + 64) / 2, (240 + 128) / 2])
    assert boxes[0, 4] == pytest.approx(0.81)
    np.testing.assert_allclose(boxes[1, :4], [(496 - 64) / 2, 56, (496 + 64) / 2, 184])
    assert dwpose.person_boxes(detector_output(), ratio=1.0).shape == (0, 5)
    with pytest.raises(ValueError, match="8400"):
        dwpose.person_boxes(np.zeros((1, 100, 85), np.float32), ratio=1.0)


def test_crop_box_is_padded_and_set_to_the_model_aspect():
    centre, scale = dwpose.box_to_centre_scale(np.array([10, 20, 110, 120]), 0.75)
    np.testing.assert_allclose(centre, [60, 70])
    np.testing.assert_allclose(scale, [125, 125 / 0.75])  # wide: the height grows
    _, scale = dwpose.box_to_centre_scale(np.array([0, 0, 30, 200]), 0.75)
    np.testing.assert_allclose(scale, [250 * 0.75, 250])  # tall: the width grows


def test_simcc_maps_back_to_image_pixels_with_the_weaker_axis_as_score():
    size = (288, 384)
    sx, sy = np.zeros((1, 3, 576), np.float32), np.zeros((1, 3, 768), np.float32)
    sx[0, 0, 288], sy[0, 0, 384] = 0.9, 0.6  # the crop's centre
    sx[0, 1, 0], sy[0, 1, 0] = 0.5, 0.7  # its top-left corner
    sx[0, 2] -= 1  # nothing: every bin negative
    centre, scale = np.array([100, 200], np.float32), np.array([150, 200], np.float32)
    kps, scores = dwpose.decode_simcc(sx, sy, size, centre, scale)
    np.testing.assert_allclose(kps[0], [100, 200])
    np.testing.assert_allclose(kps[1], [25, 100])
    np.testing.assert_allclose(scores[:2], [0.6, 0.5])
    assert (kps[2] == -1).all() and scores[2] < 0


def test_the_openpose_body_reorders_coco_and_adds_the_neck():
    kps = np.arange(133 * 2, dtype=np.float32).reshape(133, 2)
    scores = np.full(133, 0.9, np.float32)
    pts, sc = dwpose.openpose_body(kps, scores)
    assert pts.shape == (18, 2)
    np.testing.assert_allclose(pts[0], kps[0])  # nose
    np.testing.assert_allclose(pts[1], (kps[5] + kps[6]) / 2)  # neck between the shoulders
    np.testing.assert_allclose(pts[2], kps[6])  # right shoulder
    np.testing.assert_allclose(pts[5], kps[5])  # left shoulder
    np.testing.assert_allclose(pts[[14, 15, 16, 17]], kps[[2, 1, 4, 3]])  # eyes and ears
    assert sc[1] == pytest.approx(0.9)
    scores[6] = 0.2  # one shoulder unseen: no neck
    assert dwpose.openpose_body(kps, scores)[1][1] == 0
