"""Export torchvision models (random init) to ONNX opset 17; run with a python that has torch.

    /work/zoo-venv/bin/python benchmarks/_export_torchvision.py OUT_DIR vit_b_16 swin_t convnext_tiny
"""
import os
import sys

import torch
import torchvision

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
for name in sys.argv[2:]:
    path = os.path.join(out, f"{name}.onnx")
    if os.path.exists(path):
        continue
    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    torch.onnx.export(m, (x,), path, opset_version=17, input_names=["input"], output_names=["logits"],
                      dynamo=False)
    print("exported", path, flush=True)
