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


def test_detector_input_fits_a_non_square_input_and_keeps_a_thin_strip():
    img = np.full((100, 400, 3), 255, np.uint8)
    tensor, ratio = dwpose.detector_input(img, size=(480, 640))  # (height, width)
    assert tensor.shape == (1, 3, 480, 640) and ratio == pytest.approx(1.6)
    assert (tensor[0, :, :160, :] == 255).all() and (tensor[0, :, 160:, :] == 114).all()
    strip, _ = dwpose.detector_input(np.full((1, 1000, 3), 255, np.uint8))  # 0.64 rows: still one
    assert (strip[0, :, 0, :] == 255).all() and (strip[0, :, 1:, :] == 114).all()
    tall = np.full((400, 100, 3), 255, np.uint8)
    tensor, ratio = dwpose.detector_input(tall, size=(480, 640))  # the height sets the scale
    assert ratio == pytest.approx(1.2)
    assert (tensor[0, :, :, :120] == 255).all() and (tensor[0, :, :, 120:] == 114).all()
    strip, _ = dwpose.detector_input(np.full((1000, 1, 3), 255, np.uint8))  # 0.64 columns: still one
    assert (strip[0, :, :, 0] == 255).all() and (strip[0, :, :, 1:] == 114).all()


def test_one_person_alone_is_found_and_a_score_of_exactly_0_3_is_not_enough():
    out = detector_output((coarse_row(5, 7), (128, 256), 1.0, 0, 0.9))
    boxes = dwpose.person_boxes(out, ratio=1.0)
    np.testing.assert_allclose(boxes, [[176 - 64, 240 - 128, 176 + 64, 240 + 128, 0.9]], rtol=1e-6)
    unsure = detector_output((coarse_row(5, 7), (128, 256), 1.0, 0, 0.3))
    assert dwpose.person_boxes(unsure, ratio=1.0).shape == (0, 5)
    wild = detector_output((coarse_row(5, 7), (128, 256), 1.0, 0, 0.9))
    wild[0, coarse_row(5, 7), 2:4] = 1000  # a wild size logit: a huge box, not an overflow
    assert np.isfinite(dwpose.person_boxes(wild, ratio=1.0)).all()


def test_people_overlapping_under_the_nms_threshold_are_both_kept():
    # Two 128x256 people, centres 2 cells (64 px) apart: IoU 64/192 = 0.33 < 0.45, both kept;
    # one cell (32 px) apart: IoU 96/160 = 0.6, merged into the stronger.
    apart = detector_output((coarse_row(5, 7), (128, 256), 1.0, 0, 0.9),
                            (coarse_row(7, 7), (128, 256), 1.0, 0, 0.8))
    assert dwpose.person_boxes(apart, ratio=1.0).shape == (2, 5)
    close = detector_output((coarse_row(5, 7), (128, 256), 1.0, 0, 0.8),
                            (coarse_row(6, 7), (128, 256), 1.0, 0, 0.9))
    boxes = dwpose.person_boxes(close, ratio=1.0)
    assert boxes.shape == (1, 5) and boxes[0, 4] == pytest.approx(0.9) and boxes[0, 0] == pytest.approx(144)


def test_person_boxes_on_a_non_square_input():
    size = (320, 640)  # (height, width): 40x80, 20x40 and 10x20 anchors
    n = 40 * 80 + 20 * 40 + 10 * 20
    out = np.zeros((1, n, 85), np.float32)
    row = 40 * 80 + 20 * 40 + 3 * 20 + 15  # stride 32, cell (15, 3)
    out[0, row, :4] = [0.5, 0.5, np.log(2), np.log(4)]
    out[0, row, 4], out[0, row, 5] = 1.0, 0.9
    boxes = dwpose.person_boxes(out, ratio=1.0, size=size)
    np.testing.assert_allclose(boxes[0, :4], [496 - 32, 112 - 64, 496 + 32, 112 + 64], rtol=1e-6)
    with pytest.raises(ValueError, match="the detector gave 8400 anchors; a 640x320 YOLOX input has 4200"):
        dwpose.person_boxes(np.zeros((1, N_ANCHORS, 85), np.float32), ratio=1.0, size=size)


def test_pose_input_is_the_padded_box_warped_to_the_model_size_and_normalised():
    yy, xx = np.mgrid[0:240, 0:240]
    rgb = np.stack([xx, yy, np.full_like(xx, 100)], axis=2).astype(np.uint8)  # red = x, green = y
    box = np.array([60, 40, 120, 200, 0.9], np.float32)  # a row of person_boxes: the box and its score
    data, centre, scale = dwpose.pose_input(rgb, box, (48, 64))
    assert data.shape == (1, 3, 64, 48) and data.dtype == np.float32
    np.testing.assert_allclose(centre, [90, 120])
    np.testing.assert_allclose(scale, [150, 200])  # 1.25 x 160 high, 3:4
    pixels = data[0].transpose(1, 2, 0) * dwpose.STD + dwpose.MEAN
    np.testing.assert_allclose(pixels[..., 2], 100, atol=1e-3)
    np.testing.assert_allclose(pixels[0, 0, :2], [15, 20], atol=0.6)  # the crop's top-left: centre - scale / 2
    np.testing.assert_allclose(pixels[32, 24, :2], [90, 120], atol=0.6)  # its middle: the box's centre
    np.testing.assert_allclose(pixels[0, 24, :2], [90, 20], atol=0.6)  # the top's middle: upright, no shear
    np.testing.assert_allclose(pixels[63, 47, :2], [15 + 47 * 150 / 48, 20 + 63 * 200 / 64], atol=0.6)


def test_a_keypoint_with_no_evidence_at_all_is_off_the_image():
    sx, sy = np.zeros((1, 2, 576), np.float32), np.zeros((1, 2, 768), np.float32)
    sx[0, 1, 10], sy[0, 1, 20] = 0.5, 0.5
    kps, scores = dwpose.decode_simcc(sx, sy, (288, 384), np.array([0, 0], np.float32),
                                      np.array([288, 384], np.float32))
    assert (kps[0] == -1).all() and scores[0] == 0  # every bin 0
    np.testing.assert_allclose(kps[1], [5 - 144, 10 - 192])


def test_the_neck_takes_the_weaker_shoulder_and_needs_both_above_0_3():
    kps = np.zeros((133, 2), np.float32)
    scores = np.full(133, 0.9, np.float32)
    scores[5], scores[6] = 0.8, 0.6
    pts, sc = dwpose.openpose_body(kps, scores)
    assert sc.shape == (18,) and sc[1] == pytest.approx(0.6)
    scores[5], scores[6] = 0.6, 0.8
    assert dwpose.openpose_body(kps, scores)[1][1] == pytest.approx(0.6)
    scores[6] = 0.3  # exactly at the threshold: not seen
    assert dwpose.openpose_body(kps, scores)[1][1] == 0
    scores[5], scores[6] = 0.3, 0.8
    assert dwpose.openpose_body(kps, scores)[1][1] == 0
