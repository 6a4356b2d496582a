"""The op table (`dyadic.ops.base`); importing this package registers every entry."""
from dyadic.ops import arith_ops, binary_import, elementwise, movement, reduce, softmax  # noqa: F401  (registration)
from dyadic.ops import (convtranspose, indexmaps, logsoftmax, lrn, prelu, reduce_axes,  # noqa: F401
                        resize)
from dyadic.ops.base import FLOAT, IMPORTERS, INT, ImportContext, IntOpDef, OpDef, QuantContext

__all__ = ["FLOAT", "INT", "IMPORTERS", "ImportContext", "QuantContext", "OpDef", "IntOpDef"]
