"""Held-out episodes: the mean undiscounted return and the success rate of a policy on env seeds no
training episode uses (``rlhf.envs.seeds.HELD_OUT_BASE + k``), sampled as in training.

:func:`evaluate_held_out_episodes` is the trainer's (``reward_mean_before/after`` with --env: the same
sampler, temperature and limits as its training episodes); :func:`evaluate_policy` samples a saved
policy with the built-in sampler (the pipeline's SFT vs RL comparison).
"""

from __future__ import annotations

from typing import Any

import torch

from rlhf.envs.episodes import Episode

__all__ = ["env_summary", "episode_statistics", "evaluate_held_out_episodes", "evaluate_policy"]

SUMS = ("return", "score", "kl", "stopped", "success", "success_known", "turns", "weight")


def _finish(sums: dict[str, float]) -> dict[str, Any]:
    n = max(sums["weight"], 1.0)
    known = sums["success_known"]
    return {
        "reward_mean": sums["return"] / n, "score_mean": sums["score"] / n, "kl_mean": sums["kl"] / n,
        "eos_fraction": sums["stopped"] / n, "return_mean": sums["return"] / n,
        "success_rate": sums["success"] / known if known else None, "turns_mean": sums["turns"] / n,
        "episodes": sums["weight"],
    }


@torch.no_grad()
def evaluate_held_out_episodes(trainer, generator: torch.Generator) -> dict[str, Any]:
    """``trainer.evaluate_reward`` with --env: every rank plays its share of the held-out seeds."""
    labels, seeds, weight_list = trainer.prompts.held_out_for_rank()
    device = trainer.device
    weights = torch.tensor(weight_list, dtype=torch.float64, device=device)
    sums = torch.zeros(len(SUMS), dtype=torch.float64, device=device)
    step = trainer.config.local_batch_size
    for start in range(0, len(seeds), step):
        end = start + step
        batch = trainer.rollout(labels[start:end], seeds[start:end], generator)
        w = weights[start:end]
        kl = (batch.logprobs - batch.ref_logprobs).mul(batch.loss_mask).sum(1)  # k1, summed over the policy's tokens
        known = ~torch.isnan(batch.success)
        sums += torch.stack([
            batch.raw_scores.double() @ w, batch.scores.double() @ w, kl.double() @ w, batch.has_stop.double() @ w,
            torch.nan_to_num(batch.success, nan=0.0).double() @ w, known.double() @ w, batch.turns.double() @ w, w.sum(),
        ])
    if trainer.world_size > 1:
        sums = trainer.accelerator.reduce(sums, reduction="sum")
    return _finish(dict(zip(SUMS, sums.tolist())))


def env_summary(trainer, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """summary.json's env entries: what was played, the held-out return and success before and after, and
    the env steps of training (all ranks)."""
    cfg = trainer.config
    history = trainer.metrics.history
    return {
        "env": cfg.env, "env_kwargs": trainer.experience.spec.kwargs, "max_turns": cfg.max_turns,
        "max_episode_tokens": trainer.experience.runner.limits.max_tokens,
        "dataset_name": None, "num_train_prompts": None, "num_eval_prompts": None,
        "num_eval_episodes": len(trainer.prompts.eval_seeds),
        "return_mean_before": before.get("return_mean"), "return_mean_after": after.get("return_mean"),
        "success_rate_before": before.get("success_rate"), "success_rate_after": after.get("success_rate"),
        "turns_mean_after": after.get("turns_mean"),
        # env/steps is each rank's count averaged over ranks; logged every --logging_steps updates
        "env_steps": (round(sum(row.get("env/steps", 0.0) for row in history) * trainer.world_size)
                      if cfg.logging_steps == 1 else None),
    }


def episode_statistics(episodes: list[Episode]) -> dict[str, Any]:
    """Mean return, success rate (None if the env reports none), turns and env steps of some episodes."""
    n = max(len(episodes), 1)
    known = [e.success for e in episodes if e.success is not None]
    return {
        "episodes": len(episodes),
        "return_mean": sum(e.total_return for e in episodes) / n,
        "success_rate": sum(known) / len(known) if known else None,
        "turns_mean": sum(e.turns for e in episodes) / n,
        "env_steps": sum(e.turns for e in episodes),
    }


@torch.no_grad()
def evaluate_policy(model_dir: str, env: str, env_kwargs: Any, *, episodes: int, seed: int, temperature: float,
                    max_new_tokens: int, max_turns: int | None, max_episode_tokens: int | None = None,
                    batch_size: int = 64, shown_out: list[dict[str, Any]] | None = None,
                    num_shown: int = 0) -> dict[str, Any]:
    """A saved policy on ``episodes`` held-out seeds with the built-in sampler, on the CPU or one GPU.

    The first ``num_shown`` episodes go to ``shown_out`` as conversations (:func:`shown_episode`)."""
    from rlhf.common.models import load_causal_lm, load_tokenizer
    from rlhf.envs.chat import ChatFormat
    from rlhf.envs.episodes import EpisodeLimits, EpisodeRunner
    from rlhf.envs.experience import model_context_length
    from rlhf.envs.make import EnvSpec
    from rlhf.envs.seeds import HELD_OUT_BASE
    from rlhf.rl.sampler import HFSampler, SamplingSettings

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = load_tokenizer(model_dir)
    policy = load_causal_lm(model_dir, tokenizer).to(device).eval()
    stop = tokenizer.eos_token_id
    sampler = HFSampler(policy, SamplingSettings(max_new_tokens, temperature, tokenizer.pad_token_id, stop, batch_size), device)
    budget = max_episode_tokens or model_context_length(model_dir)
    runner = EpisodeRunner(EnvSpec.from_flags(env, env_kwargs), sampler, ChatFormat(tokenizer, stop), tokenizer,
                           EpisodeLimits(max_new_tokens, max_turns, budget), stop, tokenizer.pad_token_id, device=device)
    generator = torch.Generator(device=device).manual_seed(seed + 10_000)
    seeds = [HELD_OUT_BASE + k for k in range(episodes)]
    played: list[Episode] = []
    for start in range(0, episodes, batch_size):
        played += runner.run(seeds[start : start + batch_size], generator)
    if shown_out is not None:
        shown_out.extend(shown_episode(e) for e in played[:num_shown])
    return episode_statistics(played)


def shown_episode(episode: Episode) -> dict[str, Any]:
    """One episode as its env seed, the conversation (``messages``), return, success and how it ended."""
    ended = "terminated" if episode.terminated else "truncated" if episode.truncated else "running"
    return {"env_seed": episode.seed, "messages": episode.messages, "return": episode.total_return,
            "success": episode.success, "turns": episode.turns, "ended": ended}
