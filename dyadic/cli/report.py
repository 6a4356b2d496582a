"""Human-readable summary of a plan (printed at the end of `dyadic compile`)."""
from __future__ import annotations


def summary(plan: dict) -> str:
    mixed = any("sensitivity" in l for l in plan["layers"])
    rows = [f"{'layer':<28} {'op':<9} {'bits':<6} {'out':<6} {'out scale':>11}"
            + (f" {'Tr(H)/n ± se':>20} {'Ω chosen':>10} {'bytes':>8} {'lat us':>8}" if mixed else "")]
    weights = 0
    for l in plan["layers"]:
        if l["op"] in ("qconv", "qdense"):
            n = 1
            for d in l["weight_shape"]:
                n *= d
            weights += n * (l["w_bits"] if l["w_bits"] <= 8 else 16) // 8  # 9-16-bit weights are int16
            bits = f"W{l['w_bits']}A{l['a_bits']}"  # the planned candidate (mixed precision's keys)
            ins = l.get("in") or [{}]
            shown = f"W{l['w_bits']}A{ins[0].get('bits', l['a_bits'])}"  # the input as quantized (16-bit codes narrowed)
            row = f"{l['name'][:28]:<28} {l['op']:<9} {shown:<6} {l['out']['dtype']:<6} {l['out']['scale']:>11.4g}"
            if "sensitivity" in l:
                sens, cost = l["sensitivity"], l.get("costs", {}).get(bits, {})
                row += (f" {sens['trace_w']:>10.3g} ± {sens['trace_w_se']:<7.2g} {sens['omega'][bits]:>10.3g}"
                        f" {cost.get('bytes', 0):>8} {1e6 * cost.get('latency_s', 0):>8.1f}")
            rows.append(row)
    t = plan.get("timings_s", {})
    tgt = plan["target"]
    # cross targets (issue 5): name the preset, say whether the self-check ran, list int8 instructions
    name = tgt["tvm"].get("mcpu", "") if tgt.get("kind", "host") == "host" else tgt["preset"]
    check = plan.get("self_check", "bit-exact")
    rows.append(f"{sum(l['op'] in ('qconv', 'qdense') for l in plan['layers'])} weighted layers, "
                f"{weights / 1024:.1f} KiB of weights, target {name}, "
                f"compiled in {t.get('total', 0):.1f}s (build {t.get('build', 0):.1f}s), "
                + ("bit-exact vs int64 reference: yes" if check.startswith("bit-exact") else f"self-check {check}"))
    if plan.get("fidelity"):
        from dyadic.core.fidelity import fidelity_lines

        rows += fidelity_lines(plan["fidelity"], plan["fidelity"].get("wide_activations", "none"))
    if tgt.get("instructions"):
        rows.append("int8 instructions: " + ", ".join(f"{k} {v}" for k, v in tgt["instructions"].items()))
    dm = tgt.get("dot_macs")
    if dm and dm.get("isa"):
        parts = ", ".join(f"{k} {v:,}" for k, v in dm.get("by_instruction", {}).items())
        rows.append(f"MACs on int8 dot/MMA instructions: {dm['macs']:,} of {dm['total_macs']:,} per image "
                    f"({100 * dm['fraction']:.1f} %: {parts})")
    cov = tgt.get("kernel_coverage")
    if cov and cov.get("generic_nodes"):
        rest = ", ".join(f"{k} x{v}" for k, v in cov["generic_ops"].items())
        rows.append(f"nodes on dyadic's kernels: {cov['kernel_nodes']} of {cov['kernel_nodes'] + cov['generic_nodes']}"
                    f"; TVM's generic lowering: {rest}")
    if cov and cov.get("families"):
        rows.append("conv/dense kernels: " + ", ".join(f"{k} {v}" for k, v in cov["families"].items())
                    + (" (AMX: tile-data permission requested at load)" if tgt.get("requires", {}).get("amx_tile_data")
                       else ""))
    ilp = plan.get("bit_selection", {}).get("ilp")
    if ilp:
        used = ", ".join(f"{k} {v['used']:.4g} of {v['limit']:.4g} (all-int8 {v['all_int8']:.4g})"
                         for k, v in ilp.get("budgets", {}).items() if v.get("limit") is not None)
        rows.append(f"ILP: {ilp.get('status')}, ΣΩ = {ilp.get('objective', 0):.4g}" + (f"; {used}" if used else ""))
    return "\n".join(rows)
