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
