"""ResNet graph builders with seeded random weights and explicit BatchNormalization.

* `resnet20_cifar`: CIFAR-10 ResNet-20 of He et al., "Deep Residual Learning for
  Image Recognition" (CVPR 2016), section 4.2, laid out as in
  akamaster/pytorch_resnet_cifar10: 3x3 stem with 16 channels, three stages of
  three BasicBlocks (16/32/64 channels), parameter-free "option A" shortcuts
  (stride-2 subsampling plus zero channel padding), global mean, 64->10 linear.
* `resnet18`, `resnet50`: torchvision.models.resnet18 / resnet50 (ResNet v1.5:
  the stride of a Bottleneck sits on its 3x3 conv; projection shortcut is a
  1x1 conv + BN).

Node and initializer names follow the PyTorch module paths
(``layer1.0.conv1``, ``layer1.0.bn1.running_mean``, ``fc.weight``...).
"""

from __future__ import annotations

import onnx

from ._onnx_builder import GraphBuilder


def _conv_bn(g: GraphBuilder, x: str, cin: int, cout: int, kernel: int, prefix: str,
             conv: str, bn: str, stride: int = 1, eps: float = 1e-5) -> str:
    y = g.conv(x, cin, cout, kernel, f"{prefix}{conv}", stride=stride, pad=kernel // 2)
    return g.batchnorm(y, cout, f"{prefix}{bn}", eps=eps)


def _basic_block(g: GraphBuilder, x: str, cin: int, planes: int, stride: int,
                 prefix: str, shortcut) -> str:
    y = _conv_bn(g, x, cin, planes, 3, prefix, "conv1", "bn1", stride)
    y = g.relu(y, f"{prefix}relu1")
    y = _conv_bn(g, y, planes, planes, 3, prefix, "conv2", "bn2")
    identity = shortcut(g, x, cin, planes, stride, prefix)
    return g.relu(g.add(y, identity, f"{prefix}add"), f"{prefix}relu2")


def _bottleneck(g: GraphBuilder, x: str, cin: int, planes: int, stride: int,
                prefix: str, shortcut) -> str:
    out = planes * 4
    y = _conv_bn(g, x, cin, planes, 1, prefix, "conv1", "bn1")
    y = g.relu(y, f"{prefix}relu1")
    y = _conv_bn(g, y, planes, planes, 3, prefix, "conv2", "bn2", stride)
    y = g.relu(y, f"{prefix}relu2")
    y = _conv_bn(g, y, planes, out, 1, prefix, "conv3", "bn3")
    identity = shortcut(g, x, cin, out, stride, prefix)
    return g.relu(g.add(y, identity, f"{prefix}add"), f"{prefix}relu3")


def _projection_shortcut(g: GraphBuilder, x: str, cin: int, cout: int, stride: int,
                         prefix: str) -> str:
    if stride == 1 and cin == cout:
        return x
    return _conv_bn(g, x, cin, cout, 1, prefix, "downsample.0", "downsample.1", stride)


def _option_a_shortcut(g: GraphBuilder, x: str, cin: int, cout: int, stride: int,
                       prefix: str) -> str:
    if stride == 1 and cin == cout:
        return x
    y = g.slice(x, f"{prefix}shortcut.slice_h", axis=2, step=2)
    y = g.slice(y, f"{prefix}shortcut.slice_w", axis=3, step=2)
    extra = cout // 4
    return g.pad_channels(y, f"{prefix}shortcut.pad", extra, extra)


def resnet20_cifar(seed: int = 0, image_size: int = 32, num_classes: int = 10) -> onnx.ModelProto:
    """CIFAR ResNet-20 (269,722 trainable parameters), input [N, 3, 32, 32]."""
    g = GraphBuilder("resnet20_cifar", seed)
    x = _conv_bn(g, g.input, 3, 16, 3, "", "conv1", "bn1")
    x = g.relu(x, "relu")
    cin = 16
    for stage, planes in enumerate((16, 32, 64), start=1):
        for i in range(3):
            stride = 2 if (i == 0 and stage > 1) else 1
            x = _basic_block(g, x, cin, planes, stride, f"layer{stage}.{i}.",
                             _option_a_shortcut)
            cin = planes
    x = g.node("ReduceMean", [x], "avgpool", axes=[2, 3], keepdims=0)
    out = g.gemm(x, 64, num_classes, "linear")
    return g.build_model(out, image_size, num_classes,
                         doc="CIFAR ResNet-20 (He et al. 2016, sec. 4.2), option A shortcuts")


def _imagenet_resnet(name: str, block, layers: tuple[int, ...], expansion: int,
                     seed: int, image_size: int, num_classes: int) -> onnx.ModelProto:
    g = GraphBuilder(name, seed)
    x = g.conv(g.input, 3, 64, 7, "conv1", stride=2, pad=3)
    x = g.batchnorm(x, 64, "bn1")
    x = g.relu(x, "relu")
    x = g.maxpool(x, "maxpool", kernel=3, stride=2, pad=1)
    cin = 64
    for stage, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers), start=1):
        for i in range(blocks):
            stride = 2 if (i == 0 and stage > 1) else 1
            x = block(g, x, cin, planes, stride, f"layer{stage}.{i}.", _projection_shortcut)
            cin = planes * expansion
    x = g.global_avgpool_flatten(x)
    out = g.gemm(x, cin, num_classes, "fc")
    return g.build_model(out, image_size, num_classes, doc=f"torchvision {name}")


def resnet18(seed: int = 0, image_size: int = 224, num_classes: int = 1000) -> onnx.ModelProto:
    """torchvision ResNet-18 (11,689,512 trainable parameters)."""
    return _imagenet_resnet("resnet18", _basic_block, (2, 2, 2, 2), 1,
                            seed, image_size, num_classes)


def resnet50(seed: int = 0, image_size: int = 224, num_classes: int = 1000) -> onnx.ModelProto:
    """torchvision ResNet-50 v1.5 (25,557,032 trainable parameters)."""
    return _imagenet_resnet("resnet50", _bottleneck, (3, 4, 6, 3), 4,
                            seed, image_size, num_classes)
