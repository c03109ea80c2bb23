"""Generate the datasets of the shipped RLHF task (rlhf/tasks/reviews.py) into rlhf/data/. Deterministic given --seed.

    python scripts/make_rlhf_data.py [--out_dir rlhf/data] [--seed 0]

Files written (JSON Lines, one example per line):
  corpus.txt          text the tiny model's tokenizer is trained on
  sft.jsonl           {prompt, completion}: demonstrations (on topic, well formed, any sentiment)
  sft_eval.jsonl      {prompt, completion}: held-out demonstrations on held-out prompts
  rankings.jsonl      {prompt, responses: [best, ..., worst]}: K = 4 responses ranked by gold score + noise
  pairs_eval.jsonl    {prompt, chosen, rejected}: held-out pairs labelled by the exact gold score
  prompts.jsonl       {prompt}: PPO training prompts
  prompts_eval.jsonl  {prompt}: held-out prompts (PPO evaluation)
  reverse_sft.jsonl, reverse_prompts.jsonl, reverse_prompts_eval.jsonl: the verifiable digit-reversal
                      task of rlhf/tasks/verifiable.py (noisy SFT demonstrations, RL prompts, held-out prompts)
Training and held-out files use disjoint prompts.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from classic_rl.safe_io import dumps_strict
from rlhf.tasks import verifiable
from rlhf.tasks.reviews import ResponseNoise, all_prompts, gold_score, sample_review

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "rlhf" / "data"
HELD_OUT_FRACTION = 0.2
N_SFT, N_SFT_EVAL = 2000, 200
N_RANKINGS, K = 1000, 4
N_PAIRS_EVAL = 300
LABEL_NOISE_STD = 0.3  # std of the Gaussian noise added to gold scores before ranking (human-label noise)
RANKING_NOISE = ResponseNoise(off_topic=0.15, malformed=0.15)

GENERIC_TEXT = """\
The assistant answers the user. A review tells others what a visit was like.
We went there on a sunny day and stayed for an hour. It was worth the trip, and we would go again.
Some places are busy at the weekend, so it is better to arrive early in the morning.
"""


def split_prompts(rng: random.Random) -> tuple[list[str], list[str]]:
    """Shuffle all task prompts and hold out a fixed fraction of them for evaluation."""
    prompts = all_prompts()
    rng.shuffle(prompts)
    n_eval = int(len(prompts) * HELD_OUT_FRACTION)
    return prompts[n_eval:], prompts[:n_eval]


def sft_rows(rng: random.Random, prompts: list[str], n: int) -> list[dict]:
    """Demonstrations: well formed and on topic; adjectives of every sentiment, so gold mean is about 0."""
    rows = []
    for _ in range(n):
        prompt = rng.choice(prompts)
        rows.append({"prompt": prompt, "completion": sample_review(rng, prompt)})
    return rows


def ranking_rows(rng: random.Random, prompts: list[str], n: int) -> list[dict]:
    """K responses per prompt, ordered best..worst by gold score plus label noise (like human rankings)."""
    rows = []
    for _ in range(n):
        prompt = rng.choice(prompts)
        responses = [sample_review(rng, prompt, RANKING_NOISE) for _ in range(K)]
        noisy = [gold_score(prompt, r) + rng.gauss(0.0, LABEL_NOISE_STD) for r in responses]
        order = sorted(range(K), key=lambda i: -noisy[i])
        rows.append({"prompt": prompt, "responses": [responses[i] for i in order]})
    return rows


def eval_pair_rows(rng: random.Random, prompts: list[str], n: int) -> list[dict]:
    """Held-out pairs with different gold scores, chosen = the higher one (no label noise)."""
    rows = []
    while len(rows) < n:
        prompt = rng.choice(prompts)
        a, b = (sample_review(rng, prompt, RANKING_NOISE) for _ in range(2))
        ga, gb = gold_score(prompt, a), gold_score(prompt, b)
        if ga == gb:
            continue
        chosen, rejected = (a, b) if ga > gb else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows


def corpus_lines(rng: random.Random, prompts: list[str], n_reviews: int = 1000) -> list[str]:
    """Tokenizer training text: every prompt, many reviews (noisy ones too) and a little generic English."""
    lines = list(prompts)
    for _ in range(n_reviews):
        prompt = rng.choice(prompts)
        lines.append(prompt + sample_review(rng, prompt, RANKING_NOISE))
    lines.extend(GENERIC_TEXT.splitlines())
    return lines


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w") as f:
        for row in rows:
            f.write(dumps_strict(row) + "\n")


def generate(out_dir: Path, seed: int = 0) -> dict[str, int]:
    """Write every dataset file into out_dir; return the number of rows of each."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    train_prompts, eval_prompts = split_prompts(rng)
    files = {
        "sft.jsonl": sft_rows(rng, train_prompts, N_SFT),
        "sft_eval.jsonl": sft_rows(rng, eval_prompts, N_SFT_EVAL),
        "rankings.jsonl": ranking_rows(rng, train_prompts, N_RANKINGS),
        "pairs_eval.jsonl": eval_pair_rows(rng, eval_prompts, N_PAIRS_EVAL),
        "prompts.jsonl": [{"prompt": p} for p in train_prompts],
        "prompts_eval.jsonl": [{"prompt": p} for p in eval_prompts],
    }
    for name, rows in files.items():
        write_jsonl(out_dir / name, rows)
    corpus = corpus_lines(rng, all_prompts())
    (out_dir / "corpus.txt").write_text("\n".join(corpus) + "\n")
    reverse = verifiable_files(random.Random(seed + 1))  # its own stream: the files above stay as they were
    for name, rows in reverse.items():
        write_jsonl(out_dir / name, rows)
    return {**{k: len(v) for k, v in files.items()}, **{k: len(v) for k, v in reverse.items()}, "corpus.txt": len(corpus)}


N_REVERSE_SFT = 4000


def verifiable_files(rng: random.Random) -> dict[str, list[dict]]:
    """The digit-reversal task (rlhf/tasks/verifiable.py): noisy SFT demonstrations on training triples, RL
    prompts, and held-out prompts on triples never used in training."""
    train, held_out = verifiable.split_triples(rng)
    return {
        "reverse_sft.jsonl": verifiable.sft_rows(rng, train, N_REVERSE_SFT),
        "reverse_prompts.jsonl": [{"prompt": verifiable.make_prompt(t)} for t in train],
        "reverse_prompts_eval.jsonl": [{"prompt": verifiable.make_prompt(t)} for t in held_out],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out_dir", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, n in generate(args.out_dir, args.seed).items():
        print(f"{args.out_dir / name}: {n} rows")


if __name__ == "__main__":
    main()
