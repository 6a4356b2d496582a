"""The README's supported-op table is the generated one (`python -m dyadic.frontend.optable`)."""
from __future__ import annotations

import os

from dyadic.frontend import optable
from dyadic.frontend.onnx_import import SUPPORTED
from dyadic.ops import IMPORTERS

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_op_table_is_generated():
    text = open(README).read()
    start, end = text.index(optable.BEGIN), text.index(optable.END) + len(optable.END)
    assert text[start:end] == optable.markdown(), "README.md op table is stale: paste `python -m dyadic.frontend.optable`"


def test_every_importable_op_is_in_the_table():
    table = optable.markdown()
    for op in (SUPPORTED - {"Constant"}) | set(IMPORTERS):
        assert f" {op}," in table or f" {op} |" in table or f"| {op}," in table or f"| {op} |" in table, op
