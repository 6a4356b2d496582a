"""Human-readable summary of a plan (printed at the end of `dyadic compile`)."""
from __future__ import annotations


def summary(plan: dict) -> str:
    rows = [f"{'layer':<28} {'op':<9} {'bits':<6} {'out':<6} {'out scale':>11}"]
    weights = 0
    for l in plan["layers"]:
        if l["op"] in ("qconv", "qdense"):
            n = 1
            for d in l["weight_shape"]:
                n *= d
            weights += n * l["w_bits"] // 8
            bits = f"W{l['w_bits']}A{l['a_bits']}"
            rows.append(f"{l['name'][:28]:<28} {l['op']:<9} {bits:<6} {l['out']['dtype']:<6} {l['out']['scale']:>11.4g}")
    t = plan.get("timings_s", {})
    tgt = plan["target"]
    # cross targets (issue 5): name the preset, say whether the self-check ran, list int8 instructions
    name = tgt["tvm"].get("mcpu", "") if tgt.get("kind", "host") == "host" else tgt["preset"]
    check = plan.get("self_check", "bit-exact")
    rows.append(f"{sum(l['op'] in ('qconv', 'qdense') for l in plan['layers'])} weighted layers, "
                f"{weights / 1024:.1f} KiB of weights, target {name}, "
                f"compiled in {t.get('total', 0):.1f}s (build {t.get('build', 0):.1f}s), "
                + ("bit-exact vs int64 reference: yes" if check.startswith("bit-exact") else f"self-check {check}"))
    if tgt.get("instructions"):
        rows.append("int8 instructions: " + ", ".join(f"{k} {v}" for k, v in tgt["instructions"].items()))
    return "\n".join(rows)
