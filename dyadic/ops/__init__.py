"""The op table (`dyadic.ops.base`); importing this package registers every entry."""
from dyadic.ops import (arith_ops, binary_import, convtranspose, elementwise, indexmaps, logsoftmax, lrn,  # noqa: F401
                        prelu, reduce, reduce_axes, resize, softmax)  # (registration)
# registered last: their ReduceMean (a `mean` the LayerNorm pass reads) and Expand rules are the ones in force
from dyadic.ops import embedding, layernorm, matmul, movement  # noqa: F401,E402
from dyadic.ops.base import FLOAT, IMPORTERS, INT, ImportContext, IntOpDef, OpDef, QuantContext

__all__ = ["FLOAT", "INT", "IMPORTERS", "ImportContext", "QuantContext", "OpDef", "IntOpDef"]
