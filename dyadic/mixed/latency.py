"""Per-layer latency measurement: the harness behind `passes.measure_costs`.

The latency of layer i at candidate (b_w, b_a) is the median over `Timing.repeat` repeats of one
call of a library that holds only this layer, at batch 1, on the target: a one-node integer graph
(`qconv`/`qdense` with random weights in range for b_w, the layer's real shapes, attributes and
input/output signedness, an input in range for b_a) lowered by `dyadic.backend.lower.lower_to_relax` and
built by the target (`dyadic.targets`) exactly as a compile does, so it times whichever kernel the compile would
pick. The call includes the layer's fused bias/requant epilogue, the conversion of its output back
to NCHW when the kernel writes a packed layout, and the VM's call overhead (microseconds).
Depthwise convs only get a fast kernel when their input comes packed from another conv kernel, so
they are timed behind a 1x1 W8A8 conv prologue whose own time is subtracted:
latency = T(prologue -> layer) - T(prologue) (floored at 1 %). A4 and A8 activations travel in the
same 8-bit container: when the lowered modules of two candidates are structurally equal
(`structural_hash`), they share one measurement and the record says so (`shared_with`).

Where: in this process for a target that runs here, or on a device over TVM RPC (`rpc="HOST:PORT"`:
the one-layer library is exported for the target, e.g. cross-linked for aarch64, uploaded and timed
there by `time_evaluator`, as `dyadic run --rpc` does for a whole model).

Measurements are cached in a JSON file ($DYADIC_CACHE_DIR/latency.json, else the dyadic cache dir)
keyed by the target description (and the RPC address), a fingerprint of the lowering/kernel sources
and TVM version, and the layer signature, so a second compile measures nothing.
"""
from __future__ import annotations

import functools
import glob
import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass

import numpy as np

from dyadic.core.errors import ToolchainError
from dyadic.core.graph import Graph, Node, QParams

CACHE_VERSION = 1
PROLOGUE_CIN = 16   #: input channels of the conv put in front of a depthwise layer


@dataclass(frozen=True)
class Timing:
    warmup: int = 2            #: untimed calls first (page faults, thread pool start)
    repeat: int = 7            #: timed repeats; the latency is their median
    min_repeat_ms: int = 10    #: each repeat loops the call until it lasts this long (averaged)


def cache_file(cache_path: str | None = None) -> str:
    if cache_path:
        return cache_path
    if os.environ.get("DYADIC_CACHE_DIR"):
        return os.path.join(os.environ["DYADIC_CACHE_DIR"], "latency.json")
    from dyadic.targets import toolchain

    return str(toolchain.cache_dir() / "latency.json")


@functools.lru_cache(maxsize=None)
def code_fingerprint(kernels_env: str = "") -> str:
    """Hash of what decides the compiled kernels: lowering and kernel sources, TVM version, env switch.
    Taken once per process (the code this process runs is what it imported)."""
    import tvm

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # dyadic/
    h = hashlib.sha256(f"tvm {tvm.__version__} kernels={kernels_env}".encode())
    for f in sorted([os.path.join(root, "backend", p) for p in ("lower.py", "lower_int4.py", "build.py")]
                    + glob.glob(os.path.join(root, "targets", "*.py"))
                    + glob.glob(os.path.join(root, "backend", "kernels", "*.py"))):
        with open(f, "rb") as fh:
            h.update(os.path.basename(f).encode() + fh.read())
    return h.hexdigest()[:16]


def _out_qparams(graph: Graph, n: Node) -> QParams:
    from dyadic.passes.quantize_graph import OUTPUT_BITS, wide_tensors

    if n.output in wide_tensors(graph):
        return QParams(1.0, OUTPUT_BITS, True)
    return QParams(1.0, 8, graph.ranges[n.output][0] < 0)


def layer_signature(graph: Graph, n: Node) -> dict:
    """What decides the kernel of layer n, except its bits."""
    sig = {"op": n.op, "input": [1, *graph.shapes[n.inputs[0]][1:]], "weight": list(n.params["W"].shape),
           "in_signed": bool(graph.ranges[n.inputs[0]][0] < 0), "out": _out_qparams(graph, n).dtype}
    if n.op == "conv":
        sig.update({k: [int(v) for v in np.ravel(n.attrs[k])] for k in ("strides", "pads", "dilations")},
                   group=int(n.attrs["group"]))
    return sig


def is_depthwise(graph: Graph, n: Node) -> bool:
    w = n.params["W"]
    return n.op == "conv" and n.attrs["group"] == graph.shapes[n.inputs[0]][1] == w.shape[0] and w.shape[1] == 1


def _qnode(op, name, x, y, rng, w_shape, wb, ab, q_out, attrs) -> Node:
    from dyadic.core.arith import dyadic_array

    wmax, o = (1 << (wb - 1)) - 1, w_shape[0]
    m, s = dyadic_array(np.full(o, 1e-4))
    params = {"W": rng.integers(-wmax, wmax + 1, w_shape).astype(np.int8),
              "B": rng.integers(-1000, 1000, o).astype(np.int32), "M": m, "S": s}
    attrs = {k: v for k, v in attrs.items() if k != "act"}
    return Node(op, name, (x,), (y,), {**attrs, "lo": q_out.lo, "hi": q_out.hi, "w_bits": wb, "a_bits": ab}, params)


def one_node_graph(graph: Graph, n: Node, wb: int, ab: int, prologue: bool = False, layer: bool = True) -> Graph:
    """An integer graph holding only layer n at (wb, ab), with random in-range integers. `prologue`
    puts a W8A8 1x1 conv (PROLOGUE_CIN -> C channels) in front, so the layer reads its input from a
    conv kernel (packed, as in a real graph); `layer=False` leaves only that prologue."""
    rng = np.random.default_rng(0)
    q_in, q_out = QParams(1.0, ab, bool(graph.ranges[n.inputs[0]][0] < 0)), _out_qparams(graph, n)
    shapes, qps, nodes, first = {"x": (-1, *graph.shapes[n.inputs[0]][1:])}, {"x": q_in}, [], "x"
    if prologue:
        c, h, w = shapes["x"][1:]
        shapes["x0"], qps["x0"], first = (-1, PROLOGUE_CIN, h, w), QParams(1.0, 8, True), "x0"
        # clip to the 8-bit range even for A4: the same prologue for A4 and A8, so equal kernels hash equal
        nodes.append(_qnode("qconv", "prologue", "x0", "x", rng, (c, PROLOGUE_CIN, 1, 1), 8, 8,
                            QParams(1.0, 8, q_in.signed),
                            {"kernel": (1, 1), "strides": (1, 1), "pads": (0, 0, 0, 0), "dilations": (1, 1),
                             "group": 1}))
    if layer:
        shapes["y"], qps["y"] = (-1, *graph.shapes[n.output][1:]), q_out
        nodes.append(_qnode("q" + n.op, "layer", "x", "y", rng, n.params["W"].shape, wb, ab, q_out, n.attrs))
    return Graph(tuple(nodes), (first,), (nodes[-1].output,), shapes, {t: q.dtype for t, q in qps.items()},
                 qparams=qps, bits={nd.name: (nd.attrs["w_bits"], nd.attrs["a_bits"]) for nd in nodes})


def _layer_input(g: Graph) -> np.ndarray:
    t, q = g.inputs[0], g.qparams[g.inputs[0]]
    return np.random.default_rng(1).integers(q.lo, q.hi + 1, (1, *g.shapes[t][1:])).astype(g.dtypes[t])


def time_graph(g: Graph, exe, timing: Timing, dev=None) -> list[float]:
    """Seconds per call of graph g's executable at batch 1, one value per repeat: built here and run
    on this CPU, or (`dev` an RPC session's device) a module loaded on that session."""
    import tvm
    from tvm import relax

    dev = dev or tvm.cpu()
    vm = relax.VirtualMachine(exe, dev)
    x = tvm.runtime.tensor(_layer_input(g), dev)
    for _ in range(timing.warmup):
        vm["main"](x)
    res = vm.time_evaluator("main", dev, number=1, repeat=timing.repeat, min_repeat_ms=timing.min_repeat_ms)(x)
    return [float(r) for r in res.results]


class LatencyCache:
    def __init__(self, path: str):
        self.path, self.new = path, {}
        try:
            with open(path) as f:
                data = json.load(f)
            self.entries = data["entries"] if data.get("version") == CACHE_VERSION else {}
        except (OSError, ValueError, KeyError, AttributeError):  # missing or unreadable: start afresh
            self.entries = {}

    @staticmethod
    def key(target: dict, code: str, sig: dict, bits: tuple[int, int]) -> str:
        text = json.dumps({"target": target, "code": code, "layer": sig, "bits": list(bits)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def get(self, key: str) -> tuple[dict | None, str]:
        """(entry, "reused" from this run | "cached" from the file)"""
        return (self.new[key], "reused") if key in self.new else (self.entries.get(key), "cached")

    def put(self, key: str, entry: dict) -> None:
        self.new[key] = entry

    def save(self) -> None:
        if not self.new:
            return
        d = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(d, exist_ok=True)
        fresh = LatencyCache(self.path).entries  # merge with whatever another process wrote meanwhile
        fresh.update(self.new)
        fd, tmp = tempfile.mkstemp(prefix=".latency-", suffix=".json", dir=d)
        with os.fdopen(fd, "w") as f:
            json.dump({"version": CACHE_VERSION, "entries": fresh}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


class Meter:
    """Latency of one layer at one candidate: from the cache, shared with an identical kernel of
    another candidate of the same layer, or built and timed (then cached)."""

    def __init__(self, graph: Graph, spec, path: str, timing: Timing, rpc: str | None = None):
        self.g, self.spec, self.timing, self.cache, self.rpc = graph, spec, timing, LatencyCache(path), rpc
        self.code = code_fingerprint(os.environ.get("DYADIC_KERNELS", ""))
        self.where = f"measured on {spec.name}" + (f" ({spec.tvm_target['mcpu']})" if "mcpu" in spec.tvm_target else "")
        if rpc:
            self.where += f" over TVM RPC at {rpc}"
        self._sess = None
        self.counts = {"measured": 0, "shared": 0, "reused": 0, "cached": 0, "baselines": 0, "modelled": 0}
        self.lowered: dict = {}

    def _key(self, sig: dict, bits) -> str:
        where = {**self.spec.describe(), "rpc": self.rpc} if self.rpc else self.spec.describe()
        return self.cache.key(where, self.code, sig, bits)

    def _lower(self, n: Node, bits, prologue: bool, layer: bool = True):
        k = (n.name, bits, prologue, layer)
        if k not in self.lowered:
            import tvm_ffi

            from dyadic.backend.lower import lower_to_relax

            g = one_node_graph(self.g, n, *bits, prologue=prologue, layer=layer)
            mod = lower_to_relax(g, self.spec)
            self.lowered = {kk: v for kk, v in self.lowered.items() if kk[0] == n.name}  # this layer's only
            self.lowered[k] = (g, mod, tvm_ffi.structural_hash(mod))
        return self.lowered[k]

    def _time(self, g: Graph, mod) -> list[float]:
        if not self.rpc:
            return time_graph(g, self.spec.build(mod).executable, self.timing)
        from dyadic.runtime import remote

        if self._sess is None:
            self._sess = remote.connect(self.rpc)
        built = self.spec.build(mod)
        with tempfile.TemporaryDirectory(prefix="dyadic-layer-") as tmp:
            so = os.path.join(tmp, "layer.so")
            self.spec.export(built, so)
            try:
                lib, dev = remote.load_remote(self._sess, so, self.spec.kind)
                return time_graph(g, lib, self.timing, dev)
            except ToolchainError:
                raise
            except Exception as e:  # noqa: BLE001
                raise ToolchainError(f"timing a layer over RPC at {self.rpc} failed: "
                                     f"{str(e).strip().splitlines()[-1]}") from None

    def latency(self, n: Node, bits, done: dict) -> dict:
        from dyadic.passes.estimate_sensitivity import CANDIDATE_NAMES

        bits_of = {name: b for b, name in CANDIDATE_NAMES.items()}
        sig, pro = layer_signature(self.g, n), is_depthwise(self.g, n)
        key = self._key(sig, bits)
        hit, how = self.cache.get(key)
        if hit is None:
            g, mod, h = self._lower(n, bits, pro)
            entry = {"target": self.spec.name, "layer": sig, "bits": list(bits)}
            twin = next((c for c in done if self._lower(n, bits_of[c], pro)[2] == h), None)
            if twin is not None:
                hit, how = {**entry, "latency_s": done[twin]["latency_s"], "shared_with": twin}, "shared"
            else:
                reps = self._time(g, mod)
                hit, how = {**entry, "latency_s": float(np.median(reps)), "repeats_s": reps,
                            "measured_at": time.time()}, "measured"
                if pro:
                    base = self._baseline(n)
                    hit.update(with_prologue_s=hit["latency_s"], prologue_s=base,
                               latency_s=max(hit["latency_s"] - base, 0.01 * hit["latency_s"]))
            self.cache.put(key, hit)
        self.counts[how] += 1
        out = {"latency_s": hit["latency_s"], "latency_source": self.where}
        if pro:
            out["latency_source"] += "; after a 1x1 conv prologue (the input arrives from a conv kernel), minus it"
        if hit.get("shared_with"):
            out["shared_with"] = hit["shared_with"]
            out["latency_source"] += (f"; same compiled kernel as {hit['shared_with']} "
                                      "(A4 and A8 activations share the 8-bit container)")
        return out

    def _baseline(self, n: Node) -> float:
        """Median seconds of the prologue alone (its output is the graph output; the same for A4 and A8)."""
        sig = {"op": "prologue", "input": [1, *self.g.shapes[n.inputs[0]][1:]],
               "in_signed": bool(self.g.ranges[n.inputs[0]][0] < 0)}
        key = self._key(sig, (8, 8))
        hit, _ = self.cache.get(key)
        if hit is None:
            g, mod, _ = self._lower(n, (8, 8), True, layer=False)
            reps = self._time(g, mod)
            hit = {"target": self.spec.name, "layer": sig, "latency_s": float(np.median(reps)), "repeats_s": reps}
            self.cache.put(key, hit)
            self.counts["baselines"] += 1
        return hit["latency_s"]
