"""Hold the `fluid` serving tier to `fast` on a fixed set of workloads (issue 5's table).

    python tools/fluid_validation.py            # prints the table
Each workload runs in both tiers with the same scenario and seed; errors are fluid / fast - 1.
The workloads, metrics, tolerances and the comparison live in aifactory_sim/validation/fluid.py
(the tests and docs/gen_fluid.py import them from there); this script prints them.
"""

from __future__ import annotations

import sys

from aifactory_sim.validation.fluid import METRICS, TOLERANCE, WORKLOADS, compare, metrics

#: tools/factory_tiers.py imports METRICS, TOLERANCE and metrics from here.
__all__ = ["METRICS", "TOLERANCE", "WORKLOADS", "compare", "metrics"]


def main() -> int:
    names = sys.argv[1:] or list(WORKLOADS)
    print(f"{'workload':<28}" + "".join(f"{k:>14}" for k in METRICS) + "   fast s  fluid s")
    worst = 0.0
    for name in names:
        row = compare(name)
        cells = []
        for k in METRICS:
            e = row["error"][k]
            flag = "*" if abs(e) > TOLERANCE[k] else " "
            cells.append(f"{e:>+13.1%}{flag}")
            worst = max(worst, abs(e) / TOLERANCE[k])
        print(f"{name:<28}" + "".join(cells)
              + f"{row['fast_wall_s']:>9.1f}{row['fluid_wall_s']:>9.2f}")
        print(f"{'  fast':<28}" + "".join(f"{row['fast'][k]:>14.4g}" for k in METRICS))
    print(f"worst error / tolerance: {worst:.2f} (* outside)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
