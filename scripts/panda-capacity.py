#!/usr/bin/env python3
"""How well can an MLP on panda-payload's inputs represent the payload's torque regressor?

A diagnostic for docs/robots.md, not part of the product. It fits, *supervised*, an MLP
from the family's 28 inputs (sin q, cos q, qd, qdd) to the exact regressor Y(x) (7 joints x
10 inertial parameters, whitened by the payload prior's second moment), which is the best
case of a meta-learned model with a linear adapted head: it is told the 70 functions
instead of inferring them from tasks. The error it reports is the expected per-joint torque
MSE of a task drawn from the prior, in N m^2, before sensor noise: a floor, for that body
width and training budget, of what meta-training can reach.

The family's trajectories and payload prior are re-implemented here from
trainer/src/tasks/robots/panda.rs (the reference): if the family changes, change them too.

Needs: pip install mujoco==3.17.0 numpy torch. Reproduce docs/robots.md's table:
    scripts/panda-capacity.py --hidden 64,64 128,128 256,256 128,128,128 64,64,64
(200 000 states, 40 000 Adam steps of 256 with cosine decay, one thread, seed 0.)
"""
import argparse
import time
from pathlib import Path

import mujoco
import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
JOINTS = 7


class Panda:
    """The repository's mesh-free Panda with the payload body at the end-effector site."""

    def __init__(self, rng):
        self.m = mujoco.MjModel.from_xml_path(str(ROOT / "robots/panda/panda.xml"))
        self.d = mujoco.MjData(self.m)
        self.b = self.m.body("payload").id
        # The payload's inertial frame is set at run time: kinematics must not assume the
        # body frame (the bug docs/robots.md describes).
        self.m.body_sameframe[self.b] = 0
        self.limits = self.m.jnt_range[:JOINTS].copy()
        self.probes = [
            (rng.uniform(0.5, 3), rng.uniform(-0.1, 0.1, 3), rng.uniform(0.005, 0.05, 3))
            for _ in range(10)
        ]
        phi = np.array([params(*p) for p in self.probes]).T
        self.phi_inv = np.linalg.inv(phi)

    def set_payload(self, mass, com, diag):
        m, b = self.m, self.b
        m.body_mass[b], m.body_ipos[b], m.body_inertia[b] = mass, com, diag
        m.body_iquat[b] = [1, 0, 0, 0]

    def torque(self, q, qd, qdd):
        d = self.d
        d.qpos[:] = 0
        d.qvel[:] = 0
        d.qacc[:] = 0
        d.qpos[:JOINTS], d.qvel[:JOINTS], d.qacc[:JOINTS] = q, qd, qdd
        mujoco.mj_inverse(self.m, d)
        return d.qfrc_inverse[:JOINTS].copy()

    def regressor(self, q, qd, qdd):
        """Y with torque(payload p) - torque(no payload) = Y p, from 10 probe payloads."""
        self.set_payload(0, [0, 0, 0], [0, 0, 0])
        base = self.torque(q, qd, qdd)
        cols = []
        for p in self.probes:
            self.set_payload(*p)
            cols.append(self.torque(q, qd, qdd) - base)
        self.set_payload(0, [0, 0, 0], [0, 0, 0])
        return np.array(cols).T @ self.phi_inv


def params(mass, com, diag):
    """Mass, mass times COM, inertia about the body origin (xx yy zz xy xz yz)."""
    com = np.asarray(com)
    io = np.diag(diag) + mass * (com @ com * np.eye(3) - np.outer(com, com))
    return np.array([mass, *(mass * com), io[0, 0], io[1, 1], io[2, 2], io[0, 1], io[0, 2], io[1, 2]])


def random_payload(rng):
    """The family's prior: 0-3 kg, COM in a 10 cm ball, a solid box of sides 2-20 cm."""
    mass = rng.uniform(0, 3)
    while True:
        com = rng.uniform(-0.1, 0.1, 3)
        if com @ com <= 0.01:
            break
    s = rng.uniform(0.02, 0.2, 3)
    box = mass / 12 * np.array([s[1] ** 2 + s[2] ** 2, s[0] ** 2 + s[2] ** 2, s[0] ** 2 + s[1] ** 2])
    rot, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    ic = rot @ np.diag(box) @ rot.T
    io = ic + mass * (com @ com * np.eye(3) - np.outer(com, com))
    return np.array([mass, *(mass * com), io[0, 0], io[1, 1], io[2, 2], io[0, 1], io[0, 2], io[1, 2]])


def trajectory(limits, rng):
    """Per joint a centre and three sines inside the limits (5% margins), <= 1.5 rad/s."""
    span = limits[:, 1] - limits[:, 0]
    lo, hi = limits[:, 0] + 0.05 * span, limits[:, 1] - 0.05 * span
    centre = rng.uniform(lo, hi)
    room = np.minimum(centre - lo, hi - centre) * rng.uniform(0.3, 1, JOINTS)
    w = rng.uniform(0.2, 1, (JOINTS, 3))
    amp = room[:, None] * w / w.sum(1, keepdims=True)
    freq = rng.uniform(0.2, 1.2, (JOINTS, 3))
    phase = rng.uniform(0, 2 * np.pi, (JOINTS, 3))
    amp *= np.minimum(1, 1.5 / (amp * freq).sum(1))[:, None]

    def state(s):
        arg = freq * s + phase
        return (
            centre + (amp * np.sin(arg)).sum(1),
            (amp * freq * np.cos(arg)).sum(1),
            -(amp * freq * freq * np.sin(arg)).sum(1),
        )

    return state


def dataset(n, rng):
    panda = Panda(rng)
    prior = np.array([random_payload(rng) for _ in range(20000)])
    whiten = np.linalg.cholesky(prior.T @ prior / len(prior))
    x, y = np.empty((n, 4 * JOINTS)), np.empty((n, JOINTS * 10))
    for i in range(n):
        if i % 20 == 0:
            state = trajectory(panda.limits, rng)
        q, qd, qdd = state(rng.uniform(0, 30))
        x[i] = np.concatenate([np.sin(q), np.cos(q), qd, qdd])
        y[i] = (panda.regressor(q, qd, qdd) @ whiten).ravel()
    return x.astype(np.float32), y.astype(np.float32)


def fit(x, y, hidden, steps, held_out):
    torch.manual_seed(0)
    n = len(x) - held_out
    mu, sd = x[:n].mean(0), x[:n].std(0) + 1e-6
    x = (x - mu) / sd
    scale = float(y[:n].std(0).mean())
    xt, yt = torch.tensor(x[:n]), torch.tensor(y[:n] / scale)
    xv, yv = torch.tensor(x[n:]), torch.tensor(y[n:])
    layers, width = [], x.shape[1]
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.Tanh()]
        width = h
    net = torch.nn.Sequential(*layers, torch.nn.Linear(width, y.shape[1]))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-5)
    for _ in range(steps):
        idx = torch.randint(0, n, (256,))
        loss = ((net(xt[idx]) - yt[idx]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        err = ((net(xv) * scale - yv) ** 2).reshape(-1, JOINTS, 10).sum(2).mean(0)
    return err.mean().item(), err.sqrt().tolist()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", nargs="+", default=["64,64", "256,256"])
    ap.add_argument("--states", type=int, default=200_000)
    ap.add_argument("--held-out", type=int, default=20_000)
    ap.add_argument("--steps", type=int, default=40_000)
    args = ap.parse_args()
    torch.set_num_threads(1)
    t = time.time()
    x, y = dataset(args.states, np.random.default_rng(0))
    print(f"{args.states} states in {time.time() - t:.0f} s; signal RMS "
          f"{np.sqrt((y[-args.held_out:] ** 2).reshape(-1, JOINTS, 10).sum(2).mean()):.3f} N m")
    print("| body | parameters | torque RMSE, N m (per joint) |")
    print("|---|---|---|")
    for h in args.hidden:
        hidden = [int(v) for v in h.split(",")]
        t = time.time()
        mse, per_joint = fit(x, y, hidden, args.steps, args.held_out)
        count = sum(a * b + b for a, b in zip([28] + hidden, hidden + [70]))
        joints = ", ".join(f"{v:.3f}" for v in per_joint)
        print(f"| {h} tanh | {count} | {mse ** 0.5:.3f} ({joints}) | {time.time() - t:.0f} s", flush=True)


if __name__ == "__main__":
    main()
