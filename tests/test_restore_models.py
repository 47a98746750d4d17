"""The restore family's pieces on the tiny model checkpoints (real .pth layout, loaded by spandrel):
tiled Real-ESRGAN runs equal untiled ones, a tile is the descriptor on 0..1 pixels, GFPGAN restores
each face, and the service takes the model per tile. The arithmetic around them, without models,
is in test_restore_units.py (what mutation testing runs: these take seconds each)."""
import numpy as np
import pytest

from services.restore import faces, tiles
from services.restore import models as restore_models

from tests.test_restore_units import LANDMARKS, noise


@pytest.fixture(scope="module")
def upscalers(tmp_path_factory):
    from services.restore.smoke import build_upscalers

    root = tmp_path_factory.mktemp("restore-units")
    build_upscalers(root)
    return {key: restore_models.load(root / key / restore_models.FILES[key], key, device="cpu", dtype="float32")
            for key in restore_models.UPSCALERS.values()}



@pytest.mark.parametrize("key,scale", [("realesrgan-x4plus", 4), ("realesrgan-x2plus", 2)])
def test_tiled_equals_untiled_and_no_overlap_shows_seams(upscalers, key, scale):
    loaded = upscalers[key]
    img = noise(44, 30, seed=6)

    def run(tile, overlap):
        return tiles.upscale(lambda crop: tiles.run_model(loaded.model, crop), img, scale=scale, tile=tile,
                             overlap=overlap, multiple=restore_models.tile_multiple(loaded))

    whole = run(1024, 0)
    assert whole.shape == (30 * scale, 44 * scale, 3) and whole.dtype == np.uint8
    assert np.array_equal(whole, run(16, 32))
    assert np.array_equal(whole, run(16, 30))  # an overlap off the grid is rounded up to it
    assert not np.array_equal(whole, run(16, 0))



def test_run_model_is_the_descriptor_on_0_1_pixels(upscalers):
    import torch

    model = upscalers["realesrgan-x4plus"].model
    crop = noise(12, 8, seed=9)
    out = tiles.run_model(model, crop)
    assert out.dtype == np.uint8 and out.shape == (32, 48, 3)
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    expected = (model(x)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(out, expected)



def test_loaded_models_say_what_they_are(upscalers):
    x4, x2 = upscalers["realesrgan-x4plus"], upscalers["realesrgan-x2plus"]
    assert (x4.scale, x4.multiple_of, x4.dtype) == (4, 1, "float32")
    assert (x2.scale, x2.multiple_of) == (2, 4)  # pixel-unshuffle: sizes on a 4-pixel grid
    assert restore_models.tile_multiple(x4) == restore_models.tile_multiple(x2) == 4



def test_a_file_of_another_kind_is_refused(tmp_path, upscalers):
    import torch

    from services.errors import ModelUnavailable

    junk = tmp_path / "junk.pth"
    torch.save({"params_ema": {"some.weight": torch.zeros(2)}}, junk)
    with pytest.raises(ModelUnavailable, match="neither a Real-ESRGAN nor a GFPGAN"):
        restore_models.load(junk, "realesrgan-x4plus", device="cpu", dtype="float32")



def test_restore_reports_each_face_and_runs_the_model_on_the_aligned_crop(tmp_path):
    from services.restore.smoke import build_gfpgan

    build_gfpgan(tmp_path / "g.pth")
    gfpgan = restore_models.load(tmp_path / "g.pth", "gfpgan-v1.4", device="cpu", dtype="float16")
    assert gfpgan.dtype == "float32"  # GFPGAN has no fp16 mode: fp32 whatever the policy says
    seen = []
    img = noise(200, 160)
    out = faces.restore(lambda crop: faces.run_model(gfpgan.model, crop), img.copy(), [LANDMARKS, LANDMARKS + 5],
                        fidelity=0.0, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 2), (2, 2)] and out.shape == img.shape and not np.array_equal(out, img)



def test_the_service_takes_the_model_per_tile_and_holds_none_between_tiles(upscalers, tmp_path):
    """What lets a batch upscale pause between tiles without pinning Real-ESRGAN on the GPU."""
    from services.model_env import ModelEnv
    from services.restore.service import RestoreConfig, RestoreService
    from services.restore.smoke import build_upscalers
    from services.vram import VramOffloader

    build_upscalers(tmp_path)
    vram = VramOffloader(device="cpu", budget_bytes=15 * 1024 ** 3)
    env = ModelEnv(models_dir=tmp_path, profile="smoke", device="cpu", dtype="float32", vram=vram, data_dir=tmp_path)
    service = RestoreService(env, RestoreConfig(tile=8), face=None)
    service.register()
    held = []

    def progress(done, total):
        model = next(m for m in vram.snapshot()["models"] if m["name"] == "realesrgan-x2plus")
        held.append(model["in_use"])

    out = service.upscale_array("realesrgan-x2plus", noise(24, 16), progress=progress)
    assert out.shape == (32, 48, 3) and held == [0] * 6
    loads = next(m for m in vram.snapshot()["models"] if m["name"] == "realesrgan-x2plus")["loads"]
    assert loads == 1  # loaded once, then resident for every tile


