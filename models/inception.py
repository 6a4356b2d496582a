"""Inception-v3 graph builder with seeded random weights and explicit BatchNormalization.

Architecture of torchvision.models.inception_v3 (``Inception3`` with
``aux_logits=False, transform_input=False``), after Szegedy et al.,
"Rethinking the Inception Architecture for Computer Vision" (CVPR 2016).
Every BasicConv2d is Conv (no bias) + BatchNormalization (eps 1e-3) + Relu;
the pooling branches inside InceptionA/C/E use AveragePool 3x3, stride 1,
pad 1 with ``count_include_pad=1`` (``F.avg_pool2d`` defaults), reductions
(InceptionB/D and the stem) use MaxPool 3x3 stride 2. Dropout is omitted
(eval mode). The smallest input torchvision accepts is 75x75.
"""

from __future__ import annotations

import onnx

from ._onnx_builder import GraphBuilder

BN_EPS = 1e-3


class _Inception:
    def __init__(self, g: GraphBuilder):
        self.g = g

    def conv(self, x: str, cin: int, cout: int, name: str, kernel=1, stride=1, pad=0) -> str:
        y = self.g.conv(x, cin, cout, kernel, f"{name}.conv", stride=stride, pad=pad)
        y = self.g.batchnorm(y, cout, f"{name}.bn", eps=BN_EPS)
        return self.g.relu(y, f"{name}.relu")

    def pool_branch(self, x: str, cin: int, cout: int, p: str) -> str:
        y = self.g.avgpool(x, f"{p}.avg_pool", kernel=3, stride=1, pad=1, count_include_pad=True)
        return self.conv(y, cin, cout, f"{p}.branch_pool")

    def block_a(self, x: str, cin: int, pool_features: int, p: str) -> tuple[str, int]:
        b1 = self.conv(x, cin, 64, f"{p}.branch1x1")
        b5 = self.conv(x, cin, 48, f"{p}.branch5x5_1")
        b5 = self.conv(b5, 48, 64, f"{p}.branch5x5_2", kernel=5, pad=2)
        b3 = self.conv(x, cin, 64, f"{p}.branch3x3dbl_1")
        b3 = self.conv(b3, 64, 96, f"{p}.branch3x3dbl_2", kernel=3, pad=1)
        b3 = self.conv(b3, 96, 96, f"{p}.branch3x3dbl_3", kernel=3, pad=1)
        bp = self.pool_branch(x, cin, pool_features, p)
        return self.g.concat([b1, b5, b3, bp], f"{p}.concat"), 64 + 64 + 96 + pool_features

    def block_b(self, x: str, cin: int, p: str) -> tuple[str, int]:
        b3 = self.conv(x, cin, 384, f"{p}.branch3x3", kernel=3, stride=2)
        bd = self.conv(x, cin, 64, f"{p}.branch3x3dbl_1")
        bd = self.conv(bd, 64, 96, f"{p}.branch3x3dbl_2", kernel=3, pad=1)
        bd = self.conv(bd, 96, 96, f"{p}.branch3x3dbl_3", kernel=3, stride=2)
        bp = self.g.maxpool(x, f"{p}.max_pool", kernel=3, stride=2)
        return self.g.concat([b3, bd, bp], f"{p}.concat"), 384 + 96 + cin

    def block_c(self, x: str, cin: int, c7: int, p: str) -> tuple[str, int]:
        b1 = self.conv(x, cin, 192, f"{p}.branch1x1")
        b7 = self.conv(x, cin, c7, f"{p}.branch7x7_1")
        b7 = self.conv(b7, c7, c7, f"{p}.branch7x7_2", kernel=(1, 7), pad=(0, 3))
        b7 = self.conv(b7, c7, 192, f"{p}.branch7x7_3", kernel=(7, 1), pad=(3, 0))
        bd = self.conv(x, cin, c7, f"{p}.branch7x7dbl_1")
        bd = self.conv(bd, c7, c7, f"{p}.branch7x7dbl_2", kernel=(7, 1), pad=(3, 0))
        bd = self.conv(bd, c7, c7, f"{p}.branch7x7dbl_3", kernel=(1, 7), pad=(0, 3))
        bd = self.conv(bd, c7, c7, f"{p}.branch7x7dbl_4", kernel=(7, 1), pad=(3, 0))
        bd = self.conv(bd, c7, 192, f"{p}.branch7x7dbl_5", kernel=(1, 7), pad=(0, 3))
        bp = self.pool_branch(x, cin, 192, p)
        return self.g.concat([b1, b7, bd, bp], f"{p}.concat"), 4 * 192

    def block_d(self, x: str, cin: int, p: str) -> tuple[str, int]:
        b3 = self.conv(x, cin, 192, f"{p}.branch3x3_1")
        b3 = self.conv(b3, 192, 320, f"{p}.branch3x3_2", kernel=3, stride=2)
        b7 = self.conv(x, cin, 192, f"{p}.branch7x7x3_1")
        b7 = self.conv(b7, 192, 192, f"{p}.branch7x7x3_2", kernel=(1, 7), pad=(0, 3))
        b7 = self.conv(b7, 192, 192, f"{p}.branch7x7x3_3", kernel=(7, 1), pad=(3, 0))
        b7 = self.conv(b7, 192, 192, f"{p}.branch7x7x3_4", kernel=3, stride=2)
        bp = self.g.maxpool(x, f"{p}.max_pool", kernel=3, stride=2)
        return self.g.concat([b3, b7, bp], f"{p}.concat"), 320 + 192 + cin

    def block_e(self, x: str, cin: int, p: str) -> tuple[str, int]:
        b1 = self.conv(x, cin, 320, f"{p}.branch1x1")
        b3 = self.conv(x, cin, 384, f"{p}.branch3x3_1")
        b3a = self.conv(b3, 384, 384, f"{p}.branch3x3_2a", kernel=(1, 3), pad=(0, 1))
        b3b = self.conv(b3, 384, 384, f"{p}.branch3x3_2b", kernel=(3, 1), pad=(1, 0))
        b3 = self.g.concat([b3a, b3b], f"{p}.branch3x3.concat")
        bd = self.conv(x, cin, 448, f"{p}.branch3x3dbl_1")
        bd = self.conv(bd, 448, 384, f"{p}.branch3x3dbl_2", kernel=3, pad=1)
        bda = self.conv(bd, 384, 384, f"{p}.branch3x3dbl_3a", kernel=(1, 3), pad=(0, 1))
        bdb = self.conv(bd, 384, 384, f"{p}.branch3x3dbl_3b", kernel=(3, 1), pad=(1, 0))
        bd = self.g.concat([bda, bdb], f"{p}.branch3x3dbl.concat")
        bp = self.pool_branch(x, cin, 192, p)
        return self.g.concat([b1, b3, bd, bp], f"{p}.concat"), 320 + 768 + 768 + 192


def inception_v3(seed: int = 0, image_size: int = 299, num_classes: int = 1000) -> onnx.ModelProto:
    """torchvision Inception3 without aux logits (23,834,568 trainable parameters)."""
    if image_size < 75:
        raise ValueError("inception_v3 needs image_size >= 75")
    g = GraphBuilder("inception_v3", seed)
    m = _Inception(g)
    x = m.conv(g.input, 3, 32, "Conv2d_1a_3x3", kernel=3, stride=2)
    x = m.conv(x, 32, 32, "Conv2d_2a_3x3", kernel=3)
    x = m.conv(x, 32, 64, "Conv2d_2b_3x3", kernel=3, pad=1)
    x = g.maxpool(x, "maxpool1", kernel=3, stride=2)
    x = m.conv(x, 64, 80, "Conv2d_3b_1x1")
    x = m.conv(x, 80, 192, "Conv2d_4a_3x3", kernel=3)
    x = g.maxpool(x, "maxpool2", kernel=3, stride=2)
    c = 192
    x, c = m.block_a(x, c, 32, "Mixed_5b")
    x, c = m.block_a(x, c, 64, "Mixed_5c")
    x, c = m.block_a(x, c, 64, "Mixed_5d")
    x, c = m.block_b(x, c, "Mixed_6a")
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        x, c = m.block_c(x, c, c7, name)
    x, c = m.block_d(x, c, "Mixed_7a")
    x, c = m.block_e(x, c, "Mixed_7b")
    x, c = m.block_e(x, c, "Mixed_7c")
    x = g.global_avgpool_flatten(x)
    out = g.gemm(x, c, num_classes, "fc")
    return g.build_model(out, image_size, num_classes,
                         doc="torchvision Inception3 (aux_logits=False, transform_input=False)")
