"""Coverage and error rates of the compare stage's interval and verdicts on planted-effect designs.

Per condition of ``study.simulation.CONDITIONS``: n studies with no difference and n with a
difference equal to the equivalence margin; prints the 95 % interval's coverage (both sets), the
share of false "different" verdicts (better / worse at 0 pp), of false "equivalent" verdicts (at the
margin), of zero-width intervals, of df < 1, and the median half-width.

  python benchmarks/stats_simulation.py --path table   # inference.judge per simulated clip table
  python benchmarks/stats_simulation.py --path batch   # the vectorised model the tests use

``--path table`` runs through the public per-table API, so it measures whatever implementation is
checked out (the figures before and after the variance model changed were measured this way).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from common import save

from transfer_freezing.study import inference, simulation


def _table_path(cond: simulation.Condition, batch: simulation.Batch) -> dict[str, np.ndarray]:
    rows = [inference.judge(simulation.to_clip_table(batch, i), "mode", "ref", margin=cond.margin)
            for i in range(batch.correct.shape[0])]
    keys = ("estimate", "low", "high", "se", "dof", "verdict")
    return {key: np.array([r[key] for r in rows]) for key in keys}


def _batch_path(cond: simulation.Condition, batch: simulation.Batch) -> dict[str, np.ndarray]:
    fit = inference.design_variance(batch.diff, batch.fold)
    judged = inference.batch_verdicts(fit, cond.margin)
    return {"estimate": fit.estimate, "se": fit.se, "dof": fit.dof, **judged}


PATHS = {"table": _table_path, "batch": _batch_path}


def measure(cond: simulation.Condition, n: int, path: str) -> dict:
    """The rates of one condition: ``n`` studies at 0 pp and ``n`` at the margin."""
    rng = np.random.default_rng(cond.rng_seed)
    out = {}
    for label, delta in (("null", 0.0), ("margin", cond.margin)):
        batch = simulation.simulate(cond, delta, n, rng)
        out[label] = PATHS[path](cond, batch)
        out[label]["covered"] = (out[label]["low"] <= delta) & (delta <= out[label]["high"])
    both = {k: np.concatenate([out["null"][k], out["margin"][k]]) for k in ("covered", "low", "high", "dof")}
    width = both["high"] - both["low"]
    return {
        "condition": cond.name,
        "n_per_delta": n,
        "coverage": float(np.mean(both["covered"])),
        "false_different": float(np.mean(np.isin(out["null"]["verdict"], ["better", "worse"]))),
        "false_equivalent": float(np.mean(out["margin"]["verdict"] == "equivalent")),
        "zero_width": float(np.mean(~(width > 0))),
        "dof_below_1": float(np.mean(both["dof"] < 1)),
        "median_half_width": float(np.median(width) / 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--path", choices=sorted(PATHS), default="batch")
    parser.add_argument("--n", type=int, default=1000, help="simulations per condition and difference")
    parser.add_argument("--label", default="", help="suffix of the result file (e.g. before / after)")
    args = parser.parse_args(argv)
    results, start = [], time.perf_counter()
    heads = ("cover", "F-diff", "F-eq", "zero-w", "df<1")
    print(f"{'condition':55s} " + " ".join(f"{h:>6s}" for h in heads) + f" {'½width':>7s}")
    for cond in simulation.CONDITIONS:
        r = measure(cond, args.n, args.path)
        results.append(r)
        rates = ("coverage", "false_different", "false_equivalent", "zero_width", "dof_below_1")
        print(f"{cond.name:55s} " + " ".join(f"{100 * r[k]:6.1f}" for k in rates)
              + f" {r['median_half_width']:7.2f}", flush=True)
    seconds = time.perf_counter() - start
    print(f"{seconds:.1f} s")
    name = f"stats_simulation-{args.path}" + (f"-{args.label}" if args.label else "")
    save(name, {"path": args.path, "seconds": seconds, "conditions": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
