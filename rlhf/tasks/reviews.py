"""The task shipped with the repository: short reviews of places, scored by a programmatic gold scorer.

A prompt asks for a review of a place ("Review the cafe near the station:"). A good completion is a
short list of clauses about aspects *of that place* ("the coffee was great and the staff was friendly.")
with positive adjectives. The gold scorer stands in for a human judge, so the demo can measure true
progress, not only the learned reward:

    gold(prompt, completion) = mean over clauses c of v(c)  -  0.5 * [completion is malformed]

with v(c) = +1 / 0 / -1 for a positive / neutral / negative adjective about a relevant aspect named
once, and v(c) = -1 for an off-topic aspect, a repeated aspect or an unknown adjective. No clause at all
scores -1; the result is clipped to [-1, 1].

Why this task: a model of a few hundred thousand parameters learns the format from demonstrations in
seconds on a CPU (SFT), the demonstrations use adjectives of every sentiment, so the SFT policy scores
about 0; a reward model learns the preference from K = 4 ranked responses; and PPO has a clear way up
(pick positive adjectives, stay on topic) that the gold scorer can confirm.

`gold_reward` has the signature of a `--reward_fn` callable: `rlhf ppo --reward_fn rlhf.tasks.reviews:gold_reward`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

PLACES: dict[str, tuple[str, ...]] = {
    "cafe": ("coffee", "cake", "staff", "music"),
    "hotel": ("room", "bed", "breakfast", "view"),
    "restaurant": ("food", "service", "wine", "dessert"),
    "cinema": ("film", "seating", "sound", "popcorn"),
    "park": ("garden", "path", "lake", "playground"),
    "gym": ("equipment", "trainer", "shower", "class"),
    "library": ("collection", "desk", "wifi", "librarian"),
    "bakery": ("bread", "pastry", "price", "baker"),
    "museum": ("exhibition", "guide", "building", "shop"),
    "beach": ("sand", "water", "weather", "bar"),
}
POSITIVE: tuple[str, ...] = ("great", "good", "lovely", "excellent", "wonderful", "friendly", "fresh", "clean")
NEGATIVE: tuple[str, ...] = ("bad", "awful", "terrible", "rude", "dirty", "stale", "noisy", "boring")
NEUTRAL: tuple[str, ...] = ("okay", "fine", "average", "plain")
ADJECTIVES: tuple[str, ...] = POSITIVE + NEGATIVE + NEUTRAL
SENTIMENT: dict[str, float] = {**dict.fromkeys(POSITIVE, 1.0), **dict.fromkeys(NEGATIVE, -1.0), **dict.fromkeys(NEUTRAL, 0.0)}

PROMPT_TEMPLATES: tuple[str, ...] = (
    "Review the {place}{where}:",
    "Write a short review of the {place}{where}:",
    "How was the {place}{where}?",
    "Tell me about your visit to the {place}{where}.",
    "Describe the {place}{where}.",
)
LOCATIONS: tuple[str, ...] = (
    "",
    " in town",
    " near the station",
    " by the river",
    " on Main Street",
    " downtown",
    " next door",
    " in the old town",
)
MAX_CLAUSES = 3
MALFORMED_PENALTY = 0.5

_CLAUSE = re.compile(r"the (\w+) was (\w+)")
_WELL_FORMED = re.compile(r"^\s*the \w+ was \w+( and the \w+ was \w+){0," + str(MAX_CLAUSES - 1) + r"}\s*\.?\s*$")
_PLACE = re.compile(r"\b(" + "|".join(PLACES) + r")\b")


def all_prompts() -> list[str]:
    """Every prompt of the task (templates x places x locations), in a fixed order."""
    return [
        t.format(place=p, where=w) for t in PROMPT_TEMPLATES for p in PLACES for w in LOCATIONS
    ]


def place_of(prompt: str) -> str | None:
    """The place a prompt asks about (the first place name in it), or None."""
    m = _PLACE.search(prompt.lower())
    return m.group(1) if m else None


def is_well_formed(completion: str) -> bool:
    """True if the completion is 1..3 clauses "the <aspect> was <adjective>" joined by "and", then "."."""
    return bool(_WELL_FORMED.match(completion.strip().lower()))


def gold_score(prompt: str, completion: str) -> float:
    """The gold score in [-1, 1] of one completion (see the module docstring for the rule)."""
    text = completion.strip().lower()
    clauses = _CLAUSE.findall(text)
    if not clauses:
        return -1.0
    place = place_of(prompt)
    relevant = PLACES.get(place, ()) if place is not None else None
    seen: set[str] = set()
    values = []
    for aspect, adjective in clauses:
        on_topic = relevant is None or aspect in relevant
        if not on_topic or aspect in seen or adjective not in SENTIMENT:
            values.append(-1.0)
        else:
            values.append(SENTIMENT[adjective])
        seen.add(aspect)
    score = sum(values) / len(values)
    if not is_well_formed(text):
        score -= MALFORMED_PENALTY
    return max(-1.0, min(1.0, score))


def gold_reward(prompts: list[str], completions: list[str]) -> list[float]:
    """`--reward_fn`-compatible gold scorer: one float per (prompt, completion) pair."""
    if len(prompts) != len(completions):
        raise ValueError(f"gold_reward: got {len(prompts)} prompts but {len(completions)} completions")
    return [gold_score(p, c) for p, c in zip(prompts, completions)]


@dataclass
class ResponseNoise:
    """How a simulated labeller's or demonstrator's responses go wrong (probabilities per response/clause)."""

    off_topic: float = 0.0  # a clause names an aspect of another place
    malformed: float = 0.0  # the response is cut short or gets stray words


def sample_review(rng: random.Random, prompt: str, noise: ResponseNoise | None = None) -> str:
    """One completion for `prompt`: 1..3 clauses about distinct aspects, adjectives of any sentiment.

    Completions start with a space (the prompt does not end with one), as SFT data should.
    """
    noise = noise or ResponseNoise()
    place = place_of(prompt) or rng.choice(list(PLACES))
    n = rng.randint(1, MAX_CLAUSES)
    aspects = rng.sample(PLACES[place], n)
    clauses = []
    for aspect in aspects:
        if rng.random() < noise.off_topic:
            other = rng.choice([p for p in PLACES if p != place])
            aspect = rng.choice(PLACES[other])
        clauses.append(f"the {aspect} was {rng.choice(ADJECTIVES)}")
    text = " and ".join(clauses) + "."
    if rng.random() < noise.malformed:
        words = text.rstrip(".").split()
        if rng.random() < 0.5:
            text = " ".join(words[: rng.randint(2, max(2, len(words) - 1))])
        else:
            text = " ".join(words + rng.sample(words, min(3, len(words))))
    return " " + text
