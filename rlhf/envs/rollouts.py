"""`rlhf rollouts`: play episodes of an env with a non-LM policy and write each as a conversation.

    rlhf rollouts --env ENV [--env_kwargs JSON] [--max_turns N] --policy random|RUN_DIR --episodes N
                  --output_file F.jsonl [--seed S]

Each line of F.jsonl is one episode, ``{"messages": [{"role": "user", ...}, {"role": "assistant", ...}, ...]}``:
the env's observations as user turns, the policy's moves as assistant turns, the format `rlhf sft`
trains on (loss on the assistant turns). ``--policy random`` picks uniformly among the moves the env
lists in ``info["valid_actions"]``; a classic_rl run directory (``classic-rl train q_learning
FrozenLake-v1 --env-kwargs '{"is_slippery": false}'``) acts greedily with that agent on the states of
the Discrete env behind the text adapter. Episode i resets with the training-seed stream's seed i
(``rlhf.envs.seeds``), never a held-out seed. ENV as ``module:Class`` imports that module as code.
With ``--output_dir D`` (the pipeline's form) the episodes go to D/rollouts.jsonl and the statistics to
D/summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from classic_rl.safe_io import UserError, atomic_write_text, dumps_strict
from rlhf.envs.config import parse_env_kwargs
from rlhf.envs.episodes import HARD_TURN_LIMIT, Episode
from rlhf.envs.evaluation import episode_statistics
from rlhf.envs.make import CheckedEnv, EnvSpec
from rlhf.envs.policies import Policy, make_policy

__all__ = ["RolloutsConfig", "main", "play_episode", "run_rollouts"]

OUTPUT_NAME = "rollouts.jsonl"


@dataclass
class RolloutsConfig:
    """Settings of `rlhf rollouts` (see the module docstring)."""

    env: str | None = field(default=None, metadata={"help": "A gymnasium id (Text or Discrete spaces) or module:Class "
                                                             "(imports that module as code) (required)."})
    env_kwargs: str | None = field(default=None, metadata={"help": "JSON object of keyword arguments for the env."})
    policy: str = field(default="random", metadata={"help": "'random' (among info['valid_actions']) or a classic_rl "
                                                            "run directory (its agent acts)."})
    episodes: int = field(default=100, metadata={"help": "Episodes to play and write."})
    output_file: str | None = field(default=None, metadata={"help": "The .jsonl file of conversations."})
    output_dir: str | None = field(default=None, metadata={"help": f"Instead of --output_file: DIR/{OUTPUT_NAME} "
                                                                   "and DIR/summary.json."})
    max_turns: int | None = field(default=8, metadata={"help": "Truncate an episode after this many moves."})
    seed: int = field(default=0, metadata={"help": "Seeds the episodes' resets and the random policy."})

    def validate(self) -> RolloutsConfig:
        if not self.env:
            raise UserError("--env is required (a gymnasium id or module:Class)")
        if not self.output_file and not self.output_dir:
            raise UserError("give --output_file F.jsonl (or --output_dir DIR)")
        if self.episodes < 1:
            raise UserError(f"--episodes must be >= 1, got {self.episodes}")
        if self.max_turns is not None and self.max_turns < 1:
            raise UserError(f"--max_turns must be >= 1 (or None), got {self.max_turns}")
        parse_env_kwargs(self.env_kwargs)
        return self

    @property
    def output_path(self) -> Path:
        return Path(self.output_file) if self.output_file else Path(self.output_dir) / OUTPUT_NAME


def play_episode(env: CheckedEnv, policy: Policy, seed: int, max_turns: int | None) -> Episode:
    """One episode as text (no tokens): the conversation, the rewards, how it ended."""
    observation, info = env.reset(seed)
    episode = Episode(seed, [], [{"role": "user", "content": observation}])
    turn = 0
    while True:
        turn += 1
        if max_turns is None and turn > HARD_TURN_LIMIT:
            raise env.never_ends(turn - 1)
        reply = policy(env, observation, info)
        observation, reward, terminated, truncated, info = env.step(reply, turn)
        episode.messages.append({"role": "assistant", "content": reply})
        episode.rewards.append(reward)
        episode.invalid_turns += bool(info.get("invalid", False))
        if terminated or truncated or (max_turns is not None and turn >= max_turns):
            episode.end(terminated, info)
            return episode
        episode.messages.append({"role": "user", "content": observation})


def run_rollouts(cfg: RolloutsConfig) -> dict[str, Any]:

    from rlhf.envs.seeds import EnvSeedStream

    cfg.validate()
    spec = EnvSpec.from_flags(cfg.env, cfg.env_kwargs)
    env = spec.make()
    policy = make_policy(cfg.policy, cfg.env, cfg.seed)
    seed_of = EnvSeedStream.train_seed_of
    episodes = [play_episode(env, policy, seed_of(cfg.seed, i), cfg.max_turns) for i in range(cfg.episodes)]
    env.close()
    out = cfg.output_path
    atomic_write_text(out, "".join(dumps_strict({"messages": e.messages}) + "\n" for e in episodes))
    summary = {"command": "rollouts", "env": cfg.env, "env_kwargs": spec.kwargs, "policy": cfg.policy,
               "max_turns": cfg.max_turns, "seed": cfg.seed, "output_file": str(out), **episode_statistics(episodes)}
    if cfg.output_dir:
        from rlhf.common.utils import write_json

        write_json(Path(cfg.output_dir) / "summary.json", summary)
    success = summary["success_rate"]
    print(f"rlhf rollouts: {len(episodes)} episodes of {cfg.env} ({cfg.policy}), mean return {summary['return_mean']:+.3f}"
          + (f", success {success:.1%}" if success is not None else "") + f" -> {out}")
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from rlhf.common.utils import parse_args

    (cfg,) = parse_args([RolloutsConfig], argv, description=__doc__, command="rollouts")
    return run_rollouts(cfg)
