"""Tiny random-weight InsightFace models in the real on-disk layout, for CI and tests.

Writes `<models_dir>/buffalo_l/models/buffalo_l/{det_10g,w600k_r50,genderage,2d106det,1k3d68}.onnx`
(the folder `FaceAnalysis(name="buffalo_l", root=<models_dir>/buffalo_l)` reads) and
`<models_dir>/inswapper_128/inswapper_128.onnx`, so the real insightface code paths run end to end.

The detector is not random: it fires on an all-white 96x96 window aligned to its stride-32 grid
(in detector input pixels) and nowhere else, so a white square is "a face" at a known place and
an image without one has no face. The other models have random weights: their outputs are noise
with the right shapes. See TESTING.md ("Face") for how insightface classifies each file.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from prefetch.manifest import smoke_builder

PACK = "buffalo_l"
FACE_SIZE = 96  # detector pixels: the planted face is a white square of this size
STRIDE = 32
# The 5 ArcFace template points (112x112 crop) mapped into a 96x96 box, relative to its centre,
# in stride-32 units: what SCRFD's keypoint head predicts for a face filling the box.
_ARCFACE_112 = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                         [41.5493, 92.3655], [70.7299, 92.2041]], np.float32)
_KPS = ((_ARCFACE_112 - 56.0) * (FACE_SIZE / 112.0) / STRIDE).reshape(1, 10)
_BOX = np.full((1, 4), FACE_SIZE / 2 / STRIDE, np.float32)  # left, top, right, bottom distances


def _save(model, path: Path) -> None:
    import onnx

    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))


def _model(graph):
    from onnx import helper

    # IR/opset that every onnxruntime from 1.16 on loads (Colab's onnxruntime-gpu included).
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8,
                             producer_name="enfoads-smoke")


def build_detector(path: Path) -> None:
    """SCRFD layout with keypoints: 9 outputs (scores, boxes, kps for strides 8/16/32), 2 anchors."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []

    def const(name, value, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=f"tiny_{name}", **attrs))
        return name

    column = const("column", [-1, 1], np.int64)
    zero = const("zero", [0.0])
    # Mean brightness of the normalised input ((x - 127.5) / 128: white ~ +1, black ~ -1).
    gray = node("ReduceMean", ["input.1"], "gray", axes=[1], keepdims=1)
    half = FACE_SIZE // 2
    scores, anchors = {}, {}
    for stride in (8, 16, 32):
        if stride == STRIDE:
            # The mean over a FACE_SIZE window centred on each anchor centre (stride * i); pads of
            # 48 before and 16 after give exactly one value per anchor. Fires above 0.6.
            pooled = node("AveragePool", [gray], f"pool{stride}", kernel_shape=[FACE_SIZE, FACE_SIZE],
                          strides=[stride, stride], pads=[half, half, half - stride, half - stride])
            shifted = node("Sub", [pooled, const("threshold", [0.6])], f"shift{stride}")
            score = node("Sigmoid", [node("Mul", [shifted, const("gain", [40.0])], f"logit{stride}")],
                         f"sig{stride}")
        else:  # the finer strides never fire
            pooled = node("AveragePool", [gray], f"pool{stride}", kernel_shape=[stride, stride],
                          strides=[stride, stride])
            score = node("Mul", [pooled, zero], f"sig{stride}")
        col = node("Reshape", [score, column], f"col{stride}")
        zeros = node("Mul", [col, zero], f"zcol{stride}")
        # Two anchors per location, interleaved; only the first one can score.
        scores[stride] = node("Reshape", [node("Concat", [col, zeros], f"pair{stride}", axis=1), column],
                              f"score_{stride}")
        anchors[stride] = node("Reshape", [node("Concat", [zeros, zeros], f"zpair{stride}", axis=1), column],
                               f"zeros{stride}")
    boxes = {s: node("Add", [anchors[s], const(f"box{s}", _BOX)], f"bbox_{s}") for s in (8, 16, 32)}
    kps = {s: node("Add", [anchors[s], const(f"kp{s}", _KPS)], f"kps_{s}") for s in (8, 16, 32)}
    outputs = [(scores[s], s, 1) for s in (8, 16, 32)] + [(boxes[s], s, 4) for s in (8, 16, 32)] \
        + [(kps[s], s, 10) for s in (8, 16, 32)]
    graph = helper.make_graph(
        nodes, "scrfd_tiny",
        [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"anchors{stride}", width])
         for name, stride, width in outputs],
        initializer=inits)
    _save(_model(graph), path)


def _features(nodes, inits, rng, inp: str, channels: int, size: int, pool: int) -> tuple[str, int]:
    """conv(k=pool, stride=pool) -> flatten: a cheap image feature of `channels*(size/pool)^2` values."""
    from onnx import helper, numpy_helper

    w = rng.normal(0, 0.05, (channels, 3, pool, pool)).astype(np.float32)
    inits.append(numpy_helper.from_array(w, "conv_w"))
    nodes.append(helper.make_node("Conv", [inp, "conv_w"], ["feat"], name="tiny_conv", kernel_shape=[pool, pool],
                                  strides=[pool, pool]))
    nodes.append(helper.make_node("Flatten", ["feat"], ["flat"], name="tiny_flatten", axis=1))
    return "flat", channels * (size // pool) ** 2


def _head(nodes, inits, rng, inp: str, n_in: int, n_out: int, out: str, bias=None, scale=0.05) -> None:
    from onnx import helper, numpy_helper

    inits.append(numpy_helper.from_array(rng.normal(0, scale, (n_in, n_out)).astype(np.float32), "fc_w"))
    b = np.zeros(n_out, np.float32) if bias is None else np.asarray(bias, np.float32)
    inits.append(numpy_helper.from_array(b, "fc_b"))
    nodes.append(helper.make_node("Gemm", [inp, "fc_w", "fc_b"], [out], name="tiny_fc"))


def build_single_head(path: Path, *, input_name: str, size: int, n_out: int, pool: int, seed: int,
                      batch="None", bias=None, scale=0.05) -> None:
    """One image in ([batch, 3, size, size]), one vector out ([batch, n_out]): ArcFace (112 -> 512),
    genderage (96 -> 3), landmarks (192 -> 212 or 3309)."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    flat, n_feat = _features(nodes, inits, rng, input_name, 4, size, pool)
    _head(nodes, inits, rng, flat, n_feat, n_out, "output", bias=bias, scale=scale)
    graph = helper.make_graph(
        nodes, path.stem,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [batch, n_out])],
        initializer=inits)
    _save(_model(graph), path)


def build_inswapper(path: Path, seed: int = 5) -> None:
    """INSwapper layout: inputs `target` [1,3,128,128] in [0,1] and `source` [1,512]; output
    [1,3,128,128] in [0,1]; the LAST initializer is the 512x512 emap insightface reads."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (3, 3, 3, 3)).astype(np.float32), "mix_w"),
        numpy_helper.from_array(rng.normal(0, 1.0, (512, 3)).astype(np.float32), "style_w"),
        numpy_helper.from_array(np.array([1, 3, 1, 1], np.int64), "style_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["target", "mix_w"], ["mixed"], name="tiny_mix", kernel_shape=[3, 3],
                         pads=[1, 1, 1, 1]),
        helper.make_node("MatMul", ["source", "style_w"], ["style"], name="tiny_style"),
        helper.make_node("Reshape", ["style", "style_shape"], ["style4"], name="tiny_style4"),
        helper.make_node("Add", ["mixed", "style4"], ["pre"], name="tiny_add"),
        helper.make_node("Sigmoid", ["pre"], ["output"], name="tiny_out"),
    ]
    emap = rng.normal(0, 1.0 / np.sqrt(512), (512, 512)).astype(np.float32)
    inits.append(numpy_helper.from_array(emap, "emap"))  # unused by the graph, read by insightface
    graph = helper.make_graph(
        nodes, "inswapper_tiny",
        [helper.make_tensor_value_info("target", TensorProto.FLOAT, [1, 3, 128, 128]),
         helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, 128, 128])],
        initializer=inits)
    _save(_model(graph), path)


def build_pack(models_dir: Path) -> None:
    pack = Path(models_dir) / PACK / "models" / PACK
    build_detector(pack / "det_10g.onnx")
    build_single_head(pack / "w600k_r50.onnx", input_name="input.1", size=112, n_out=512, pool=16, seed=1)
    # genderage: pred[2] * 100 is the age; tiny weights and a bias keep it near 30.
    build_single_head(pack / "genderage.onnx", input_name="data", size=96, n_out=3, pool=16, seed=2,
                      batch=1, bias=[0.0, 0.0, 0.3], scale=0.0005)
    build_single_head(pack / "2d106det.onnx", input_name="data", size=192, n_out=212, pool=32, seed=3, batch=1)
    build_single_head(pack / "1k3d68.onnx", input_name="data", size=192, n_out=3309, pool=32, seed=4, batch=1)
    build_inswapper(Path(models_dir) / "inswapper_128" / "inswapper_128.onnx")


@smoke_builder("face")
def build(models_dir: Path) -> None:
    from services.restore.smoke import build_face_restorer

    build_pack(models_dir)
    build_face_restorer(models_dir)  # GFPGAN v1.4 (manifest family: face)
