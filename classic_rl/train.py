"""One training entry point for every algorithm: builds the agent, trains, writes the run directory.

A run directory (INTERFACE.md) holds ``config.yaml`` (every resolved setting), ``episodes.csv``,
``summary.json``, the saved agent (``model.safetensors`` ...) and TensorBoard files in ``tb/``.
Everything is validated before the directory is created; a run that fails with an error leaves
no directory behind, and Ctrl-C saves what was learned and marks the summary ``interrupted``.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

from classic_rl.agents.base import Agent
from classic_rl.logger import RunLogger
from classic_rl.registry import get_algorithm


def default_run_dir(algo: str, env_id: str, seed: int) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{algo}-{env_id.replace('/', '_')}-s{seed}-{stamp}"


def _budget(agent: Agent, steps: int | None, episodes: int | None) -> tuple[int | None, int | None]:
    if steps is None and episodes is None:
        if agent.budget_unit == "episode":
            episodes = agent.default_budget()
        else:
            steps = agent.default_budget()
    return steps, episodes


def train_run(
    algo: str,
    env: str,
    *,
    steps: int | None = None,
    episodes: int | None = None,
    seed: int = 0,
    config_file: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    env_kwargs: dict[str, Any] | None = None,
    out: str | Path | None = None,
    quiet: bool = False,
    resume: str | Path | None = None,
    eval_episodes: int = 10,
    eval_seed: int = 10_000,
) -> tuple[Agent, dict[str, Any]]:
    """Train ``algo`` on ``env`` and write a run directory; returns (agent, summary).

    With ``resume=RUN_DIR`` the saved agent (weights, optimizer, replay and RNG state) continues
    until the *total* budget ``steps`` is reached, writing into the same directory.
    """
    for name, value in (("steps", steps), ("episodes", episodes), ("eval_episodes", eval_episodes)):
        if value is not None and int(value) < (0 if name == "eval_episodes" else 1):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
    if resume is not None:
        agent = Agent.load(resume)
        if agent.algo != algo:
            raise ValueError(f"--resume {resume} holds a {agent.algo} run, not {algo}")
        out = Path(resume)
        if overrides:
            raise ValueError("--set cannot change settings of a resumed run; start a new run instead")
    else:
        agent_cls = get_algorithm(algo)
        agent = agent_cls(env, seed=seed, env_kwargs=env_kwargs, config_file=config_file, **(overrides or {}))
        out = Path(out) if out is not None else default_run_dir(algo, agent.env_id, seed)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"Output directory {str(out)!r} exists and is not empty; pick another --out")
    steps, episodes = _budget(agent, steps, episodes)
    if resume is not None:
        if steps is not None:
            steps = steps - agent.num_timesteps
        if episodes is not None:
            episodes = episodes - agent.num_episodes
        if (steps or 0) <= 0 and (episodes or 0) <= 0:
            raise ValueError(f"The run in {resume} already reached the requested budget; ask for more --steps")

    created = not out.exists()
    interrupted = False
    logger = RunLogger(
        out, total=steps if steps is not None else episodes, unit="step" if steps is not None else "episode",
        progress=not quiet,
    )
    agent.save(out)  # config.yaml first, so a crashed run still says what it was
    try:
        agent.learn(total_steps=steps, episodes=episodes, logger=logger)
    except KeyboardInterrupt:
        interrupted = True
    except BaseException:
        logger.close()
        if created:
            shutil.rmtree(out, ignore_errors=True)
        raise
    logger.close()
    wall_s = logger.wall_s
    agent.save(out)
    mean, std = None, None  # not evaluated: null in summary.json, never a bare NaN
    if eval_episodes > 0 and not interrupted:
        mean, std = agent.evaluate(episodes=eval_episodes, seed=eval_seed)
    recent = logger.episode_returns[-10:]
    summary = {
        "algo": agent.algo,
        "env": agent.env_id,
        "seed": agent.seed,
        "steps": agent.num_timesteps,
        "episodes": agent.num_episodes,
        "wall_s": round(wall_s, 3),
        "eval_episodes": eval_episodes,
        "eval_return_mean": mean,
        "eval_return_std": std,
        "train_return_last10": (sum(recent) / len(recent)) if recent else None,
        "interrupted": interrupted,
    }
    if getattr(agent, "solve_stats", None):  # dynamic programming: sweeps, not steps or episodes
        summary["solve"] = dict(agent.solve_stats)
    previous = out / "summary.json"
    if resume is not None and previous.is_file():
        summary["wall_s"] = round(wall_s + json.loads(previous.read_text()).get("wall_s", 0.0), 3)
    previous.write_text(json.dumps(summary, indent=2))
    return agent, summary
