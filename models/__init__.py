"""Reference float32 CNNs as ONNX graphs (opset 17, IR 8) with seeded random weights.

Each builder returns an ``onnx.ModelProto`` with one input ``input``
(float32 ``[N, 3, H, W]``, symbolic batch ``N``) and one output ``logits``
(float32 ``[N, classes]``). BatchNormalization is kept as explicit nodes, not
folded into the convolutions. Weights are random but deterministic in
``seed``; the graphs are structural stand-ins for the pretrained networks.

=============== ============================================ =========== ==========
name            architecture                                 input       parameters
=============== ============================================ =========== ==========
resnet20        CIFAR ResNet-20 (He et al. 2016, sec. 4.2)   3x32x32        269,722
resnet18        torchvision resnet18                         3x224x224   11,689,512
resnet50        torchvision resnet50 (v1.5)                  3x224x224   25,557,032
mobilenet_v2    torchvision mobilenet_v2 (width 1.0)         3x224x224    3,504,872
inception_v3    torchvision inception_v3, no aux logits      3x299x299   23,834,568
=============== ============================================ =========== ==========

Parameter counts are torchvision's ``sum(p.numel() for p in model.parameters())``,
i.e. BN running statistics excluded.
"""

from __future__ import annotations

from os import PathLike
from typing import Callable

import onnx

from .inception import inception_v3
from .mobilenet import mobilenet_v2
from .resnet import resnet18, resnet20_cifar, resnet50

BUILDERS: dict[str, Callable[..., onnx.ModelProto]] = {
    "resnet20": resnet20_cifar,
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v2": mobilenet_v2,
    "inception_v3": inception_v3,
}


def build(name: str, **kw) -> onnx.ModelProto:
    """Build the model registered under ``name``; ``kw`` goes to its builder."""
    try:
        builder = BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {sorted(BUILDERS)}") from None
    return builder(**kw)


def save(name: str, path: str | PathLike, **kw) -> onnx.ModelProto:
    """Build ``name`` and write it to ``path``; returns the model."""
    model = build(name, **kw)
    onnx.save_model(model, str(path))
    return model


__all__ = ["BUILDERS", "build", "save", "inception_v3", "mobilenet_v2",
           "resnet18", "resnet20_cifar", "resnet50"]
