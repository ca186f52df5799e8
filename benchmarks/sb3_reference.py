"""Reference numbers from Stable-Baselines3 PPO on single Darkroom goals (issue #3).

Why this exists
---------------
Our JAX PPO (``dicp_jax/sources/ppo.py``) sometimes "collapses" late on some Darkroom goals: the
return falls back to ~0 after it has been high. This script runs the real SB3 PPO at the
same settings on the same environment, so we can tell whether such collapses are a property
of PPO at these hyper-parameters (SB3 shows them too) or a bug in our re-implementation.

It is a standalone tool: the package does not import it and no test uses it. It needs
torch / stable-baselines3 / gymnasium, which are NOT project dependencies. Install them in
a separate virtual environment so the project's ``.venv`` stays untouched::

    python3 -m venv /tmp/sb3venv
    /tmp/sb3venv/bin/pip install torch==2.13.0 stable-baselines3 gymnasium numpy   # CPU torch
    /tmp/sb3venv/bin/python benchmarks/sb3_reference.py \\
        --goals 8,1 6,1 8,8 --seeds 0 1 --out benchmarks/results/sb3_reference.json

Setup (mirrors ``envs/darkroom.py`` / ``envs/grid.py``)
-------------------------------------------------------
* 9x9 grid, start (4, 4), horizon 20: the episode is *truncated* (never terminated) at step
  20, so SB3 bootstraps the last step with V(terminal observation).
* Actions use the project's table ``MOVES``: 0: x+1, 1: x-1, 2: y+1, 3: y-1, 4: stay;
  positions are clipped to the grid.
* Reward 1.0 on every step that ends on the goal cell, else 0.
* Observation: the position as ``float32[2]`` (raw integers, no normalisation).
* PPO("MlpPolicy", n_steps=20, batch_size=50, n_epochs=20, lr=3e-4, gamma=0.99,
  gae_lambda=0.95, clip_range=0.2, ent_coef=0, vf_coef=0.5, max_grad_norm=0.5), other
  arguments SB3 defaults, on a DummyVecEnv of 100 copies for 100,000 env steps
  (50 episodes per copy). Each (goal, seed) runs in its own process, 1 torch thread each.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time

import numpy as np

GRID = 9
HORIZON = 20
START = (4, 4)
N_ENVS = 100
EPISODES = 50
TOTAL_STEPS = N_ENVS * HORIZON * EPISODES  # 100,000
# Same table as envs/grid.py: rows are actions, columns (dx, dy).
MOVES = np.array([[1, 0], [-1, 0], [0, 1], [0, -1], [0, 0]], dtype=np.int64)

PPO_KWARGS = dict(
    n_steps=20,
    batch_size=50,
    n_epochs=20,
    learning_rate=3e-4,
    gamma=0.99,
    gae_lambda=0.95,
    clip_range=0.2,
    ent_coef=0.0,
    vf_coef=0.5,
    max_grad_norm=0.5,
)


def optimal_return(goal: tuple[int, int]) -> int:
    dist = abs(goal[0] - START[0]) + abs(goal[1] - START[1])
    return max(0, min(HORIZON, HORIZON + 1 - dist))


def make_env_class():
    import gymnasium as gym

    class Darkroom(gym.Env):
        """One Darkroom task (fixed goal) as a gymnasium env."""

        metadata = {"render_modes": []}

        def __init__(self, goal: tuple[int, int]):
            self.goal = np.asarray(goal, dtype=np.int64)
            self.observation_space = gym.spaces.Box(0, GRID - 1, (2,), np.float32)
            self.action_space = gym.spaces.Discrete(len(MOVES))
            self.pos = np.asarray(START, dtype=np.int64)
            self.t = 0

        def reset(self, *, seed=None, options=None):
            super().reset(seed=seed)
            self.pos = np.asarray(START, dtype=np.int64)
            self.t = 0
            return self.pos.astype(np.float32), {}

        def step(self, action):
            a = int(np.clip(int(action), 0, len(MOVES) - 1))
            self.pos = np.clip(self.pos + MOVES[a], 0, GRID - 1)
            self.t += 1
            reward = 1.0 if bool(np.all(self.pos == self.goal)) else 0.0
            truncated = self.t >= HORIZON
            return self.pos.astype(np.float32), reward, False, truncated, {}

    return Darkroom


def run_one(job: tuple[tuple[int, int], int]) -> dict:
    """Train SB3 PPO on one goal with one seed; return per-copy episode returns."""
    goal, seed = job
    import torch

    torch.set_num_threads(1)
    import stable_baselines3
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    Darkroom = make_env_class()

    class Recorder(BaseCallback):
        """Sums raw rewards per copy and episode; checks SB3's time-limit bootstrap."""

        def __init__(self):
            super().__init__()
            self.returns = np.zeros((N_ENVS, EPISODES), dtype=np.float64)
            self.ep_idx = np.zeros(N_ENVS, dtype=np.int64)
            self.acc = np.zeros(N_ENVS, dtype=np.float64)
            self.step_in_rollout = 0
            self.last_raw = None
            self.last_terminal = None
            self.max_bootstrap_err = 0.0
            self.truncations_seen = 0

        def _on_step(self) -> bool:
            rewards = np.asarray(self.locals["rewards"], dtype=np.float64)  # raw, pre-bootstrap
            dones = self.locals["dones"]
            infos = self.locals["infos"]
            self.acc += rewards
            self.step_in_rollout += 1
            for i in np.flatnonzero(dones):
                info = infos[i]
                # Episodes must end only by truncation at the horizon, and SB3 must see it.
                assert info.get("TimeLimit.truncated", False), info
                assert info.get("terminal_observation") is not None, info
                assert self.step_in_rollout == HORIZON, self.step_in_rollout
                self.truncations_seen += 1
                self.returns[i, self.ep_idx[i]] = self.acc[i]
                self.ep_idx[i] += 1
                self.acc[i] = 0.0
            if dones.any():
                assert dones.all()  # copies run in lockstep
                self.last_raw = rewards.copy()
                self.last_terminal = np.stack(
                    [infos[i]["terminal_observation"] for i in range(N_ENVS)])
            return True

        def _on_rollout_end(self) -> None:
            # n_steps == horizon: every rollout is exactly one episode per copy, so its last
            # row must hold raw reward + gamma * V(terminal obs) (SB3's timeout bootstrap).
            assert self.step_in_rollout == HORIZON and self.last_raw is not None
            buf = self.model.rollout_buffer
            with torch.no_grad():
                obs = torch.as_tensor(self.last_terminal, dtype=torch.float32)
                v = self.model.policy.predict_values(obs).numpy().reshape(-1)
            expected = self.last_raw + self.model.gamma * v
            err = float(np.max(np.abs(buf.rewards[-1].reshape(-1) - expected)))
            self.max_bootstrap_err = max(self.max_bootstrap_err, err)
            assert err < 1e-4, err
            self.step_in_rollout = 0
            self.last_raw = None

    t0 = time.time()
    vec_env = DummyVecEnv([lambda g=goal: Darkroom(g) for _ in range(N_ENVS)])
    model = PPO("MlpPolicy", vec_env, seed=seed, device="cpu", verbose=0, **PPO_KWARGS)
    rec = Recorder()
    model.learn(total_timesteps=TOTAL_STEPS, callback=rec)
    assert (rec.ep_idx == EPISODES).all(), rec.ep_idx
    opt = optimal_return(goal)
    mean_curve = rec.returns.mean(axis=0)
    return {
        "goal": list(goal),
        "seed": seed,
        "optimal_return": opt,
        "mean_return": mean_curve.tolist(),
        "fraction_of_optimal": (mean_curve / opt).tolist(),
        "truncations_seen": rec.truncations_seen,
        "max_bootstrap_check_error": rec.max_bootstrap_err,
        "num_timesteps": int(model.num_timesteps),
        "wall_s": time.time() - t0,
        "versions": {"stable_baselines3": stable_baselines3.__version__,
                     "torch": torch.__version__},
    }


def summarize(r: dict) -> dict:
    f = np.asarray(r["fraction_of_optimal"])
    hit = np.flatnonzero(f >= 0.9)
    return {
        "first_ep_ge_90": int(hit[0]) + 1 if hit.size else None,
        "at": {e: float(f[e - 1]) for e in (10, 20, 30, 40, 50)},
        "last5": float(f[-5:].mean()),
        "min_20_50": float(f[19:].min()),
    }


def format_row(r: dict) -> str:
    s = summarize(r)
    first = "-" if s["first_ep_ge_90"] is None else str(s["first_ep_ge_90"])
    at = " ".join(f"{s['at'][e]:5.2f}" for e in (10, 20, 30, 40, 50))
    g = f"({r['goal'][0]},{r['goal'][1]})"
    return (f"{g:7s} {r['seed']:4d} {first:>6s}  {at}  {s['last5']:5.2f} "
            f"{s['min_20_50']:6.2f} {r['wall_s']:6.0f}")


HEADER = "goal    seed  1st90  ep10  ep20  ep30  ep40  ep50  last5 min20+  wall_s"


def parse_goal(text: str) -> tuple[int, int]:
    x, y = (int(v) for v in text.split(","))
    if not (0 <= x < GRID and 0 <= y < GRID):
        raise argparse.ArgumentTypeError(f"goal {text} outside the {GRID}x{GRID} grid")
    return (x, y)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--goals", type=parse_goal, nargs="+", default=[(8, 1), (6, 1), (8, 8)])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    p.add_argument("--out", default="benchmarks/results/sb3_reference.json")
    args = p.parse_args()

    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    jobs = [(g, s) for g in args.goals for s in args.seeds]
    t0 = time.time()
    results = []
    print(HEADER, flush=True)
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes=min(args.workers, len(jobs)), maxtasksperchild=1) as pool:
        for r in pool.imap_unordered(run_one, jobs):
            results.append(r)
            print(format_row(r), flush=True)
    order = {j: i for i, j in enumerate(jobs)}
    results.sort(key=lambda r: order[(tuple(r["goal"]), r["seed"])])
    total = time.time() - t0
    print("\nfinal (fractions of the optimal return, mean over 100 copies):")
    print(HEADER)
    for r in results:
        print(format_row(r))
    print(f"total wall time {total:.0f}s")

    out = {
        "description": "SB3 PPO on single Darkroom goals; reference for issue #3 "
        "(compare with dicp_jax/sources/ppo.py). Curves are per-episode means over the 100 copies.",
        "settings": {
            "grid": GRID,
            "horizon": HORIZON,
            "start": list(START),
            "n_envs": N_ENVS,
            "episodes_per_copy": EPISODES,
            "total_timesteps": TOTAL_STEPS,
            "policy": "MlpPolicy",
            "ppo_kwargs": PPO_KWARGS,
            "moves": MOVES.tolist(),
        },
        "total_wall_s": total,
        "runs": [dict(r, summary=summarize(r)) for r in results],
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
