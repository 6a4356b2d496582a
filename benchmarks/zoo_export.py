"""Export torchvision models (random init) to ONNX the way a user would: `torch.onnx.export`, opset 17.

Run with a Python that has torch and torchvision (the `[zoo]` extra), not from the tests:

    python benchmarks/zoo_export.py OUT_DIR [name ...]

BatchNorm running statistics are set by a few forward passes in training mode on N(0, 1) inputs
(cumulative averages, `momentum=None`), so that the eval-mode activations are O(1) as in a trained
network; a random-init network with the default (0, 1) statistics has activations that explode or
vanish through the depth, which no quantizer could be judged on.
"""
from __future__ import annotations

import os
import sys

MODELS = ["resnet18", "resnet50", "resnext50_32x4d", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
          "efficientnet_b0", "squeezenet1_1", "shufflenet_v2_x1_0", "densenet121", "googlenet", "inception_v3",
          "regnet_y_400mf", "mnasnet1_0"]
SIZE = {"inception_v3": 299}


def export(name: str, out_dir: str, dynamic_batch: bool = True) -> str:
    import torch
    import torchvision

    torch.manual_seed(0)
    kw = {"aux_logits": False, "init_weights": True} if name in ("googlenet", "inception_v3") else {}
    m = torchvision.models.get_model(name, weights=None, **kw)
    for mod in m.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm):
            mod.reset_running_stats()
            mod.momentum = None
    s = SIZE.get(name, 224)
    m.train()
    with torch.no_grad():
        for _ in range(4):
            m(torch.randn(8, 3, s, s))
    m.eval()
    path = os.path.join(out_dir, f"{name}.onnx")
    x = torch.randn(1, 3, s, s)
    torch.onnx.export(m, (x,), path, opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}} if dynamic_batch else None, dynamo=False)
    return path


if __name__ == "__main__":
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    for n in sys.argv[2:] or MODELS:
        print(export(n, out), flush=True)
