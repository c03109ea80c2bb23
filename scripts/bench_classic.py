"""Side-by-side benchmark: our agents against Stable-Baselines3's, same env, budget, net and settings.

Each (algorithm, env, seed, implementation) trains in its own subprocess (one torch thread,
``OMP_NUM_THREADS=1``), ours and SB3's alternating so both see the same machine load. Our
settings are the resolved config (tuned defaults for the env, plus ``--set``); SB3's are
translated from it by the algorithm's entry in :data:`BENCHMARKS`. For each it reports:

- final greedy evaluation return (the same ``classic_rl.evaluation.evaluate`` with the same
  seeds for both), mean and std over the training seeds;
- second-half periodic eval: the mean of the periodic evaluations after half the budget, averaged
  over seeds (steadier than the final snapshot for learners that oscillate, such as DQN);
- steps to threshold: the first periodic greedy evaluation (every ``--eval-every`` steps, 5
  episodes) whose mean return reaches the env's ``reward_threshold`` (CartPole-v1 475,
  Acrobot-v1 -100), averaged over the seeds that reached it (``n/m`` tells how many did);
- wall and CPU time of training alone (periodic evaluations excluded), and the ratios ours / SB3.
  On a shared machine the CPU-time ratio is the steadier of the two;
- on-policy algorithms (a2c, ppo): a second table with training steps/s, ours (per ``vec_env``) and SB3's, as a
  fraction of the random-policy steps/s of the same vector env (:func:`random_policy_rate`).

Add an algorithm by adding a :class:`Benchmark` entry: our name and a function that builds the
SB3 model from our resolved config (or None when SB3 has no counterpart: ours runs alone).
``ars`` is compared at equal wall time instead: ours trains for ``--steps``, then SB3's PPO (built
from our PPO config for the env) trains until it has used as many wall-clock seconds, per seed.
``--sb3-set KEY=VALUE`` builds SB3's model from other settings than ours (on top of ``--set``), e.g.
``hidden=[400,300]`` to hold SB3 at rl-zoo3's networks while ours runs smaller default ones: the
table then compares the two libraries' recommended settings, not equal work (it says so below it).

Examples::

    python scripts/bench_classic.py --algos dqn --envs CartPole-v1 Acrobot-v1 --seeds 0 1 --steps 50000
    python scripts/bench_classic.py --algos dqn rainbow --envs CartPole-v1 --seeds 0 --steps 20000 --impl ours
    python scripts/bench_classic.py --algos a2c ppo --envs CartPole-v1 --seeds 0 1 --steps 100000
    python scripts/bench_classic.py --algos ppo --envs CartPole-v1 --steps 100000 --impl ours --set vec_env=envpool
    python scripts/bench_classic.py --algos ars --envs InvertedPendulum-v5 --steps 200000 --set n_workers=0
    python scripts/bench_classic.py --algos td3 --envs Pendulum-v1 --seeds 0 1 --steps 20000 --sb3-set "hidden=[400,300]"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from classic_rl.safe_io import dumps_strict

THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


# ---------------------------------------------------------------------------------- SB3 counterparts
def _refuse(cfg: Any, algo: str, unsupported: dict[str, Any]) -> None:
    """Raise if ``cfg`` uses a setting the SB3 counterpart cannot reproduce."""
    for name, default in unsupported.items():
        if getattr(cfg, name, default) != default:
            raise ValueError(f"SB3's {algo} has no equivalent of {name}={getattr(cfg, name)!r}; "
                             f"benchmark with {name}={default!r}")


def sb3_dqn(cfg: Any, env: Any, seed: int) -> Any:
    """stable_baselines3.DQN with our DQN config: same schedule, cadence, net, Huber loss, Adam."""
    from stable_baselines3 import DQN

    _refuse(cfg, "DQN", {"double": False, "dueling": False, "distributional": False, "noisy": False,
                         "replay": "uniform", "loss": "huber", "n_envs": 1, "activation": "relu"})
    return DQN(
        "MlpPolicy", env, learning_rate=cfg.learning_rate, buffer_size=cfg.buffer_size,
        learning_starts=cfg.learning_starts, batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma,
        train_freq=cfg.train_freq, gradient_steps=cfg.gradient_steps, n_steps=cfg.n_step,
        target_update_interval=cfg.target_update_interval, exploration_fraction=cfg.exploration_fraction,
        exploration_initial_eps=cfg.exploration_initial_eps, exploration_final_eps=cfg.exploration_final_eps,
        max_grad_norm=cfg.max_grad_norm, seed=seed, device="cpu", verbose=0,
        policy_kwargs={"net_arch": list(cfg.hidden), "optimizer_kwargs": {"eps": cfg.adam_eps}},
    )


def _sb3_action_noise(cfg: Any, env: Any) -> Any:
    """Our exploration noise (in [-1, 1] action units, as SB3 applies it) as an SB3 action noise."""
    from stable_baselines3.common.noise import NormalActionNoise, OrnsteinUhlenbeckActionNoise

    d = int(np.prod(env.action_space.shape))
    kind = cfg.noise_type.lower().replace("_", "-")
    if kind in ("normal", "gaussian"):
        return NormalActionNoise(np.zeros(d), cfg.noise_std * np.ones(d))
    if kind in ("ornstein-uhlenbeck", "ou"):
        return OrnsteinUhlenbeckActionNoise(np.zeros(d), cfg.noise_std * np.ones(d), theta=cfg.ou_theta, dt=cfg.ou_dt)
    return None


def _sb3_off_policy_kwargs(cfg: Any, seed: int) -> dict[str, Any]:
    """The replay/update settings every SB3 continuous-control algorithm shares with ours."""
    _refuse(cfg, "continuous control", {"replay": "uniform", "n_step": 1, "n_envs": 1})
    return dict(
        learning_rate=cfg.learning_rate, buffer_size=cfg.buffer_size, learning_starts=cfg.learning_starts,
        batch_size=cfg.batch_size, tau=cfg.tau, gamma=cfg.gamma, train_freq=cfg.train_freq,
        gradient_steps=cfg.gradient_steps, seed=seed, device="cpu", verbose=0,
    )


def sb3_ddpg(cfg: Any, env: Any, seed: int) -> Any:
    """stable_baselines3.DDPG (its TD3 with one critic, no delay, no target smoothing)."""
    from stable_baselines3 import DDPG

    _refuse(cfg, "DDPG", {"n_critics": 1, "policy_delay": 1, "target_policy_noise": 0.0})
    return DDPG("MlpPolicy", env, action_noise=_sb3_action_noise(cfg, env),
                policy_kwargs={"net_arch": list(cfg.hidden)}, **_sb3_off_policy_kwargs(cfg, seed))


def sb3_td3(cfg: Any, env: Any, seed: int) -> Any:
    """stable_baselines3.TD3 with our twins, delay and target smoothing."""
    from stable_baselines3 import TD3

    return TD3("MlpPolicy", env, action_noise=_sb3_action_noise(cfg, env), policy_delay=cfg.policy_delay,
               target_policy_noise=cfg.target_policy_noise, target_noise_clip=cfg.target_noise_clip,
               policy_kwargs={"net_arch": list(cfg.hidden), "n_critics": cfg.n_critics},
               **_sb3_off_policy_kwargs(cfg, seed))


def sb3_sac(cfg: Any, env: Any, seed: int) -> Any:
    """stable_baselines3.SAC with our temperature setting (auto, auto_<init> or fixed)."""
    from stable_baselines3 import SAC

    from classic_rl.agents.sac import parse_ent_coef

    learned, init = parse_ent_coef(cfg.ent_coef)
    return SAC("MlpPolicy", env, ent_coef=cfg.ent_coef if learned else init,
               target_entropy="auto" if cfg.target_entropy is None else cfg.target_entropy,
               policy_kwargs={"net_arch": list(cfg.hidden), "n_critics": cfg.n_critics},
               **_sb3_off_policy_kwargs(cfg, seed))


def _sb3_on_policy(cfg: Any, env: Any, seed: int, algo: str) -> tuple[Any, dict[str, Any]]:
    """The vector env and the settings SB3's A2C and PPO share with ours (same envs, net, init)."""
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize
    from torch import nn

    # normalize_obs would also need SB3's VecNormalize at evaluation time, which _SB3Actor bypasses
    _refuse(cfg, algo, {"normalize_obs": False, "share_trunk": False, "state_dependent_std": False,
                        "action_bound": "clip", "vec_env": "sync"})
    venv = make_vec_env(env.spec.id, n_envs=cfg.num_envs, seed=seed)
    if cfg.normalize_reward:
        venv = VecNormalize(venv, norm_obs=False, norm_reward=True, clip_reward=cfg.clip_reward, gamma=cfg.gamma)
    lr = (lambda left: cfg.learning_rate * left) if cfg.anneal_lr else cfg.learning_rate
    activations = {"tanh": nn.Tanh, "relu": nn.ReLU, "elu": nn.ELU, "silu": nn.SiLU}
    policy_kwargs = {"net_arch": {"pi": list(cfg.hidden), "vf": list(cfg.hidden)},
                     "activation_fn": activations[cfg.activation], "ortho_init": cfg.ortho_init,
                     "log_std_init": cfg.log_std_init}
    return venv, dict(learning_rate=lr, n_steps=cfg.n_steps, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda,
                      ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm,
                      normalize_advantage=cfg.normalize_advantage, policy_kwargs=policy_kwargs, seed=seed,
                      device="cpu", verbose=0)


def sb3_a2c(cfg: Any, env: Any, seed: int) -> Any:
    """stable_baselines3.A2C on ``num_envs`` envs with our optimizer (RMSprop or Adam, eps 1e-5)."""
    from stable_baselines3 import A2C

    venv, kwargs = _sb3_on_policy(cfg, env, seed, "A2C")
    rmsprop = cfg.optimizer == "rmsprop"
    if not rmsprop:
        kwargs["policy_kwargs"]["optimizer_kwargs"] = {"eps": 1e-5}
    return A2C("MlpPolicy", venv, use_rms_prop=rmsprop, rms_prop_eps=1e-5, **kwargs)


def sb3_ppo(cfg: Any, env: Any, seed: int) -> Any:
    """stable_baselines3.PPO with our rollout, minibatch, epoch and clipping (and annealing) settings:
    the same names, the same numbers (our update is SB3's, ``tests/test_ppo_vs_sb3.py``)."""
    from stable_baselines3 import PPO

    venv, kwargs = _sb3_on_policy(cfg, env, seed, "PPO")
    clip = (lambda left: cfg.clip_range * left) if cfg.anneal_clip else cfg.clip_range
    return PPO("MlpPolicy", venv, batch_size=cfg.batch_size, n_epochs=cfg.n_epochs, clip_range=clip,
               clip_range_vf=cfg.clip_range_vf, target_kl=cfg.target_kl, **kwargs)


@dataclass(frozen=True)
class Benchmark:
    """One row family: our algorithm and how to build SB3's counterpart from our config."""

    ours: str
    sb3: Callable[[Any, Any, int], Any] | None = None
    peer: str | None = None
    """Our algorithm whose resolved config ``sb3`` translates, when not ``ours`` (ARS -> PPO)."""
    equal_time: bool = False
    """SB3 trains for ours' measured wall time (per seed) instead of the same number of steps."""


BENCHMARKS: dict[str, Benchmark] = {
    "dqn": Benchmark("dqn", sb3_dqn),
    "double_dqn": Benchmark("double_dqn"),
    "dueling_dqn": Benchmark("dueling_dqn"),
    "per_dqn": Benchmark("per_dqn"),
    "c51": Benchmark("c51"),
    "noisy_dqn": Benchmark("noisy_dqn"),
    "rainbow": Benchmark("rainbow"),
    "ddpg": Benchmark("ddpg", sb3_ddpg),
    "td3": Benchmark("td3", sb3_td3),
    "sac": Benchmark("sac", sb3_sac),
    "d4pg": Benchmark("d4pg"),
    "a2c": Benchmark("a2c", sb3_a2c),
    "ppo": Benchmark("ppo", sb3_ppo),
    # derivative-free vs gradient-based: SB3's PPO (our PPO config for the env) for ARS's wall time
    "ars": Benchmark("ars", sb3_ppo, peer="ppo", equal_time=True),
}


# ---------------------------------------------------------------------------------- one run (worker)
class _SB3Actor:
    """Lets ``classic_rl.evaluation.evaluate`` drive an SB3 model."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def act(self, obs: Any, deterministic: bool = True) -> Any:
        action, _ = self.model.predict(obs, deterministic=deterministic)
        return action.item() if getattr(action, "ndim", 1) == 0 else action


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (ARS's rollout workers)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def random_policy_rate(env_id: str, num_envs: int, steps: int, seed: int, vec_env: str = "sync") -> dict[str, float]:
    """Environment steps per wall- and CPU-second of uniformly random actions in the vector env our
    on-policy collector steps (``make_vector_env``: same ``num_envs``, ``vec_env`` kind, autoreset mode).

    The actions are drawn before the clock starts, in the form the collector passes them (Python
    ints for Discrete), so the rate is the environment's own limit: what a learner would reach if
    acting and learning were free.
    """
    import gymnasium as gym

    from classic_rl.agents.on_policy import make_vector_env

    envs = make_vector_env(env_id, num_envs, kind=vec_env)
    envs.reset(seed=seed)
    envs.action_space.seed(seed)
    actions = [envs.action_space.sample() for _ in range(max(1, steps // num_envs))]
    if isinstance(envs.single_action_space, gym.spaces.Discrete):
        actions = [a.tolist() for a in actions]
    wall, cpu = time.perf_counter(), time.process_time()
    for action in actions:
        envs.step(action)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    envs.close()
    return {"random_steps_per_s": len(actions) * num_envs / wall, "random_steps_per_cpu_s": len(actions) * num_envs / cpu}


def run_one(spec: dict[str, Any]) -> dict[str, Any]:
    """Train and evaluate one (algo, env, seed, impl); runs inside the worker process.

    Every ``eval_every`` steps a greedy evaluation (``eval_every_episodes`` episodes, seeds from
    20,000) records the return, for "steps to threshold"; its time is taken out of the timings.
    """
    import gymnasium as gym
    import torch

    torch.set_num_threads(1)
    import classic_rl
    from classic_rl.agents.on_policy import OnPolicyAgent
    from classic_rl.evaluation import evaluate
    from classic_rl.registry import get_algorithm

    bench = BENCHMARKS[spec["algo"]]
    every = spec["eval_every"]
    overrides = spec["overrides"]
    if spec["impl"] == "ours" and "eval_freq" in {f.name for f in fields(get_algorithm(bench.ours).Config)}:
        overrides = {**overrides, "eval_freq": every}  # agents without it (ARS) get no periodic evaluation
    if spec["impl"] == "sb3" and bench.peer is not None:  # SB3 translates our peer's config (ARS -> PPO)
        agent = classic_rl.make(bench.peer, spec["env"], seed=spec["seed"])
    else:  # --sb3-set: SB3's model from other settings than ours (e.g. the zoo nets)
        own = spec.get("sb3_overrides", {}) if spec["impl"] == "sb3" else {}
        agent = classic_rl.make(bench.ours, spec["env"], seed=spec["seed"], **{**overrides, **own})
    threshold = gym.spec(spec["env"]).reward_threshold
    evals: list[tuple[int, float]] = []
    spent = [0.0, 0.0]  # wall and CPU seconds of the periodic evaluations
    extra: dict[str, Any] = {}  # on-policy: the random-policy rate of the same vector env

    def periodic_eval(step: int, actor: Any) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        mean, _ = evaluate(actor, spec["env"], episodes=spec["eval_every_episodes"], seed=20_000)
        evals.append((step, mean))
        spent[0] += time.perf_counter() - wall
        spent[1] += time.process_time() - cpu

    if spec["impl"] == "ours":
        agent.evaluate_during_training = lambda logger=None: periodic_eval(agent.num_timesteps, agent)
        wall, cpu = time.perf_counter(), _cpu_seconds()
        agent.learn(total_steps=spec["steps"], progress=False)
        wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
        actor: Any = agent
        steps_done = agent.num_timesteps
        if spec.get("random_steps") and isinstance(agent, OnPolicyAgent):  # the env's own limit, same load
            extra.update(random_policy_rate(spec["env"], agent.config.num_envs, spec["random_steps"], spec["seed"],
                                            agent.config.vec_env))
            extra.update(num_envs=agent.config.num_envs, vec_env=agent.config.vec_env)
    else:
        from stable_baselines3.common.callbacks import BaseCallback

        model = bench.sb3(agent.config, gym.make(spec["env"]), spec["seed"])
        actor = _SB3Actor(model)

        limit = spec.get("time_limit_s")  # equal time: stop once ours' training time is spent
        on_cpu = spec.get("time_kind") == "cpu"

        class PeriodicEval(BaseCallback):
            def _on_step(self) -> bool:
                if every and self.num_timesteps % every == 0:
                    periodic_eval(self.num_timesteps, actor)
                if limit is None:
                    return True
                used = time.process_time() - cpu - spent[1] if on_cpu else time.perf_counter() - start - spent[0]
                return used < limit

        # with a time limit the step budget only has to be out of reach (PPO checks time while collecting,
        # so it can overrun by one update phase: the reported wall time is what it really used)
        budget = spec["steps"] if limit is None else 10**9
        start, cpu = time.perf_counter(), time.process_time()
        model.learn(total_timesteps=budget, callback=PeriodicEval())
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        steps_done = model.num_timesteps
    mean, std = evaluate(actor, spec["env"], episodes=spec["eval_episodes"], seed=10_000)
    reached = [step for step, value in evals if threshold is not None and value >= threshold]
    return {**spec, "steps_done": int(steps_done), "wall_s": wall - spent[0], "cpu_s": cpu - spent[1],
            "eval_mean": mean, "eval_std": std,
            "steps_to_threshold": reached[0] if reached else None, "threshold": threshold, "evals": evals, **extra}


# ---------------------------------------------------------------------------------- driver
def launch(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **THREAD_ENV})
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['impl']} {spec['algo']} {spec['env']} seed {spec['seed']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def late_return(run: dict[str, Any]) -> float | None:
    """Mean of a run's periodic evaluations over the second half of its budget, or None without them.

    The final evaluation is a snapshot; learners that oscillate (DQN, A2C) can end a good run on a bad
    one, so this steadier figure is reported beside it.
    """
    late = [value for step, value in run.get("evals", []) if step > run["steps"] / 2]
    return float(np.mean(late)) if late else None


def summarize(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    keys = sorted({(r["algo"], r["env"]) for r in results}, key=lambda k: (k[1], k[0]))
    for algo, env in keys:
        per_impl = {}
        for impl in ("ours", "sb3"):
            runs = [r for r in results if (r["algo"], r["env"], r["impl"]) == (algo, env, impl)]
            if not runs:
                continue
            reached = [r["steps_to_threshold"] for r in runs if r["steps_to_threshold"] is not None]
            peer = BENCHMARKS[algo].peer
            per_impl[impl] = {
                "algo": algo, "env": env, "impl": f"sb3 {peer}" if impl == "sb3" and peer else impl, "seeds": len(runs),
                "steps": int(np.mean([r.get("steps_done", r["steps"]) for r in runs])),
                "eval_mean": float(np.mean([r["eval_mean"] for r in runs])),
                "eval_std": float(np.std([r["eval_mean"] for r in runs])),
                "late": float(np.mean(late)) if (late := [x for x in map(late_return, runs) if x is not None]) else None,
                "to_threshold": float(np.mean(reached)) if reached else None,
                "reached": f"{len(reached)}/{len(runs)}",
                "wall_s": float(np.mean([r["wall_s"] for r in runs])),
                "cpu_s": float(np.mean([r["cpu_s"] for r in runs])),
            }
        if "ours" in per_impl and "sb3" in per_impl:
            per_impl["ours"]["ratio"] = per_impl["ours"]["wall_s"] / per_impl["sb3"]["wall_s"]
            per_impl["ours"]["cpu_ratio"] = per_impl["ours"]["cpu_s"] / per_impl["sb3"]["cpu_s"]
        rows += per_impl.values()
    return rows


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ("| algo | env | impl | steps | seeds | eval return (mean ± std over seeds) | second-half periodic eval "
            "| steps to threshold (reached) | wall s | CPU s | wall ours/SB3 | CPU ours/SB3 |\n"
            "|---|---|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        thr = f"{r['to_threshold']:,.0f} ({r['reached']})" if r["to_threshold"] is not None else f"- ({r['reached']})"
        ratio = f"{r['ratio']:.2f}" if "ratio" in r else "-"
        cpu_ratio = f"{r['cpu_ratio']:.2f}" if "cpu_ratio" in r else "-"
        late = f"{r['late']:.1f}" if r.get("late") is not None else "-"
        lines.append(f"| {r['algo']} | {r['env']} | {r['impl']} | {r['steps']:,} | {r['seeds']} | "
                     f"{r['eval_mean']:.1f} ± {r['eval_std']:.1f} | {late} | {thr} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
                     f"{ratio} | {cpu_ratio} |")
    return "\n".join(lines)


def throughput_table(results: list[dict[str, Any]]) -> str:
    """On-policy rows: training steps/s (ours and SB3's) as a fraction of the random-policy steps/s
    of the same vector env (measured in ours' worker right after training, so under the same load)."""
    lines = ["| algo | env | vec_env | n_envs | random policy steps/s | ours steps/s | ours / random | SB3 steps/s "
             "| SB3 / random | random steps/CPU-s | ours steps/CPU-s | ours / random (CPU) | SB3 steps/CPU-s "
             "| SB3 / random (CPU) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["algo"], r["env"], r.get("vec_env", "sync")) for r in results if "random_steps_per_s" in r},
                  key=lambda k: (k[1], k[0], k[2]))
    for algo, env, vec_env in keys:
        ours = [r for r in results if (r["algo"], r["env"], r["impl"], r.get("vec_env", "sync")) == (algo, env, "ours", vec_env)
                and "random_steps_per_s" in r]
        # SB3 steps its own DummyVecEnv (one process), beside our sync rows
        sb3 = [r for r in results if (r["algo"], r["env"], r["impl"]) == (algo, env, "sb3")] if vec_env == "sync" else []

        def rate(runs: list[dict[str, Any]], clock: str) -> float:
            return float(np.mean([r.get("steps_done", r["steps"]) / r[f"{clock}_s"] for r in runs])) if runs else float("nan")

        random_wall = float(np.mean([r["random_steps_per_s"] for r in ours]))
        random_cpu = float(np.mean([r["random_steps_per_cpu_s"] for r in ours]))
        cells = [algo, env, vec_env, str(ours[0]["num_envs"]), f"{random_wall:,.0f}"]
        for clock, base in (("wall", random_wall), ("cpu", random_cpu)):
            if clock == "cpu":
                cells.append(f"{random_cpu:,.0f}")
            for runs in (ours, sb3):
                value = rate(runs, clock)
                cells += [f"{value:,.0f}", f"{value / base:.2f}"] if runs else ["-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    from classic_rl.config import parse_set_args

    return parse_set_args(items)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--algos", nargs="+", default=["dqn"], help=f"from: {', '.join(BENCHMARKS)}")
    parser.add_argument("--envs", nargs="+", default=["CartPole-v1"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--steps", type=int, default=50_000, help="environment steps per run")
    parser.add_argument("--impl", nargs="+", choices=["ours", "sb3"], default=["ours", "sb3"])
    parser.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override our settings (and, through the translation, SB3's)")
    parser.add_argument("--sb3-set", nargs="+", default=[], metavar="KEY=VALUE",
                        help="override only the settings SB3's model is translated from (on top of --set), e.g. "
                             "hidden=[400,300] to hold SB3 at rl-zoo3's nets while ours runs its own defaults")
    parser.add_argument("--eval-episodes", type=int, default=10, help="final greedy evaluation episodes")
    parser.add_argument("--eval-every", type=int, default=None,
                        help="steps between periodic evaluations (default: steps / 20; 0 = none)")
    parser.add_argument("--equal-time", choices=["wall", "cpu"], default="wall",
                        help="ars: SB3's PPO gets ours' wall time (default) or CPU time (steadier when shared)")
    parser.add_argument("--random-steps", type=int, default=20_000,
                        help="on-policy algos: env steps of the random-policy rate measurement (0 = skip)")
    parser.add_argument("--json", help="also write every run's raw result to this file")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(dumps_strict(run_one(json.loads(args.worker))))
        return 0
    unknown = [a for a in args.algos if a not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown algorithm(s) {', '.join(unknown)}; valid: {', '.join(BENCHMARKS)}")
    overrides = parse_overrides(args.set)
    sb3_overrides = parse_overrides(args.sb3_set)
    eval_every = max(1, args.steps // 20) if args.eval_every is None else args.eval_every
    results = []
    for env in args.envs:
        for algo in args.algos:
            for seed in args.seeds:
                for impl in args.impl:  # alternate ours / SB3 so both see the same machine load
                    if impl == "sb3" and BENCHMARKS[algo].sb3 is None:
                        continue
                    spec = {"algo": algo, "env": env, "seed": seed, "impl": impl, "steps": args.steps,
                            "overrides": overrides, "eval_episodes": args.eval_episodes,
                            "eval_every": eval_every, "eval_every_episodes": 5, "random_steps": args.random_steps}
                    if impl == "sb3" and sb3_overrides:
                        spec["sb3_overrides"] = sb3_overrides
                    if impl == "sb3" and BENCHMARKS[algo].equal_time:
                        ours = [r for r in results if (r["algo"], r["env"], r["seed"], r["impl"]) == (algo, env, seed, "ours")]
                        if not ours:
                            parser.error(f"{algo} vs SB3 runs for ours' wall time: keep 'ours' in --impl")
                        spec["time_kind"] = args.equal_time
                        spec["time_limit_s"] = ours[-1][f"{args.equal_time}_s"]
                    result = launch(spec)
                    results.append(result)
                    print(f"{impl:>4} {algo} {env} seed {seed}: eval {result['eval_mean']:.1f}, "
                          f"wall {result['wall_s']:.1f}s, cpu {result['cpu_s']:.1f}s, "
                          f"to threshold {result['steps_to_threshold']}", file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(dumps_strict(results, indent=2))
    print(markdown_table(summarize(results)))
    if sb3_overrides:
        print(f"\nSB3's settings differ from ours by: {', '.join(f'{k}={v!r}' for k, v in sb3_overrides.items())}")
    if any("random_steps_per_s" in r for r in results):
        print("\n" + throughput_table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
