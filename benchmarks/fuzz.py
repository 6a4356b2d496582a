"""Long fuzz runs of import + graph passes on mutated ONNX models (`tests/_mutate.py`).

    python benchmarks/fuzz.py [--count 5000] [--seed 0] [--workers 2] [--timeout 60] [--out results/fuzz.json]

Each mutation runs in a worker process; a worker that dies (a signal: SIGSEGV, SIGABRT from a C++
assert) or takes longer than --timeout is counted ("crash:SIG..." / "hang") and replaced, so one
bad mutation cannot stop the run. Prints the count of each outcome: "ok", "error:<DyadicError
subclass>" (a clean refusal), "bug:<exception>" (a bare Python exception: a dyadic bug), "crash",
"hang"; and the seeds of every bug, crash and hang, to reproduce with `tests/_mutate.py:mutant(seed)`.
"""
from __future__ import annotations

import argparse
import collections
import json
import multiprocessing as mp
import os
import signal
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))


def _worker(conn, workdir: str) -> None:
    import warnings

    warnings.simplefilter("ignore")
    from _mutate import mutant, run_one

    while True:
        seed = conn.recv()
        if seed is None:
            return
        kind, data, calib = mutant(seed)
        conn.send((seed, kind, run_one(data, calib, workdir, f"m{os.getpid()}.onnx")))


class _Slot:
    def __init__(self, ctx, workdir):
        self.parent, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker, args=(child, workdir), daemon=True)
        self.proc.start()
        child.close()
        self.seed = None
        self.started = 0.0

    def send(self, seed):
        self.seed, self.started = seed, time.monotonic()
        self.parent.send(seed)

    def kill(self):
        try:
            self.proc.kill()
        except Exception:  # noqa: BLE001
            pass
        self.proc.join(5)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--out", default=None, help="write counts and seeds as JSON")
    a = ap.parse_args(argv)
    ctx = mp.get_context("spawn")
    workdir = tempfile.mkdtemp(prefix="dyadic-fuzz-")
    seeds = list(range(a.seed, a.seed + a.count))
    counts: collections.Counter = collections.Counter()
    kinds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    examples: dict[str, list] = collections.defaultdict(list)
    slots = [_Slot(ctx, workdir) for _ in range(a.workers)]
    t0 = time.monotonic()
    todo = iter(seeds)
    for s in slots:
        s.send(next(todo))
    done = 0

    def record(seed, kind, outcome):
        nonlocal done
        key = outcome.split(":")[0] + (":" + outcome.split(":")[1] if outcome.startswith(("error", "bug", "accepted")) else "")
        counts[key] += 1
        kinds[kind][key.split(":")[0]] += 1
        if not outcome.startswith(("ok", "error")) and len(examples[key]) < 40:
            examples[key].append([seed, kind, outcome[:300]])
        done += 1
        if done % 500 == 0:
            print(f"{done}/{a.count} in {time.monotonic() - t0:.0f}s: {dict(counts)}", flush=True)

    active = len(slots)
    while active:
        for i, s in enumerate(slots):
            if s is None:
                continue
            result = None
            try:
                if s.parent.poll(0.05):
                    result = s.parent.recv()
            except (EOFError, OSError):
                result = "died"
            if result is None and s.proc.exitcode is not None:
                result = "died"
            if result is None and time.monotonic() - s.started > a.timeout:
                result = "hang"
            if result is None:
                continue
            if isinstance(result, tuple):
                record(*result)
            else:
                from _mutate import mutant

                kind = mutant(s.seed)[0]
                if result == "died":
                    s.proc.join(1)
                    code = s.proc.exitcode
                    name = signal.Signals(-code).name if code is not None and code < 0 else f"exit {code}"
                    record(s.seed, kind, f"crash:{name}")
                else:
                    record(s.seed, kind, "hang")
                s.kill()
                s = slots[i] = _Slot(ctx, workdir)
            nxt = next(todo, None)
            if nxt is None:
                s.parent.send(None)
                s.proc.join(5)
                slots[i] = None
                active -= 1
            else:
                s.send(nxt)
    wall = time.monotonic() - t0
    print(f"{a.count} mutations (seeds {a.seed}..{a.seed + a.count - 1}) in {wall:.0f}s with {a.workers} workers")
    for k, v in counts.most_common():
        print(f"  {k:32s} {v}")
    for k, ex in examples.items():
        print(f"{k}: seeds {[e[0] for e in ex]}")
        for e in ex[:3]:
            print(f"   {e}")
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"count": a.count, "seed": a.seed, "wall_s": round(wall, 1), "counts": dict(counts),
                       "by_kind": {k: dict(v) for k, v in kinds.items()}, "examples": examples}, f, indent=1)
    return 1 if any(k.startswith(("bug", "crash", "hang")) for k in counts) else 0


if __name__ == "__main__":
    sys.exit(main())
