"""Per-update cost of our DQN / DDPG / TD3 / SAC, both update backends, against Stable-Baselines3's.

For each algorithm both libraries get the same hidden layers, batch size and a replay buffer
filled with the same number of random transitions (``--fill`` steps of the environment, no
updates). Then each does ``--updates`` gradient updates at a time (``agent.train(n)`` /
``model.train(gradient_steps=n)``: replay sampling included, as in a run), ``--repeats`` times,
the variants interleaved so that they see the same machine load, and the median CPU time per
update (``time.process_time``; one torch thread) is reported with the ratio ours / SB3. On a
shared machine wall time swings with the neighbours' load; CPU time of one thread is steadier.

``fused`` is ours with ``update_backend=fused`` (the hand-written gradients and FlatAdam of
:mod:`classic_rl.fused`), ``autograd`` ours with ``update_backend=autograd`` (the autograd
definition, ``torch.optim.Adam``): the measurement behind the default backend (docs/benchmarks.md).

Examples::

    python scripts/bench_update.py                                  # dqn ddpg td3 sac, zoo nets
    python scripts/bench_update.py --algos sac --hidden 64,64 --repeats 9
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import gymnasium as gym  # noqa: E402
import torch  # noqa: E402

import classic_rl  # noqa: E402

ZOO_HIDDEN = {"dqn": [256, 256], "ddpg": [400, 300], "td3": [400, 300], "sac": [256, 256]}
"""rl-zoo3's hidden layers per algorithm (DQN: its Acrobot-v1 setting; the others: both libraries' default)."""
ZOO_BATCH = {"dqn": 128, "ddpg": 256, "td3": 256, "sac": 256}
DEFAULT_ENV = {"dqn": "Acrobot-v1", "ddpg": "Pendulum-v1", "td3": "Pendulum-v1", "sac": "Pendulum-v1"}


def build_ours(algo: str, env_id: str, hidden: list[int], batch_size: int, fill: int, backend: str) -> Callable:
    agent = classic_rl.make(algo, env_id, seed=0, hidden=hidden, batch_size=batch_size, learning_starts=fill,
                            update_backend=backend)
    agent.learn(total_steps=fill, progress=False)  # random actions until learning_starts: no updates
    return agent.train


def build_sb3(algo: str, env_id: str, hidden: list[int], batch_size: int, fill: int) -> Callable:
    from stable_baselines3 import DDPG, DQN, SAC, TD3

    cls = {"dqn": DQN, "ddpg": DDPG, "td3": TD3, "sac": SAC}[algo]
    model = cls("MlpPolicy", gym.make(env_id), learning_starts=fill, batch_size=batch_size, seed=0, device="cpu",
                policy_kwargs=dict(net_arch=list(hidden)), train_freq=fill, gradient_steps=0)
    model.learn(fill)
    return lambda n: model.train(gradient_steps=n, batch_size=batch_size)


def time_updates(train: Callable, n: int) -> float:
    """CPU milliseconds per update over ``n`` updates."""
    start = time.process_time()
    train(n)
    return (time.process_time() - start) / n * 1e3


def bench(algo: str, env_id: str, hidden: list[int], batch_size: int, fill: int, updates: int,
          repeats: int, with_sb3: bool) -> dict[str, float]:
    """Median CPU ms per update of each variant, measured interleaved."""
    variants = {"fused": build_ours(algo, env_id, hidden, batch_size, fill, "fused"),
                "autograd": build_ours(algo, env_id, hidden, batch_size, fill, "autograd")}
    if with_sb3:
        variants["sb3"] = build_sb3(algo, env_id, hidden, batch_size, fill)
    for train in variants.values():
        train(10)  # warm up: first-call allocations, optimizer state
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, train in variants.items():
            samples[name].append(time_updates(train, updates))
    return {name: statistics.median(values) for name, values in samples.items()}


def parse_hidden(text: str | None, algo: str) -> list[int]:
    if text is None or text == "zoo":
        return ZOO_HIDDEN[algo]
    try:
        return [int(h) for h in text.split(",")]
    except ValueError:
        raise SystemExit(f"--hidden must be 'zoo' or comma-separated sizes such as 400,300; got {text!r}") from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algos", nargs="+", default=["dqn", "ddpg", "td3", "sac"], choices=sorted(ZOO_HIDDEN))
    parser.add_argument("--env", default=None, help="one env for every algo (default: Acrobot-v1 for dqn, else Pendulum-v1)")
    parser.add_argument("--hidden", default="zoo", help="'zoo' (per algorithm) or sizes such as 64,64")
    parser.add_argument("--batch-size", type=int, default=None, help="default: rl-zoo3's (128 for dqn, else 256)")
    parser.add_argument("--fill", type=int, default=1000, help="random transitions in replay before timing")
    parser.add_argument("--updates", type=int, default=100, help="updates per timed sample")
    parser.add_argument("--repeats", type=int, default=5, help="timed samples per variant (median reported)")
    parser.add_argument("--no-sb3", action="store_true", help="time our two backends only")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"CPU ms per update, median of {args.repeats} x {args.updates} updates (interleaved)")
    print(f"{'algo':6} {'env':12} {'hidden':>8} {'batch':>5} {'fused':>7} {'autograd':>9} {'sb3':>7} "
          f"{'fused/autograd':>15} {'fused/sb3':>10} {'autograd/sb3':>13}")
    for algo in args.algos:
        hidden = parse_hidden(args.hidden, algo)
        env_id = args.env or DEFAULT_ENV[algo]
        batch_size = args.batch_size or ZOO_BATCH[algo]
        ms = bench(algo, env_id, hidden, batch_size, args.fill, args.updates, args.repeats, not args.no_sb3)
        sb3, vs_sb3 = (f"{ms['sb3']:.2f}", [f"{ms[k] / ms['sb3']:.2f}" for k in ("fused", "autograd")]) \
            if "sb3" in ms else ("-", ["-", "-"])
        print(f"{algo:6} {env_id:12} {','.join(map(str, hidden)):>8} {batch_size:5} {ms['fused']:7.2f} {ms['autograd']:9.2f} "
              f"{sb3:>7} {ms['fused'] / ms['autograd']:15.2f} {vs_sb3[0]:>10} {vs_sb3[1]:>13}", flush=True)


if __name__ == "__main__":
    main()
