"""The OpenPose-style skeleton image pose ControlNets are trained on: a black canvas the size of the
photo; limbs as translucent ellipses and joints as dots in OpenPose's 18 colours; hands as lines
coloured around the hue circle with blue joints; the face as white dots (the way DWPose draws it)."""
from __future__ import annotations

import math

import numpy as np

from .dwpose import VISIBLE, Person, openpose_body

# OpenPose body limbs (0-based pairs of the 18 points) and their colours (RGB).
LIMBS = ((1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13),
         (1, 0), (0, 14), (14, 16), (0, 15), (15, 17))
COLOURS = ((255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85))
HAND_EDGES = ((0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20))
FACE = slice(23, 91)
HANDS = (slice(91, 112), slice(112, 133))
STICK_WIDTH = 4


def _hue(i: int, n: int) -> tuple[int, int, int]:
    import colorsys

    return tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / n, 1.0, 1.0))


def _draw_body(canvas: np.ndarray, pts: np.ndarray, sc: np.ndarray) -> None:
    import cv2

    for i, (a, b) in enumerate(LIMBS):
        if sc[a] <= VISIBLE or sc[b] <= VISIBLE:
            continue
        (xa, ya), (xb, yb) = pts[a], pts[b]
        length = math.hypot(xa - xb, ya - yb)
        angle = math.degrees(math.atan2(ya - yb, xa - xb))
        polygon = cv2.ellipse2Poly((int((xa + xb) / 2), int((ya + yb) / 2)), (int(length / 2), STICK_WIDTH),
                                   int(angle), 0, 360, 1)
        layer = canvas.copy()
        cv2.fillConvexPoly(layer, polygon, COLOURS[i])
        canvas[:] = cv2.addWeighted(canvas, 0.4, layer, 0.6, 0)
    for i in range(18):
        if sc[i] > VISIBLE:
            cv2.circle(canvas, (int(pts[i, 0]), int(pts[i, 1])), 4, COLOURS[i], thickness=-1)


def _draw_hand(canvas: np.ndarray, pts: np.ndarray, sc: np.ndarray) -> None:
    import cv2

    for i, (a, b) in enumerate(HAND_EDGES):
        if sc[a] > VISIBLE and sc[b] > VISIBLE:
            cv2.line(canvas, tuple(int(v) for v in pts[a]), tuple(int(v) for v in pts[b]), _hue(i, len(HAND_EDGES)),
                     thickness=2)
    for (x, y), s in zip(pts, sc):
        if s > VISIBLE:
            cv2.circle(canvas, (int(x), int(y)), 4, (0, 0, 255), thickness=-1)


def draw(people: list[Person], width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8 RGB skeleton image of every person."""
    import cv2

    canvas = np.zeros((height, width, 3), np.uint8)
    for person in people:
        _draw_body(canvas, *openpose_body(person.keypoints, person.scores))
    for person in people:
        for hand in HANDS:
            _draw_hand(canvas, person.keypoints[hand], person.scores[hand])
        for (x, y), s in zip(person.keypoints[FACE], person.scores[FACE]):
            if s > VISIBLE:
                cv2.circle(canvas, (int(x), int(y)), 3, (255, 255, 255), thickness=-1)
    return canvas
