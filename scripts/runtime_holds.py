#!/usr/bin/env python3
"""Print pip constraints that hold a notebook runtime's own packages (Colab, Kaggle) where they are.

    python scripts/runtime_holds.py > constraints.txt      (scripts/install.sh --colab)

Exact `name==version` lines for the packages of HELD that this interpreter has (not `pip freeze`:
it prints `torch @ https://...` for wheels installed from a URL, which pip refuses as a constraint).
"""
from __future__ import annotations

import importlib.metadata as md

HELD = (
    # The runtime's CUDA build and what must match it exactly (a torchaudio or torchvision whose
    # native extension doesn't match torch fails at import); numpy, which its compiled packages
    # (numba, TensorFlow, JAX) were built against.
    "torch", "torchaudio", "torchvision", "numpy",
    # Kaggle forces protobuf 5.29.x and Colab ships 5.29.x for its Google packages (grpcio-status,
    # TensorFlow: protobuf<6); a current onnx asks for protobuf>=6.31 and would move it, breaking
    # them: held, pip picks an onnx that works with it.
    "protobuf",
)


def constraints() -> list[str]:
    lines = []
    for name in HELD:
        try:
            lines.append(f"{name}=={md.version(name)}")
        except md.PackageNotFoundError:
            pass
    return lines


if __name__ == "__main__":
    print("\n".join(constraints()))
