"""The talking head's driving signals and the face crop's geometry, without a model."""
import numpy as np
import pytest

from services.animate import crop, speech


def test_envelope_and_lip_curve_follow_loudness_and_shut_in_silence():
    rate, fps = 16000, 25
    t = np.arange(rate * 2) / rate
    loud = np.where((t > 0.5) & (t < 1.5), 0.5, 0.0) * np.sin(2 * np.pi * 200 * t)
    env = speech.envelope(loud, rate, 50, fps)
    assert env.shape == (50,) and env[:10].max() == 0 and env[20:30].min() > 0.3
    lips = speech.lip_curve(env)
    assert lips.min() >= 0 and lips.max() <= 1
    assert lips[:11].max() == 0 and lips[40:].max() == 0 and lips[15:35].mean() > 0.9
    quiet = speech.lip_curve(env * 0.05)
    assert quiet[15:35].mean() > 0.9  # loudness is relative to the clip's own loud parts


def test_a_near_silent_frame_is_gated_shut():
    env = np.array([0.0, 0.05, 1.0, 1.0, 0.05, 0.0], np.float32)
    lips = speech.lip_curve(env, gate=0.1)
    assert lips[0] == 0 and lips[-1] == 0 and lips[2] > 0.7


def test_blinks_come_every_few_seconds_and_are_short():
    eyes = speech.blink_curve(25 * 20, 25, seed=1)
    closed = np.flatnonzero(eyes < 0.5)
    starts = closed[np.insert(np.diff(closed) > 1, 0, True)]
    assert 3 <= len(starts) <= 8  # one every 2.5-5 s over 20 s
    assert np.all(np.diff(starts) >= 25 * 2.5 - 1)
    assert (eyes < 0.5).sum() <= 3 * len(starts) and eyes.max() == 1
    assert not np.array_equal(eyes, speech.blink_curve(25 * 20, 25, seed=2))


def test_idle_pose_is_small_and_moves():
    poses = [speech.idle_pose(i) for i in range(250)]
    for axis in ("pitch", "yaw", "roll"):
        values = np.array([p[axis] for p in poses])
        assert np.abs(values).max() <= 4.5 and values.std() > 0.3


def test_crop_maps_the_face_into_the_square_and_back():
    c = crop.face_crop([100, 60, 196, 156], [[120, 90], [176, 90]], size=128, crop_scale=2.0)
    centre = np.array([148, 108, 1.0]) @ c.matrix.T
    assert centre[0] == pytest.approx(64, abs=0.5) and centre[1] > 64  # the face sits below the centre
    back = np.array([*centre, 1.0]) @ c.inverse.T
    assert back == pytest.approx([148, 108], abs=1e-6)
    x1, y1, x2, y2 = c.box(400, 300)
    assert x2 - x1 == pytest.approx(192, abs=2)  # 2.0 face sizes


def test_a_tilted_face_gives_a_rotated_crop():
    c = crop.face_crop([100, 100, 200, 200], [[120, 130], [180, 160]], size=100)
    left, right = (np.array([x, y, 1.0]) @ c.matrix.T for x, y in ((120, 130), (180, 160)))
    assert left[1] == pytest.approx(right[1], abs=1e-6)  # the eyes level in the crop


def test_paste_back_touches_only_the_crop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (200, 300, 3), dtype=np.uint8)
    c = crop.face_crop([120, 70, 170, 120], [[130, 90], [160, 90]], size=64, crop_scale=2.0)
    out = crop.paste_back(image, np.full((128, 128, 3), 255, np.uint8), c)
    x1, y1, x2, y2 = c.box(300, 200)
    outside = np.ones(image.shape[:2], bool)
    outside[y1:y2, x1:x2] = False
    assert np.array_equal(out[outside], image[outside])
    cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
    assert (out[cy - 5:cy + 5, cx - 5:cx + 5] == 255).all()  # the middle is the rendered crop
    mask = crop.feather_mask(64)
    assert mask[0].max() == 0 and mask[32, 32] == 1


def test_envelope_is_the_loudness_under_each_frame_and_zero_past_the_audio():
    rate, fps = 1000, 25  # 40 samples a frame
    levels = np.array([0.0, 0.1, 0.4, 0.2, 0.8], np.float32)
    samples = np.repeat(levels, 40) * np.tile([1, -1], 100)  # a square wave: its RMS is its level
    env = speech.envelope(samples.reshape(-1, 1), rate, 7, fps)  # 2 frames more than the audio lasts
    assert env.dtype == np.float32
    np.testing.assert_allclose(env, [0.0, 0.1, 0.4, 0.2, 0.8, 0.0, 0.0], atol=1e-6)
    half = speech.envelope(samples[:180], rate, 5, fps)  # the last frame only half covered
    np.testing.assert_allclose(half, [0.0, 0.1, 0.4, 0.2, 0.8], atol=1e-6)


def test_lip_curve_smooths_over_three_frames_and_keeps_a_loud_start_open():
    env = np.array([0, 0, 0, 1, 0, 0, 0], np.float32)
    np.testing.assert_allclose(speech.lip_curve(env), [0, 0, 0.25, 0.5, 0.25, 0, 0], atol=1e-6)
    loud_start = np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], np.float32)
    assert speech.lip_curve(loud_start)[0] == pytest.approx(1.0)  # no dip at the clip's first frame
    assert speech.lip_curve(np.zeros(0, np.float32)).size == 0
    assert (speech.lip_curve(np.zeros(5, np.float32)) == 0).all()  # silence: shut, no division by zero


def test_lip_level_is_relative_to_the_95th_percentile():
    env = np.linspace(0, 1, 101, dtype=np.float32)  # its 95th percentile is 0.95
    lips = speech.lip_curve(env)
    assert lips[50] == pytest.approx(0.5 / 0.95, abs=1e-5)  # a straight ramp stays straight when smoothed
    assert lips[94] == pytest.approx(0.94 / 0.95, abs=1e-5) and lips[97] == pytest.approx(1.0)
    gate = np.array([0.2, 0.2, 0.2, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0], np.float32)
    assert speech.lip_curve(gate, gate=0.2)[0] == pytest.approx(0.2)  # at the gate: not shut
    assert speech.lip_curve(gate)[0] == pytest.approx(0.2)  # the default gate is 0.1
    assert speech.lip_curve(gate, gate=0.25)[0] == 0


def test_blinks_start_within_1_to_2_5_s_then_every_2_5_to_5_s_with_the_same_shape():
    firsts, gaps = [], []
    for seed in range(60):
        eyes = speech.blink_curve(25 * 30, 25, seed=seed)
        starts = np.flatnonzero((eyes < 1) & (np.r_[1.0, eyes[:-1]] == 1))
        firsts.append(starts[0])
        gaps.extend(np.diff(starts))
        for s in starts[:-1]:
            np.testing.assert_allclose(eyes[s:s + 5], [0.5, 0, 0, 0.4, 0.8])
        assert np.array_equal(eyes, speech.blink_curve(25 * 30, 25, seed=seed))  # the seed decides
    assert speech.blink_curve(300).dtype == np.float32
    assert np.array_equal(speech.blink_curve(300), speech.blink_curve(300, 25, seed=0))  # no seed: seed 0
    assert 25 <= min(firsts) < 30 and 57 < max(firsts) < 63  # 1.0 - 2.5 s
    assert 62 <= min(gaps) < 68 and 118 < max(gaps) <= 125  # 2.5 - 5 s
    cut = speech.blink_curve(27, 25, seed=0)
    first = int(np.flatnonzero(speech.blink_curve(100, 25, seed=0) < 1)[0])
    short = speech.blink_curve(first + 2, 25, seed=0)  # the clip ends mid-blink
    assert cut.shape == (27,) and short.shape == (first + 2,)
    np.testing.assert_allclose(short[first:], [0.5, 0])


def test_idle_pose_sums_its_sine_waves_over_time(monkeypatch):
    monkeypatch.setattr(speech, "IDLE", {"yaw": ((2.0, 1.0, 0.0), (1.0, 0.5, np.pi / 2))})
    assert speech.idle_pose(0, fps=20) == {"yaw": pytest.approx(1.0)}  # sin 0 + cos 0
    assert speech.idle_pose(5, fps=20)["yaw"] == pytest.approx(2.0 + np.cos(np.pi / 4))  # a quarter second in
    assert speech.idle_pose(10, fps=20)["yaw"] == pytest.approx(0.0, abs=1e-9)  # half a second: 0 + cos(pi/2)


def test_the_crop_is_raised_along_the_faces_own_up_and_sized_by_its_longer_side():
    upright = crop.face_crop([100, 100, 200, 160], [[130, 120], [170, 120]], size=200)  # wide box: 2.3 x 100
    centre = np.array([100, 100, 1.0]) @ upright.inverse.T
    np.testing.assert_allclose(centre, [150, 130 - 0.125 * 230], atol=1e-6)
    corner = np.array([0, 0, 1.0]) @ upright.inverse.T
    np.testing.assert_allclose(corner, [150 - 115, 130 - 0.125 * 230 - 115], atol=1e-6)
    tall = crop.face_crop([100, 100, 160, 200], [[110, 130], [150, 130]], size=100)
    assert np.array([100, 0, 1.0]) @ tall.inverse.T == pytest.approx([130 + 115, 150 - 0.125 * 230 - 115])
    # eyes one above the other (the head lying on its side): "up" is +x in the image
    sideways = crop.face_crop([100, 100, 200, 200], [[150, 120], [150, 180]], size=100)
    np.testing.assert_allclose(np.array([50, 50, 1.0]) @ sideways.inverse.T, [150 + 0.125 * 230, 150], atol=1e-6)
    five = crop.face_crop([100, 100, 200, 200], [[150, 120], [150, 180], [140, 150], [120, 130], [120, 170]],
                          size=100)
    np.testing.assert_allclose(five.matrix, sideways.matrix)  # only the eyes set the angle
    dot = crop.face_crop([50, 50, 50.2, 50.2], [[50, 50]], size=23)  # a degenerate box: one pixel, upright
    np.testing.assert_allclose(dot.matrix[:, :2], np.eye(2) * 10, atol=1e-9)


def test_a_tilted_crops_box_bounds_its_rotated_square():
    c = crop.face_crop([300, 300, 400, 400], [[330, 330], [370, 370]], size=100, crop_scale=2.0)  # 45 degrees
    half = 200 / np.sqrt(2)  # a 200-pixel square on its corner
    up = np.array([1, -1]) / np.sqrt(2)  # the face's up, across the eye line
    cx, cy = np.array([350, 350]) + 0.125 * 200 * up
    assert c.box(1000, 1000) == [int(np.floor(cx - half)), int(np.floor(cy - half)),
                                 int(np.ceil(cx + half)), int(np.ceil(cy + half))]


def test_a_detector_box_with_its_score_gives_the_same_crop():
    plain = crop.face_crop([100, 100, 200, 160], [[130, 120], [170, 120]], size=64)
    scored = crop.face_crop(np.array([100, 100, 200, 160, 0.98]), [[130, 120], [170, 120]], size=64)
    np.testing.assert_allclose(scored.matrix, plain.matrix)


def test_the_crop_box_is_clipped_to_the_image():
    c = crop.face_crop([0, 0, 40, 40], [[10, 15], [30, 15]], size=64, crop_scale=2.0)
    assert c.box(400, 300) == [0, 0, 60, 50]  # centre (20, 10), side 80: (-20, -30) to (60, 50)
    c = crop.face_crop([360, 260, 400, 300], [[370, 275], [390, 275]], size=64, crop_scale=2.0)
    assert c.box(400, 300) == [340, 230, 400, 300]


def test_cut_is_the_square_crop_with_the_border_repeated():
    image = np.zeros((100, 120, 3), np.uint8)
    image[:, :, 0] = np.arange(120)[None, :]
    image[:, :, 1] = np.arange(100)[:, None]
    image[:, :, 2] = 200
    c = crop.face_crop([0, 0, 40, 40], [[10, 15], [30, 15]], size=80, crop_scale=2.0)  # side 80: 1 px a px
    out = crop.cut(image, c)
    assert out.shape == (80, 80, 3) and out.dtype == np.uint8
    assert (out[..., 2] == 200).all()  # beyond the image's edge: its border repeated, not black
    assert out[40, 60].tolist() == [40, 10, 200]  # crop (60, 40) is image (40, 10)


def test_feather_mask_fades_over_12_percent_of_the_side_with_a_smooth_ramp():
    mask = crop.feather_mask(100)  # a 12-pixel fade
    assert mask.shape == (100, 100) and mask.dtype == np.float32
    assert np.array_equal(mask, mask.T) and np.array_equal(mask, mask[::-1, ::-1])
    assert mask[50, 0] == 0 and mask[50, 6] == pytest.approx(0.5) and mask[50, 11] < 1 and mask[50, 12] == 1
    assert mask[50, 93] == pytest.approx(0.5) and mask[50, 87] == 1
    small = crop.feather_mask(8)  # never under a 2-pixel fade
    assert small[4, 1] == pytest.approx(0.5) and small[4, 2] == 1


def test_paste_back_blends_through_the_feather_into_the_rendered_colour():
    image = np.full((200, 300, 3), 200, np.uint8)
    c = crop.face_crop([120, 70, 170, 120], [[130, 90], [160, 90]], size=64, crop_scale=2.0)
    out = crop.paste_back(image, np.full((64, 64, 3), 50, np.uint8), c)
    assert out.dtype == np.uint8 and out.shape == image.shape
    x1, y1, x2, y2 = c.box(300, 200)
    cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
    assert (out[cy - 10:cy + 10, cx - 10:cx + 10] == 50).all()
    row = out[cy, x1:cx, 0].astype(int)  # from the crop's left edge to its middle: 200 fading to 50
    assert row[0] == 200 and row[-1] == 50 and (np.diff(row) <= 0).all() and ((row > 50) & (row < 200)).sum() >= 5
    assert image.min() == 200  # the input is not changed
    assert (crop.paste_back(image, np.zeros((64, 64, 3), np.uint8), c)[cy, cx] == 0).all()  # black stays black
