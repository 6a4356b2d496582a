"""The op table (`dyadic.ops.base`); importing this package registers every entry."""
from dyadic.ops import (arith_ops, binary_import, elementwise, embedding, layernorm, matmul, movement,  # noqa: F401
                        reduce, softmax)  # (registration)
from dyadic.ops.base import FLOAT, IMPORTERS, INT, ImportContext, IntOpDef, OpDef, QuantContext

__all__ = ["FLOAT", "INT", "IMPORTERS", "ImportContext", "QuantContext", "OpDef", "IntOpDef"]
