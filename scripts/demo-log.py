#!/usr/bin/env python3
"""Writes a demo robot log (CSV, one row per sample) for docs/data.md's walk-through: a
small vehicle flying figure-eights in constant winds of 0, 4, 8 and 12 m/s, three flights
per wind. Inputs: velocity (vx, vz) and a thrust command u; targets: the residual
aerodynamic force (fx, fz) the nominal model misses, quadratic drag in the air velocity
plus a per-flight offset. Standard library only; seeded, so the log is the same each run.

    python3 scripts/demo-log.py --out demo-log.csv
"""

import argparse
import csv
import math
import random


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--samples", type=int, default=1000, help="samples per flight (50 Hz)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    with open(a.out, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "wind", "flight", "vx", "vz", "u", "fx", "fz"])
        flight = 0
        for wind in (0, 4, 8, 12):
            for _ in range(3):
                flight += 1
                drag = 0.3 * (1 + 0.2 * rng.uniform(-1, 1))  # the airframe, per flight
                offset = (rng.gauss(0, 0.2), rng.gauss(0, 0.2))
                speed = 1.0 + 0.5 * rng.random()
                for i in range(a.samples):
                    t = i / 50.0
                    vx = 1.25 * speed * math.cos(speed * t)
                    vz = 1.5 * speed * math.cos(2 * speed * t)
                    u = 9.81 + 2.0 * math.sin(3 * t) + rng.gauss(0, 0.1)
                    ax, az = vx - wind, vz  # air velocity
                    air = math.hypot(ax, az)
                    fx = -drag * air * ax + offset[0] + 0.02 * u * wind / 12 + rng.gauss(0, 0.05)
                    fz = -drag * air * az + offset[1] + rng.gauss(0, 0.05)
                    w.writerow([f"{t:.2f}", wind, flight] + [f"{v:.5f}" for v in (vx, vz, u, fx, fz)])


if __name__ == "__main__":
    main()
