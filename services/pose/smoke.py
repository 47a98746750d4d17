"""Tiny DWPose ONNX graphs with the real input/output names and shapes, so the real pre- and
post-processing (services/pose/dwpose.py) runs end to end in tests and CI.

- `yolox_l.onnx`: input `images` [1, 3, 640, 640] (raw 0..255), output `output` [1, 8400, 85].
  Not random: only stride-32 anchors can fire, each with a fixed 128x256 (detector pixels) person
  box, scored by how white a 128x256 window centred on the anchor is (fires when nearly all of it
  is). A white upright rectangle of 128x256 to 144x272 detector pixels, its corner on the 32-pixel
  grid (`person_rect`), is one person (NMS merges the neighbours); an image without one has nobody.
- `dw-ll_ucoco_384.onnx`: input `input` [1, 3, 384, 288], outputs `simcc_x` [1, 133, 576] and
  `simcc_y` [1, 133, 768]. Peaks at a standing-person template (the crop's pixels x 2 bins, score
  0.9), plus a little input-dependent noise that never moves them: the skeleton is drawable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .models import DETECTOR_FILE, DWPOSE, POSE_FILE

BOX_W, BOX_H = 128, 256  # detector pixels
POSE_W, POSE_H = 288, 384
# COCO's 17 body points of a person standing, facing the camera, in the 288x384 crop.
BODY = [(144, 70), (152, 62), (136, 62), (162, 68), (126, 68), (184, 110), (104, 110), (204, 165), (84, 165),
        (214, 215), (74, 215), (170, 215), (118, 215), (172, 275), (116, 275), (174, 335), (114, 335)]


def person_rect(image_side: int, cell: int = 3) -> tuple[int, int, int, int]:
    """(x1, y1, x2, y2) of the white rectangle the tiny detector sees as one person, in a square image
    of `image_side` pixels (the detector scales it to 640): 144x272 detector pixels at grid `cell`."""
    r = image_side / 640
    x1 = y1 = cell * 32
    return int(x1 * r), int(y1 * r), int((x1 + BOX_W + 16) * r), int((y1 + BOX_H + 16) * r)


def template() -> np.ndarray:
    """(133, 2) crop pixels: body, feet, face, left hand, right hand (COCO-WholeBody order)."""
    pts = list(BODY)
    pts += [(180, 345), (186, 343), (168, 340), (108, 345), (102, 343), (120, 340)]  # feet
    angles = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    pts += [(144 + 18 * np.cos(a), 72 + 22 * np.sin(a)) for a in angles]  # face outline
    for wx, wy, side in ((214, 215, 1), (74, 215, -1)):  # left, right hand: wrist + 5 fingers x 4
        pts.append((wx, wy))
        for finger in range(5):
            dx = side * (finger - 2) * 4
            pts += [(wx + dx * (j + 1) / 2, wy + 6 * (j + 1)) for j in range(4)]
    return np.asarray(pts, np.float32)


def _model(graph):
    from onnx import helper

    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8,
                             producer_name="enfoads-smoke")


def _save(model, path: Path) -> None:
    import onnx

    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def build_detector(path: Path) -> None:
    from onnx import TensorProto, helper, numpy_helper

    inits = []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    n32 = (640 // 32) ** 2
    n_fine = (640 // 8) ** 2 + (640 // 16) ** 2
    box = np.zeros((1, n32, 4), np.float32)
    box[..., :2] = 0.5  # the anchor cell's centre
    box[..., 2:] = np.log([BOX_W / 32, BOX_H / 32])
    pads = [BOX_H // 2 - 16, BOX_W // 2 - 16, BOX_H // 2 - 16, BOX_W // 2 - 16]
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["gray"], axes=[1], keepdims=1),
        # one value per stride-32 anchor: the mean over a BOX_W x BOX_H window centred on it
        helper.make_node("AveragePool", ["gray"], ["window"], kernel_shape=[BOX_H, BOX_W], strides=[32, 32],
                         pads=pads),
        helper.make_node("Sub", ["window", const("white", [240.0])], ["shifted"]),
        helper.make_node("Mul", ["shifted", const("gain", [0.5])], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
        helper.make_node("Reshape", ["prob", const("column", [1, -1, 1], np.int64)], ["score"]),
        # columns: box (4), objectness, person, 79 other classes
        helper.make_node("Concat", [const("box", box), "score", "score", const("others", np.zeros((1, n32, 79)))],
                         ["coarse"], axis=2),
        helper.make_node("Concat", [const("fine", np.zeros((1, n_fine, 85))), "coarse"], ["output"], axis=1),
    ]
    graph = helper.make_graph(nodes, "tiny_yolox", [helper.make_tensor_value_info("images", TensorProto.FLOAT,
                                                                                    [1, 3, 640, 640])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, n_fine + n32, 85])],
                              initializer=inits)
    _save(_model(graph), path)


def build_pose(path: Path, seed: int = 0) -> None:
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    pts = template()
    inits, nodes, outputs = [], [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1),
    ], []
    for axis, bins in (("x", POSE_W * 2), ("y", POSE_H * 2)):
        bias = rng.uniform(0.0, 0.05, (133, bins)).astype(np.float32)
        bias[np.arange(133), np.clip(np.round(pts[:, 0 if axis == "x" else 1] * 2).astype(int), 0, bins - 1)] = 0.9
        weight = rng.normal(0, 1e-3, (3, 133 * bins)).astype(np.float32)
        inits += [numpy_helper.from_array(weight, f"w_{axis}"), numpy_helper.from_array(bias.reshape(-1), f"b_{axis}"),
                  numpy_helper.from_array(np.array([1, 133, bins], np.int64), f"shape_{axis}")]
        nodes += [helper.make_node("MatMul", ["features", f"w_{axis}"], [f"mm_{axis}"]),
                  helper.make_node("Add", [f"mm_{axis}", f"b_{axis}"], [f"flat_{axis}"]),
                  helper.make_node("Reshape", [f"flat_{axis}", f"shape_{axis}"], [f"simcc_{axis}"])]
        outputs.append(helper.make_tensor_value_info(f"simcc_{axis}", TensorProto.FLOAT, [1, 133, bins]))
    graph = helper.make_graph(nodes, "tiny_dwpose", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                                   [1, 3, POSE_H, POSE_W])],
                              outputs, initializer=inits)
    _save(_model(graph), path)


def write_models(models_dir: Path) -> None:
    folder = Path(models_dir) / DWPOSE
    build_detector(folder / DETECTOR_FILE)
    build_pose(folder / POSE_FILE)
