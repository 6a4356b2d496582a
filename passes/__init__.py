"""Graph passes of dyadic, one module each, one `graph -> graph` function per module.

The order they run in is the literal list in `dyadic.pipeline`. The importer that makes the float
graph they start from is `dyadic.frontend.import_onnx`.
"""
from .assign_bitwidths import assign_bitwidths
from .calibrate_ranges import calibrate_ranges
from .choose_wide_activations import choose_wide_activations
from .estimate_sensitivity import estimate_sensitivity
from .fold_batchnorm import fold_batchnorm
from .fuse_activations import fuse_activations
from .fuse_layernorm import fuse_layernorm
from .fuse_softmax_bias import fuse_softmax_bias
from .fuse_unary import fuse_unary
from .measure_costs import measure_costs
from .quantize_graph import quantize_graph
from .round_weights import round_weights
from .share_concat_scales import share_concat_scales
from .widen_activations import widen_activations
from .widen_residual import widen_residual
from .widen_weights import widen_weights

__all__ = [
    "fuse_layernorm", "fold_batchnorm", "fuse_softmax_bias", "fuse_unary", "fuse_activations", "widen_residual",
    "widen_activations",
    "calibrate_ranges", "choose_wide_activations", "share_concat_scales", "estimate_sensitivity",
    "measure_costs", "assign_bitwidths", "widen_weights", "round_weights", "quantize_graph",
]
