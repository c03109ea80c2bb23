"""Episodes of a text env, run side by side: every running episode's turn is sampled in one batch.

One episode, as tokens::

    query     the first user turn (chat template, generation prompt)
    segments  policy reply 1 | env turn 1 | policy reply 2 | env turn 2 | ... | policy reply K [| final env turn]

A policy reply is the sampled tokens up to and including the stop token (kept exactly as sampled); the
reply's text up to the stop token is the action. An env turn is the template's text after the reply
(``rlhf.envs.chat``). The final observation is kept after the last reply only when the episode was
truncated: the critic's value of that state is the bootstrap (a terminated episode has nothing after).

An episode ends when the env says terminated or truncated, and is truncated by ``max_turns`` policy
turns or by the token budget: a turn is only sampled when the conversation and ``max_new_tokens`` more
fit in ``max_tokens``. One turn of all running episodes is one call of the trainer's
:class:`~rlhf.rl.sampler.Sampler` (the built-in one or any other backend), then one env step per
episode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rlhf.envs.chat import ChatFormat
from rlhf.envs.make import CheckedEnv, EnvSpec
from rlhf.rl.sampler import Sampler, truncate_after_stop

__all__ = ["Episode", "EpisodeLimits", "EpisodeRunner", "Segment"]

HARD_TURN_LIMIT = 10_000  # without --max_turns or a token budget: an env that never ends is an error


@dataclass
class Segment:
    """Consecutive tokens of one speaker after the query."""

    tokens: list[int]
    trained: bool  # True: the policy's reply (trained on); False: the environment's text (context only)
    logprobs: list[float] | None = None  # the sampler's, for the policy's tokens (None: it gave none)


@dataclass
class Episode:
    seed: int
    query: list[int]
    messages: list[dict[str, str]]  # the conversation as text ({"messages": [...]}, SFT format)
    segments: list[Segment] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)  # the env's reward after each policy turn
    has_stop: list[bool] = field(default_factory=list)  # whether each reply ended with the stop token
    terminated: bool = False
    truncated: bool = False
    success: bool | None = None  # info["success"] at the end, where the env reports it
    invalid_turns: int = 0  # replies the env marked info["invalid"]
    done: bool = False

    @property
    def length(self) -> int:
        return len(self.query) + sum(len(s.tokens) for s in self.segments)

    @property
    def turns(self) -> int:
        return len(self.rewards)

    @property
    def total_return(self) -> float:
        """The undiscounted return."""
        return float(sum(self.rewards))

    def context(self) -> list[int]:
        return self.query + [t for s in self.segments for t in s.tokens]

    def end(self, terminated: bool, info: dict[str, Any]) -> None:
        self.done, self.terminated, self.truncated = True, terminated, not terminated
        if "success" in info:
            self.success = bool(info["success"])


@dataclass
class EpisodeLimits:
    max_new_tokens: int  # tokens of one reply
    max_turns: int | None  # policy turns (None: no limit but the token budget)
    max_tokens: int | None  # tokens of the whole conversation (None: no budget)


class EpisodeRunner:
    """Builds the envs once (one per row of a batch) and runs batches of episodes with a sampler."""

    def __init__(self, spec: EnvSpec, sampler: Sampler, chat: ChatFormat, tokenizer, limits: EpisodeLimits,
                 stop_token_id: int | None, pad_token_id: int,
                 all_finished: Callable[[torch.Tensor], bool] | None = None, device: torch.device | str = "cpu"):
        """``all_finished(done)``: agree over all processes whether every episode is done (when a sampling
        forward is a collective, every rank must sample as many turns); None: this rank alone decides."""
        self.spec, self.sampler, self.chat, self.tokenizer, self.limits = spec, sampler, chat, tokenizer, limits
        self.stop_token_id, self.pad_token_id, self.all_finished = stop_token_id, pad_token_id, all_finished
        self.device = device
        self.envs: list[CheckedEnv] = []

    def _envs(self, n: int) -> list[CheckedEnv]:
        while len(self.envs) < n:
            self.envs.append(self.spec.make())
        return self.envs[:n]

    def start(self, seeds: list[int]) -> list[Episode]:
        episodes = []
        for env, seed in zip(self._envs(len(seeds)), seeds):
            observation, _ = env.reset(int(seed))
            episodes.append(Episode(int(seed), self.chat.first_turn(observation), [{"role": "user", "content": observation}]))
        return episodes

    def _room_for_a_turn(self, episode: Episode, extra: int = 0) -> bool:
        budget = self.limits.max_tokens
        return budget is None or episode.length + extra + self.limits.max_new_tokens <= budget

    @torch.no_grad()
    def run(self, seeds: list[int], generator: torch.Generator) -> list[Episode]:
        """One episode per seed, side by side (row i resets with ``seeds[i]``); deterministic given the
        seeds and ``generator``'s state."""
        episodes = self.start(seeds)
        envs = self._envs(len(seeds))
        for episode in episodes:
            if not self._room_for_a_turn(episode):
                episode.end(False, {})  # not even one reply fits the budget
        turn = 0
        while True:
            active = [i for i, e in enumerate(episodes) if not e.done]
            if self.all_finished is not None:
                if self.all_finished(torch.tensor([not active], device=self.device)):
                    break
            elif not active:
                break
            turn += 1
            if turn > HARD_TURN_LIMIT:
                raise envs[active[0]].never_ends(turn - 1)
            # A rank whose episodes all ended still samples (one row) while others run: the forwards are collective.
            rows = active or [0]
            samples = self.sampler.sample([episodes[i].context() for i in rows], generator)
            if not active:
                continue
            self._take_turn([episodes[i] for i in active], [envs[i] for i in active], samples, turn)
        return episodes

    def _take_turn(self, episodes: list[Episode], envs: list[CheckedEnv], samples, turn: int) -> None:
        cut = truncate_after_stop(samples.responses, self.stop_token_id, self.pad_token_id)
        lengths = cut.mask.sum(1).tolist()
        for j, (episode, env) in enumerate(zip(episodes, envs)):
            tokens = cut.responses[j, : lengths[j]].tolist()
            logprobs = samples.logprobs[j, : lengths[j]].float().tolist() if samples.logprobs is not None else None
            has_stop = bool(cut.has_stop[j])
            reply = self.tokenizer.decode(tokens, skip_special_tokens=True)
            observation, reward, terminated, truncated, info = env.step(reply, turn)
            episode.segments.append(Segment(tokens, True, logprobs))
            episode.rewards.append(reward)
            episode.has_stop.append(has_stop)
            episode.invalid_turns += bool(info.get("invalid", False))
            episode.messages.append({"role": "assistant", "content": reply})
            if terminated:
                episode.end(True, info)
                continue
            env_tokens = self.chat.env_turn(observation, has_stop)
            out_of_turns = self.limits.max_turns is not None and episode.turns >= self.limits.max_turns
            if truncated or out_of_turns or not self._room_for_a_turn(episode, len(env_tokens)):
                # Truncated: the final observation stays in the context (the critic's bootstrap value reads
                # it), if it fits the budget at all.
                budget = self.limits.max_tokens
                if budget is None or episode.length + len(env_tokens) <= budget:
                    episode.segments.append(Segment(env_tokens, False))
                episode.end(False, info)
                continue
            episode.segments.append(Segment(env_tokens, False))
            episode.messages.append({"role": "user", "content": observation})
