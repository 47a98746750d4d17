"""The restore family's pieces without a server or a model: request checks, the tile plan and tiled
runs (on a stand-in upscaler with a known reach), face alignment, blending and paste-back. The same
on the tiny model checkpoints is in test_restore_models.py; these are the fast ones mutation testing
runs for services/restore/{params,tiles,faces}.py."""
import math

import numpy as np
import pytest

from services.errors import Cancelled, InvalidInput, TooLarge
from services.restore import faces, params, tiles


def noise(width, height, seed=0):
    return (np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8)


# --------------------------------------------------------------------------- params

def test_scale_must_be_2_or_4():
    assert params.check_scale(2) == 2 and params.check_scale(4) == 4
    for bad in (1, 3, 8, 0, -4, True, "4", None, 4.5):
        with pytest.raises(InvalidInput) as e:
            params.check_scale(bad)
        assert e.value.param == "scale" and e.value.code == "invalid_scale"
        assert e.value.message == f"scale must be 2 or 4, not {bad!r}"


def test_fidelity_is_between_0_and_1():
    assert params.check_fidelity(0) == 0.0 and params.check_fidelity(1) == 1.0 and params.check_fidelity("0.5") == 0.5
    for bad in (-0.01, 1.01, float("nan"), "x", None):
        with pytest.raises(InvalidInput) as e:
            params.check_fidelity(bad, param="restore_fidelity")
        assert e.value.param == "restore_fidelity" and e.value.code == "invalid_fidelity"
        assert e.value.message.startswith("restore_fidelity must be between 0 (the restored face) and 1")
    with pytest.raises(InvalidInput) as e:  # /restore-faces names its own field "fidelity"
        params.check_fidelity(2)
    assert e.value.param == "fidelity"
    assert e.value.message == "fidelity must be between 0 (the restored face) and 1 (the original), not 2"


def test_output_size_limit():
    assert params.check_output_size(100, 50, 4, 400 * 200) == (400, 200)  # exactly at the limit
    with pytest.raises(TooLarge) as e:
        params.check_output_size(100, 50, 4, 400 * 200 - 1)
    assert e.value.code == "output_too_large" and e.value.param == "image"
    assert e.value.message == "x4 of a 100x50 image is 400x200, more than the 79,999 output pixels allowed"


def test_batch_lane_bound():
    assert not params.is_batch(1024 * 1024, 2) and params.is_batch(1024 * 1024 + 1, 2)
    assert not params.is_batch(512 * 512, 4) and params.is_batch(512 * 512 + 1, 4)


# --------------------------------------------------------------------------- tiles

def test_plan_covers_the_image_once_on_the_grid():
    cores = tiles.plan(70, 90, 32, 4)
    assert len(cores) == 3 * 3
    seen = np.zeros((70, 90), int)
    for y0, y1, x0, x1 in cores:
        assert y0 % 4 == 0 and x0 % 4 == 0 and y1 - y0 <= 32 and x1 - x0 <= 32
        seen[y0:y1, x0:x1] += 1
    assert (seen == 1).all()
    assert tiles.plan(70, 90, 30, 4)[1] == (0, 28, 28, 56)  # a tile off the grid is rounded down to it
    assert tiles.plan(10, 10, 2, 4)[0] == (0, 4, 0, 4)  # never below the grid


def test_auto_tile_follows_free_memory():
    gb = 1024 ** 3
    small, large = tiles.auto_tile(2 * gb, 4, 2), tiles.auto_tile(8 * gb, 4, 2)
    assert tiles.MIN_TILE <= small < large <= tiles.MAX_TILE and small % 4 == 0 and large % 4 == 0
    assert large == pytest.approx(2 * small, abs=4)  # the side grows as the square root of memory
    assert small == pytest.approx(math.sqrt(2 * gb * 0.6 / tiles.bytes_per_pixel(4, 2)), abs=4)
    assert tiles.auto_tile(0, 4, 2) == tiles.MIN_TILE and tiles.auto_tile(10 ** 15, 4, 2) == tiles.MAX_TILE
    assert tiles.auto_tile(8 * gb, 2, 2) > large  # x2 keeps fewer output pixels per input pixel
    assert tiles.auto_tile(8 * gb, 4, 4) < large  # fp32 takes twice the bytes
    assert tiles.bytes_per_pixel(4, 2) == 2 * (4 * 64 * 16 + 3 * 192)


def blur_up(scale, reach):
    """A stand-in upscaler whose output pixel depends on the input within `reach` pixels (a box mean,
    the border repeated), then repeated `scale` times: tiled with an overlap of at least `reach` it
    must equal the untiled run exactly, and show seams without."""
    def run(crop):
        k = 2 * reach + 1
        padded = np.pad(crop.astype(np.float64), ((reach, reach), (reach, reach), (0, 0)), mode="edge")
        h, w = crop.shape[:2]
        mean = sum(padded[dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k)) / (k * k)
        return np.repeat(np.repeat(np.rint(mean).astype(np.uint8), scale, axis=0), scale, axis=1)
    return run


@pytest.mark.parametrize("scale", [2, 4])
def test_tiled_equals_untiled_and_no_overlap_shows_seams(scale):
    img = noise(44, 30, seed=6)
    run = blur_up(scale, reach=2)
    whole = tiles.upscale(run, img, scale=scale, tile=1024, overlap=0, multiple=4)
    assert whole.shape == (30 * scale, 44 * scale, 3) and whole.dtype == np.uint8
    assert np.array_equal(whole, run(img))
    assert np.array_equal(whole, tiles.upscale(run, img, scale=scale, tile=8, overlap=4, multiple=4))
    # an overlap of 1 (under the reach) is rounded up to the 4-pixel grid, which covers it
    assert np.array_equal(whole, tiles.upscale(run, img, scale=scale, tile=8, overlap=1, multiple=4))
    assert not np.array_equal(whole, tiles.upscale(run, img, scale=scale, tile=8, overlap=0, multiple=4))


def test_each_tile_runs_with_its_overlap_clamped_at_the_border():
    ran = []

    def run(crop):
        ran.append(crop.shape[:2])
        return blur_up(2, 0)(crop)

    tiles.upscale(run, noise(24, 20), scale=2, tile=8, overlap=3, multiple=4)  # overlap 3 -> 4
    assert ran == [(12, 12), (12, 16), (12, 12), (16, 12), (16, 16), (16, 12), (8, 12), (8, 16), (8, 12)]


def test_run_model_feeds_the_descriptor_0_1_pixels_on_its_dtype_and_rounds_back():
    import torch

    class Descriptor:  # spandrel's: takes (1, 3, h, w) on its device and dtype, answers x2 in [0, 1]
        device, dtype = torch.device("cpu"), torch.float64

        def __call__(self, x):
            self.seen = x.clone()
            return x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)

    model = Descriptor()
    crop = noise(12, 8, seed=9)
    out = tiles.run_model(model, crop)
    assert out.dtype == np.uint8 and out.shape == (16, 24, 3)
    assert np.array_equal(out, np.repeat(np.repeat(crop, 2, axis=0), 2, axis=1))  # channel order kept
    assert model.seen.dtype == torch.float64 and model.seen.shape == (1, 3, 8, 12)
    assert torch.allclose(model.seen[0, 0], torch.from_numpy(crop[..., 0]).double() / 255)
    model.__class__.__call__ = lambda self, x: torch.full((1, 3, 2, 2), 0.6 / 255, dtype=x.dtype)
    assert (tiles.run_model(model, crop[:1, :1]) == 1).all()  # rounded, not truncated

    class OnDevice:  # a descriptor on another device (the GPU on Colab; "meta" here): the tile goes there
        device, dtype = torch.device("meta"), torch.float16

        def __call__(self, x):
            self.seen = (x.device, x.dtype)
            return torch.zeros((1, 3, 2, 2))

    on_device = OnDevice()
    tiles.run_model(on_device, crop[:1, :1])
    assert on_device.seen == (torch.device("meta"), torch.float16)


def test_progress_per_tile_and_cancel_between_tiles():
    ran = []

    def run(crop):
        ran.append(crop.shape)
        return blur_up(4, 1)(crop)

    seen = []
    tiles.upscale(run, noise(24, 16), scale=4, tile=8, overlap=8, multiple=4,
                  progress=lambda done, total: seen.append((done, total)))
    assert seen == [(i, 6) for i in range(1, 7)]
    assert ran[0] == (16, 16, 3) and ran[4] == (16, 24, 3)  # a corner tile and the middle one, with overlap

    calls = []

    def cancel(done, total):
        calls.append(done)
        if done == 2:
            raise Cancelled("cancelled")

    with pytest.raises(Cancelled):
        tiles.upscale(run, noise(24, 16), scale=4, tile=8, overlap=8, multiple=4, progress=cancel)
    assert calls == [1, 2] and len(ran) == 6 + 2  # no tile ran after the cancel


# --------------------------------------------------------------------------- faces

# A face's 5 landmarks (eyes, nose, mouth corners) in a 200x160 picture: the template, scaled by
# 0.25 and moved to (60, 40).
LANDMARKS = faces.TEMPLATE_512 * 0.25 + np.array([60, 40], np.float32)


def test_align_maps_the_landmarks_onto_the_template():
    img = noise(200, 160, seed=1)
    crop, matrix = faces.align(img, LANDMARKS)
    assert crop.shape == (512, 512, 3)
    mapped = np.c_[LANDMARKS, np.ones(5)] @ matrix.T
    assert np.abs(mapped - faces.TEMPLATE_512).max() < 0.5
    x0, y0, x1, y1 = faces.footprint(matrix, 160, 200)  # the 512 square at 0.25 from (60, 40), clipped
    assert abs(x0 - 60) <= 1 and abs(y0 - 40) <= 1 and abs(x1 - 188) <= 1 and y1 == 160


def test_align_fits_a_jittery_detectors_landmarks_without_favouring_two_of_them():
    """Real landmarks miss the template by a few pixels: the fit spreads the error over all five
    (a RANSAC fit would settle on the two that agree and leave the others ~20 px off)."""
    worst = []
    for seed in range(6):
        jitter = np.random.default_rng(seed).normal(0, 2, (5, 2))
        points = (LANDMARKS + jitter).astype(np.float32)
        _, matrix = faces.align(noise(200, 160), points)
        worst.append(np.linalg.norm(np.c_[points, np.ones(5)] @ matrix.T - faces.TEMPLATE_512, axis=1).max())
    assert np.mean(worst) < 15  # in the 512 crop: 2 px of jitter at this face's 1/4 scale is 8 px there


def test_feather_mask_is_one_inside_and_zero_at_the_edges():
    mask = faces.feather_mask()
    assert mask.shape == (512, 512) and mask.dtype == np.float32
    assert mask[256, 256] == pytest.approx(1.0) and mask[0, 0] < 1e-4 and mask[0, 256] < 1e-4
    assert mask[256, 0] < 0.01 and mask[256, 511] < 0.01 and 0.2 < mask[256, 32] < 0.8


def test_paste_changes_only_the_footprint():
    img = noise(200, 160, seed=2)
    before = img.copy()
    crop, matrix = faces.align(img, LANDMARKS)
    out = faces.paste(img, np.full_like(crop, 255), matrix)
    x0, y0, x1, y1 = faces.footprint(matrix, 160, 200)
    changed = np.any(out != before, axis=2)
    assert changed[y0:y1, x0:x1].any()
    outside = changed.copy()
    outside[y0:y1, x0:x1] = False
    assert not outside.any()
    centre = faces.TEMPLATE_512.mean(axis=0) * 0.25 + (60, 40)
    assert (out[int(centre[1]), int(centre[0])] == 255).all()  # the middle takes the new face entirely


def test_restore_blends_by_fidelity_and_keeps_the_original_at_1():
    img = noise(200, 160, seed=3)

    def white(crop):  # a "restorer" that paints the face white
        assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
        return np.full_like(crop, 255)

    assert np.array_equal(faces.restore(white, img.copy(), [LANDMARKS], fidelity=1.0), img)
    full = faces.restore(white, img.copy(), [LANDMARKS], fidelity=0.0)
    half = faces.restore(white, img.copy(), [LANDMARKS], fidelity=0.5)
    cx, cy = (faces.TEMPLATE_512.mean(axis=0) * 0.25 + (60, 40)).astype(int)
    assert (full[cy, cx] == 255).all()
    expected = (img[cy, cx].astype(float) + 255) / 2
    assert np.abs(half[cy, cx] - expected).max() <= 3  # interpolation of the round trip


def test_a_restorer_that_changes_nothing_leaves_the_picture_bit_for_bit():
    """A face already at the template's place and size: the crop is the picture's own pixels, and
    the paste puts back exactly what it is given, rounded, not shifted."""
    img = noise(560, 600, seed=4)
    crop, matrix = faces.align(img, faces.TEMPLATE_512)
    assert np.array_equal(crop, img[:512, :512])
    assert np.array_equal(faces.restore(lambda c: c.copy(), img.copy(), [faces.TEMPLATE_512], fidelity=0.0), img)
    half = faces.restore(lambda c: np.full_like(c, 255), img.copy(), [faces.TEMPLATE_512], fidelity=0.5)
    expected = np.floor((img[256, 256].astype(float) + 255) / 2 + 0.5)
    assert np.array_equal(half[256, 256], expected)  # the blend is rounded, not truncated or shifted
    assert np.array_equal(half[:, 512:], img[:, 512:]) and np.array_equal(half[512:], img[512:])


def test_restore_reports_each_face_and_runs_the_model_only_below_fidelity_1():
    img = noise(200, 160, seed=10)
    ran, seen = [], []

    def white(crop):
        ran.append(crop.shape)
        return np.full_like(crop, 255)

    out = faces.restore(white, img.copy(), [LANDMARKS, LANDMARKS + 5], fidelity=0.3,
                        progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)] and ran == [(512, 512, 3)] * 2 and not np.array_equal(out, img)
    ran.clear(), seen.clear()
    kept = faces.restore(white, img.copy(), [LANDMARKS, LANDMARKS + 5], fidelity=1.0,
                         progress=lambda done, total: seen.append((done, total)))
    assert np.array_equal(kept, img) and ran == [] and seen == [(1, 2), (2, 2)]  # no model run for nothing
    black = np.zeros((200, 160, 3), np.uint8)
    assert not faces.restore(lambda c: np.zeros_like(c), black.copy(), [LANDMARKS], fidelity=0.5).any()


def test_a_face_off_the_picture_or_past_its_edge():
    out_of_sight = np.array([[1, 0, 512], [0, 1, 0]], float)  # the crop lies left of the picture
    assert faces.footprint(out_of_sight, 100, 100) is None
    assert faces.footprint(np.array([[1, 0, 0], [0, 1, 512]], float), 100, 100) is None  # above it
    img = noise(100, 100, seed=5)
    assert np.array_equal(faces.paste(img.copy(), np.zeros((512, 512, 3), np.uint8), out_of_sight), img)
    crop, _ = faces.align(img, LANDMARKS - 60)  # the face's box starts above and left of the picture
    assert crop[0, 0].tolist() == list(faces.BORDER)  # outside the picture: the neutral gray
    assert faces.footprint(faces.align(img, LANDMARKS - 60)[1], 100, 100)[:2] == (0, 0)


def test_a_tilted_face_changes_only_its_rotated_square():
    angle = np.deg2rad(30)
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    points = (faces.TEMPLATE_512 - 256) @ rot.T * 0.25 + (100, 100)
    img = noise(200, 200, seed=7)
    out = faces.paste(img.copy(), np.full((512, 512, 3), 255, np.uint8), faces.align(img, points)[1])
    changed = np.any(out != img, axis=2)
    x0, y0, x1, y1 = faces.footprint(faces.align(img, points)[1], 200, 200)
    assert changed.any() and not changed[y0:y1, x0:x1][:3, :3].any()  # the box's corner is off the square
    half = 128 * (np.cos(angle) + np.sin(angle)) / 2  # a 128-pixel square turned 30 degrees about (100, 100)
    assert (x0, y0, x1, y1) == (int(100 - half), int(100 - half), int(np.ceil(100 + half)), int(np.ceil(100 + half)))
    # a face 4x the template's size: one crop pixel is 4 picture pixels, so each corner counts
    big = np.hstack([rot.T * 0.25, (np.array([256, 256]) - rot.T @ np.array([5000, 5000]) * 0.25)[:, None]])
    half = 2048 * (np.cos(angle) + np.sin(angle)) / 2
    assert faces.footprint(big, 10000, 10000) == (int(np.floor(5000 - half)), int(np.floor(5000 - half)),
                                                  int(np.ceil(5000 + half)), int(np.ceil(5000 + half)))


def test_feather_mask_fades_across_the_margin():
    mask = faces.feather_mask()
    assert mask[256, 31] < 0.5 < mask[256, 32]  # the fade centred on the 32-pixel margin
    assert 0.15 < mask[256, 24] < 0.2  # ~8 pixels wide each way
    assert mask[31, 256] < 0.5 < mask[32, 256] and 0.15 < mask[24, 256] < 0.2  # the same top to bottom
    assert faces.feather_mask() is mask  # made once


def test_run_model_gives_the_model_rgb_in_0_1_and_returns_bgr():
    import torch

    class Model:
        device, dtype = torch.device("cpu"), torch.float32

        def __init__(self, answer):
            self.answer, self.seen = answer, None

        def __call__(self, x):
            self.seen = x.clone()
            return self.answer(x)

    crop = noise(512, 512, seed=8)
    same = Model(lambda x: x)
    back = faces.run_model(same, crop)
    assert back.dtype == np.uint8 and np.array_equal(back, crop)
    assert same.seen.shape == (1, 3, 512, 512) and float(same.seen.max()) <= 1.0
    assert torch.allclose(same.seen[0, 0], torch.from_numpy(crop[..., 2]).float() / 255)  # red first
    red = faces.run_model(Model(lambda x: torch.stack([x[:, 0] * 0 + 2, x[:, 1] * 0 - 1, x[:, 2] * 0], 1)), crop)
    assert (red == [0, 0, 255]).all()  # out of range clamped, BGR back
    on_gpu = Model(lambda x: torch.zeros((1, 3, 512, 512)))
    on_gpu.device, on_gpu.dtype = torch.device("meta"), torch.float16  # the face goes to the model's device
    faces.run_model(on_gpu, crop)
    assert (on_gpu.seen.device, on_gpu.seen.dtype) == (torch.device("meta"), torch.float16)
