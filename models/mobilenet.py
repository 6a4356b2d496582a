"""MobileNetV2 graph builder with seeded random weights and explicit BatchNormalization.

Architecture of torchvision.models.mobilenet_v2 (width 1.0), after Sandler et
al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks" (CVPR 2018):
3x3 stride-2 stem with 32 channels, 17 InvertedResidual blocks (1x1 expand,
3x3 depthwise via ``group``, linear 1x1 projection; residual Add when stride
is 1 and input/output widths match), 1x1 conv to 1280, global average pool and
a 1280->classes linear layer. ReLU6 is ``Clip(x, 0, 6)`` with min/max given as
initializer inputs; dropout is omitted (eval mode).
"""

from __future__ import annotations

import onnx

from ._onnx_builder import GraphBuilder

INVERTED_RESIDUAL_SETTING = (
    # expand ratio t, output channels c, repeats n, first stride s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def _conv_bn(g: GraphBuilder, x: str, cin: int, cout: int, kernel: int, prefix: str,
             stride: int = 1, groups: int = 1, relu6: bool = True) -> str:
    y = g.conv(x, cin, cout, kernel, f"{prefix}.conv", stride=stride,
               pad=(kernel - 1) // 2, groups=groups)
    y = g.batchnorm(y, cout, f"{prefix}.bn")
    return g.relu6(y, f"{prefix}.relu6") if relu6 else y


def _inverted_residual(g: GraphBuilder, x: str, cin: int, cout: int, stride: int,
                       expand_ratio: int, prefix: str) -> str:
    hidden = int(round(cin * expand_ratio))
    y = x
    if expand_ratio != 1:
        y = _conv_bn(g, y, cin, hidden, 1, f"{prefix}.expand")
    y = _conv_bn(g, y, hidden, hidden, 3, f"{prefix}.depthwise", stride=stride, groups=hidden)
    y = _conv_bn(g, y, hidden, cout, 1, f"{prefix}.project", relu6=False)
    if stride == 1 and cin == cout:
        y = g.add(x, y, f"{prefix}.add")
    return y


def mobilenet_v2(seed: int = 0, image_size: int = 224, num_classes: int = 1000) -> onnx.ModelProto:
    """torchvision MobileNetV2, width 1.0 (3,504,872 trainable parameters)."""
    g = GraphBuilder("mobilenet_v2", seed)
    x = _conv_bn(g, g.input, 3, 32, 3, "features.0", stride=2)
    cin, idx = 32, 1
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        for i in range(n):
            x = _inverted_residual(g, x, cin, c, s if i == 0 else 1, t, f"features.{idx}")
            cin, idx = c, idx + 1
    x = _conv_bn(g, x, cin, 1280, 1, f"features.{idx}")
    x = g.global_avgpool_flatten(x)
    out = g.gemm(x, 1280, num_classes, "classifier.1")
    return g.build_model(out, image_size, num_classes, doc="torchvision mobilenet_v2 (width 1.0)")
