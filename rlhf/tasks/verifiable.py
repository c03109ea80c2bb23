"""A task with an exactly checkable answer, for RL with verifiable rewards (`rlhf grpo`, `rlhf rloo`).

The prompt gives three digits; the answer is the same digits in reverse order::

    "reverse 381:"  ->  "183"

Digits are single tokens for the shipped tokenizer (`rlhf tiny-model`), so a tiny model can learn the
skill (copy the digit three, then one, then five places back) in minutes on a CPU. The SFT
demonstrations (`rlhf/data/reverse_sft.jsonl`) are noisy on purpose: half of them reverse the digits,
the other half show them in a random order, so the SFT policy answers right only part of the time and
reinforcement learning has a clear, checkable way up. Held-out prompts are digit triples never seen in
training.

Reward functions (the `--reward_fn` signature: prompts, completions -> one float per pair):

- :func:`reward` -- 1.0 for exactly the reversed digits (surrounding spaces ignored), else 0.0.
- :func:`digit_accuracy` -- the share of the three positions that hold the right digit (partial credit).

    rlhf grpo --reward_fn rlhf.tasks.verifiable:reward ...
    rlhf grpo --reward_fn rlhf.tasks.verifiable:reward,rlhf.tasks.verifiable:digit_accuracy --reward_weights 1.0 0.5 ...
"""

from __future__ import annotations

import itertools
import random
import re

__all__ = ["answer", "digit_accuracy", "make_prompt", "reward", "sft_rows", "split_triples"]

DIGITS = "0123456789"
LENGTH = 3
_PROMPT = re.compile(r"reverse (\d+):\s*$")


def make_prompt(digits: str) -> str:
    return f"reverse {digits}:"


def answer(prompt: str) -> str | None:
    """The expected completion of a task prompt (None for a prompt of another shape)."""
    match = _PROMPT.search(prompt)
    return match.group(1)[::-1] if match else None


def _check(prompts: list[str], completions: list[str], name: str) -> None:
    if len(prompts) != len(completions):
        raise ValueError(f"{name}: got {len(prompts)} prompts but {len(completions)} completions")


def reward(prompts: list[str], completions: list[str]) -> list[float]:
    """1.0 when the completion is exactly the reversed digits, else 0.0."""
    _check(prompts, completions, "reward")
    return [float(answer(p) is not None and c.strip() == answer(p)) for p, c in zip(prompts, completions)]


def digit_accuracy(prompts: list[str], completions: list[str]) -> list[float]:
    """Share of the answer's positions holding the right digit (a longer completion gains nothing)."""
    _check(prompts, completions, "digit_accuracy")
    scores = []
    for prompt, completion in zip(prompts, completions):
        expected, given = answer(prompt), completion.strip()
        if not expected:
            scores.append(0.0)
            continue
        right = sum(a == b for a, b in zip(expected, given))
        scores.append(right / max(len(expected), len(given)))
    return scores


def split_triples(rng: random.Random, held_out_fraction: float = 0.2) -> tuple[list[str], list[str]]:
    """All digit triples, shuffled, split into training and held-out prompts' digits."""
    triples = ["".join(t) for t in itertools.product(DIGITS, repeat=LENGTH)]
    rng.shuffle(triples)
    n_eval = int(len(triples) * held_out_fraction)
    return triples[n_eval:], triples[:n_eval]


def sft_rows(rng: random.Random, triples: list[str], n: int, correct_fraction: float = 0.5) -> list[dict[str, str]]:
    """Demonstrations: the reversed digits with probability ``correct_fraction``, else a random order."""
    rows = []
    for _ in range(n):
        digits = rng.choice(triples)
        if rng.random() < correct_fraction:
            completion = digits[::-1]
        else:
            completion = "".join(rng.sample(digits, len(digits)))
        rows.append({"prompt": make_prompt(digits), "completion": completion})
    return rows
