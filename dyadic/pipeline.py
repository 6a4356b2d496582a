"""The compile pipeline, top to bottom, in one place.

    import_onnx -> [float passes, each verified] -> integer graph (verified) -> Relax (verified) -> build

The float passes end with everything the bit-width choice needs (ranges; for mixed precision the
Hessian sensitivities and measured costs); `dyadic sweep` runs them once and the bit-width passes
once per budget.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np

from dyadic.core.config import CompileConfig
from dyadic.core.graph import Graph
from dyadic.core.verify import verify_float_graph, verify_integer_graph
from dyadic.core.config import BitMode
from dyadic.passes import (assign_bitwidths, calibrate_ranges, choose_wide_activations, estimate_sensitivity, fold_batchnorm,
                           fuse_activations, fuse_layernorm, fuse_softmax_bias, fuse_unary, measure_costs,
                           quantize_graph, round_weights, share_concat_scales, widen_activations, widen_residual,
                           widen_weights)

Pass = Callable[[Graph], Graph]


def float_passes(config: CompileConfig, calib: dict[str, np.ndarray], mixed: bool = False) -> list[tuple[str, Pass]]:
    mixed = mixed or config.bits is BitMode.MIXED
    return [
        ("fuse_layernorm", fuse_layernorm),
        ("fold_batchnorm", fold_batchnorm),
        ("fuse_softmax_bias", fuse_softmax_bias),
        ("fuse_unary", fuse_unary),
        ("fuse_activations", fuse_activations),
        ("widen_residual", widen_residual),
        ("widen_activations", partial(widen_activations, kind=config.wide_activations)),
        ("calibrate_ranges", partial(calibrate_ranges, data=calib, batch_size=config.calib_batch,
                                     quiet=config.quiet, method=config.calibration, percentile=config.percentile)),
        ("choose_wide_activations", partial(choose_wide_activations, kind=config.wide_activations,
                                            share=config.wide_share, cosine=config.wide_cosine,
                                            cosine_over=config.wide_cosine_over, weight_clip=config.weight_clip,
                                            wide_weights=config.wide_weights, bias_correction=config.bias_correction,
                                            quiet=config.quiet)),
        ("share_concat_scales", share_concat_scales),
        *([("estimate_sensitivity", partial(estimate_sensitivity, data=calib, samples=config.hessian_samples,
                                            quiet=config.quiet, weight_clip=config.weight_clip)),
           ("measure_costs", partial(measure_costs, target=config.target, quiet=config.quiet, rpc=config.rpc))]
          if mixed else []),
    ]


def integer_passes(config: CompileConfig) -> list[tuple[str, Pass]]:
    return [
        ("assign_bitwidths", partial(assign_bitwidths, mode=config.bits, pin_first_last=config.pin_first_last,
                                     budgets=config.budgets, layer_bits=config.layer_bits)),
        ("widen_weights", partial(widen_weights, kind=config.wide_weights, quiet=config.quiet)),
        ("round_weights", partial(round_weights, rounding=config.rounding, weight_clip=config.weight_clip,
                                  bias_correction=config.bias_correction, iters=config.adaround_iters,
                                  quiet=config.quiet)),
        ("quantize_graph", quantize_graph),
    ]


def graph_passes(config: CompileConfig, calib: dict[str, np.ndarray]) -> list[tuple[str, Pass]]:
    return float_passes(config, calib) + integer_passes(config)


@dataclass
class PassLog:
    seconds: dict[str, float] = field(default_factory=dict)


def run_passes(graph: Graph, passes: list[tuple[str, Pass]], log: PassLog | None = None) -> Graph:
    """Run each pass, then the verifier for the kind of graph it produced."""
    for name, fn in passes:
        t0 = time.perf_counter()
        graph = fn(graph)
        (verify_integer_graph if graph.qparams else verify_float_graph)(graph, after=name)
        if log is not None:
            log.seconds[name] = time.perf_counter() - t0
    return graph
