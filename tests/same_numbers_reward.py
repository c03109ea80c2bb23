"""A reward that varies between random completions (the fraction of ASCII letters), so the fixed-seed
runs of tests/test_rlhf_same_numbers.py have non-zero group advantages even from a random-init model."""


def letter_fraction(prompts: list[str], completions: list[str]) -> list[float]:
    return [sum(c.isascii() and c.isalpha() for c in text) / max(len(text), 1) for text in completions]
