"""`dyadic profile BUILD`: where one run of a compiled library spends its time (`dyadic.runtime.profile`)."""
from __future__ import annotations

import json


def add_subparser(sub) -> None:
    p = sub.add_parser("profile", help="time one run of a build by function: dyadic's kernels vs the rest",
                       description="Run a host build on random in-range integer inputs and time every function "
                       "the VM calls (TVM's VM instrument). Prints the share of the run spent outside dyadic's "
                       "own kernels (TVM's generic lowering, the VM's allocation and dispatch), the generic ops "
                       "by time and the slowest functions.")
    p.add_argument("build", help="a host build directory from `dyadic compile`")
    p.add_argument("--threads", type=int, default=1, help="threads (default 1)")
    p.add_argument("--batch", type=int, default=1, help="batch size where the build's batch is dynamic (default 1)")
    p.add_argument("--iters", type=int, default=20, help="timed runs, plain and instrumented (default 20)")
    p.add_argument("--json", help="also write the profile to this file")


def cmd(a) -> int:
    from dyadic.core.errors import DyadicError
    from dyadic.core.plan_schema import read_plan
    from dyadic.runtime.profile import format_profile, profile

    if a.threads < 1 or a.batch < 1 or a.iters < 1:
        raise DyadicError("--threads, --batch and --iters must be >= 1")
    kind = str(read_plan(a.build).get("target", {}).get("kind", "host"))
    if kind != "host":
        raise DyadicError(f"{a.build} is a {kind!r} build: `dyadic profile` runs host builds on this CPU")
    prof = profile(a.build, threads=a.threads, batch=a.batch, iters=a.iters)
    print(format_profile(prof))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(prof.as_dict(), f, indent=1)
    return 0
