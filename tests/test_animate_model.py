"""LivePortrait's modules and checkpoint loader: the tiny build in the published layout loads with
strict=True, a missing or renamed key is refused, and the real sizes weigh what the published
files weigh."""
import shutil

import pytest
import torch

from services.animate import config, model
from services.errors import ModelUnavailable


@pytest.fixture(scope="module")
def folder(smoke_models):
    return smoke_models("animate") / config.MODEL_KEY


def test_tiny_build_has_the_published_files_and_loads_strictly(folder):
    for rel in config.FILES.values():
        assert (folder / rel).is_file(), rel
    nested = torch.load(folder / config.FILES["stitching_retargeting_module"], weights_only=True)
    assert set(nested) == {"retarget_shoulder", "retarget_mouth", "retarget_eye"}
    assert all(k.startswith("module.mlp.") for sub in nested.values() for k in sub)
    lp = model.LivePortrait.load(folder)
    size = lp.input_size
    image = torch.rand(1, 3, size, size)
    info = lp.motion(image)
    assert info["kp"].shape == (1, config.NUM_KP, 3) and info["exp"].shape == (1, config.NUM_KP, 3)
    kp = model.transform(info["kp"], model.rotation(info["pitch"], info["yaw"], info["roll"]), info["exp"],
                         info["scale"], info["t"])
    out = lp.render(lp.appearance(image), kp, lp.stitch(kp, kp))
    assert out.shape == (1, 3, 2 * size, 2 * size)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def _copy(folder, tmp_path):
    dst = tmp_path / "lp"
    shutil.copytree(folder, dst)
    return dst


@pytest.mark.parametrize("what", ["missing", "renamed"])
def test_a_base_checkpoint_with_a_missing_or_renamed_key_is_refused(folder, tmp_path, what):
    dst = _copy(folder, tmp_path)
    path = dst / config.FILES["warping_module"]
    state = torch.load(path, weights_only=True)
    key = "dense_motion_network.occlusion.weight"
    value = state.pop(key)
    if what == "renamed":
        state["dense_motion_network.occlusion_map.weight"] = value
    torch.save(state, path)
    with pytest.raises(ModelUnavailable) as err:
        model.load_modules(dst)
    assert "warping_module.pth" in str(err.value) and "occlusion" in str(err.value)


def test_a_retargeting_group_with_a_renamed_key_or_missing_group_is_refused(folder, tmp_path):
    dst = _copy(folder, tmp_path)
    path = dst / config.FILES["stitching_retargeting_module"]
    nested = torch.load(path, weights_only=True)
    nested["retarget_eye"]["module.mlp.9.weight"] = nested["retarget_eye"].pop("module.mlp.0.weight")
    torch.save(nested, path)
    with pytest.raises(ModelUnavailable, match=r"retarget_eye"):
        model.load_modules(dst)
    del nested["retarget_mouth"]
    torch.save(nested, path)
    with pytest.raises(ModelUnavailable, match=r"retarget_mouth"):
        model.load_modules(dst)


def test_a_missing_file_names_it(folder, tmp_path):
    dst = _copy(folder, tmp_path)
    (dst / config.FILES["spade_generator"]).unlink()
    with pytest.raises(ModelUnavailable, match="spade_generator.pth"):
        model.load_modules(dst)


def test_real_sizes_weigh_what_the_published_checkpoints_weigh():
    """fp32 parameter bytes of the modules built at the real sizes vs the published .pth sizes
    (3.4, 112, 182 and 222 MB): a wrong width or block count would be far off."""
    mods = model.build_modules(config.REAL)
    published_mb = {"appearance_feature_extractor": 3.4, "motion_extractor": 112.4,
                    "warping_module": 182.1, "spade_generator": 221.5}
    for name, mb in published_mb.items():
        got = sum(t.numel() * 4 for t in mods[name].state_dict().values()) / 1e6
        assert got == pytest.approx(mb, rel=0.03), name


class _Face(dict):
    def __init__(self, box, lmk=None):
        super().__init__(landmark_2d_106=lmk)
        self.bbox = box


def test_the_largest_face_unless_an_index_is_given():
    from services.animate.pipeline import choose_face
    from services.errors import InvalidInput

    faces = [_Face([0, 0, 40, 40]), _Face([50, 0, 150, 90]), _Face([160, 0, 220, 60])]
    assert choose_face(faces, None, what="source image") == 1
    assert choose_face(faces, 2, what="source image") == 2
    with pytest.raises(InvalidInput, match="3 faces"):
        choose_face(faces, 3, what="source image")


def test_eye_and_lip_openness_from_the_106_landmarks():
    import numpy as np

    from services.animate.pipeline import DEFAULT_EYE, openness

    def contour(cx, cy, w, h, n):
        a = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([cx + w / 2 * np.cos(a), cy + h / 2 * np.sin(a)], 1)

    lmk = np.zeros((106, 2))
    lmk[33:43] = contour(30, 30, 20, 6, 10)  # a narrow eye: 0.3
    lmk[87:97] = contour(70, 30, 20, 10, 10)  # a wider one: 0.5
    lmk[52:72] = contour(50, 70, 40, 30, 20)  # an open mouth: 0.75 - 0.35
    (left, right), lip = openness(_Face([0, 0, 100, 100], lmk))
    assert left == pytest.approx(0.3, abs=0.03) and right == pytest.approx(0.5, abs=0.03)
    assert lip == pytest.approx(0.4, abs=0.03)
    assert openness(_Face([0, 0, 1, 1])) == ((DEFAULT_EYE, DEFAULT_EYE), 0.0)
