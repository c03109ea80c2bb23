"""One `PPOTrainer.step` on a fixed global batch, run by tests/test_rlhf_dataparallel.py.

    python tests/rlhf_dp_step.py --model DIR --out FILE --global_batch 8 --world_size 1
    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \\
        tests/rlhf_dp_step.py --model DIR --out FILE --global_batch 8 --world_size 2

Every process builds the same global batch of sequences (seeded; logprobs, reference logprobs and values
from the initial weights, which are equal on all ranks) and keeps its own slice of
``global_batch / world_size`` rows; the rollout (sampling, which differs per rank by design) is replaced by
that slice. ``PPOTrainer.step`` then runs as in training: KL shaping, GAE, advantage whitening, the
``classic_rl`` PPO epochs with the DDP gradient all-reduce, clipping and AdamW. Rank 0 writes the trained
weights and the step's metrics to ``--out`` (safetensors, metrics in the metadata).

Advantages are whitened with the statistics of the whole global batch
(``rlhf.distributed.masked_whiten_across_processes``), so the step does not depend on the world size.
Every rank's slice holds the same number of real response tokens (the losses are token means per rank,
and DDP averages the ranks' gradients).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

import rlhf.ppo as ppo_module  # noqa: E402
from rlhf.distributed import masked_whiten_across_processes, unwrap_for_generation  # noqa: E402
from rlhf.ppo import PPOTrainer, Rollout  # noqa: E402
from rlhf.ppo_config import PPOConfig  # noqa: E402
from rlhf.ppo_models import PolicyAndValue  # noqa: E402
from rlhf.rollout import kl_per_token, token_logprobs  # noqa: E402

PROMPT_LENGTHS = (6, 3, 5, 4, 4, 6, 3, 5)
# Real response tokens per row; rows of 5 (= the response length) never stop. Each half sums to 14,
# so both ranks of a 2-process run hold the same number of real tokens.
RESPONSE_LENGTHS = (2, 5, 3, 4, 5, 2, 4, 3)
RESPONSE_WIDTH = 5


def global_batch(trainer: PPOTrainer, size: int) -> Rollout:
    """The seeded global rollout batch, identical on every rank."""
    if size != len(RESPONSE_LENGTHS):
        raise ValueError(f"--global_batch must be {len(RESPONSE_LENGTHS)}, got {size}")
    g = torch.Generator().manual_seed(123)
    pad, stop, vocab = trainer.pad_id, trainer.stop_id, len(trainer.tokenizer)
    specials = {pad, stop}
    context = max(PROMPT_LENGTHS)

    def tokens(n: int) -> torch.Tensor:
        out = torch.randint(8, vocab, (n,), generator=g)
        for i, t in enumerate(out.tolist()):
            while t in specials:
                t = (t + 1) % vocab
            out[i] = t
        return out

    queries = torch.full((size, context), pad)
    query_mask = torch.zeros((size, context), dtype=torch.long)
    responses = torch.full((size, RESPONSE_WIDTH), pad)
    mask = torch.zeros((size, RESPONSE_WIDTH), dtype=torch.bool)
    for row, (p, r) in enumerate(zip(PROMPT_LENGTHS, RESPONSE_LENGTHS)):
        queries[row, context - p :] = tokens(p)
        query_mask[row, context - p :] = 1
        responses[row, :r] = tokens(r)
        if r < RESPONSE_WIDTH:
            responses[row, r - 1] = stop
        mask[row, :r] = True
    query_responses = torch.cat([queries, responses], 1)
    attention_mask = torch.cat([query_mask, mask.long()], 1)
    with torch.no_grad():
        logits, values = trainer.accelerator.unwrap_model(trainer.model)(query_responses, attention_mask, context)
        logprobs = token_logprobs(logits, responses, trainer.config.temperature)
        ref_logits = trainer._reference_logits(query_responses, attention_mask, context)
        ref_logprobs = token_logprobs(ref_logits, responses, trainer.config.temperature)
    ref_logprobs = ref_logprobs + 0.1 * torch.randn(ref_logprobs.shape, generator=g)  # a policy that has moved
    valid = mask.float()
    logprobs, ref_logprobs, values = logprobs * valid, ref_logprobs * valid, values.float() * valid
    scores = torch.randn(size, generator=g)
    has_stop = torch.tensor([r < RESPONSE_WIDTH for r in RESPONSE_LENGTHS])
    kl = kl_per_token(logprobs, ref_logprobs, trainer.config.kl_estimator) * valid
    return Rollout(
        [""] * size, [""] * size, query_responses, attention_mask, context, responses, mask,
        logprobs, ref_logprobs, values, scores, scores.clone(), has_stop, kl,
    )


def rows(batch: Rollout, start: int, end: int) -> Rollout:
    """The rows ``start:end`` of every per-sequence field."""
    fields = {}
    for name, value in vars(batch).items():
        fields[name] = value[start:end] if isinstance(value, (torch.Tensor, list)) else value
    return Rollout(**fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--global_batch", type=int, default=8)
    parser.add_argument("--world_size", type=int, required=True, help="expected number of processes")
    parser.add_argument("--num_ppo_epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.global_batch % world:
        raise ValueError(f"--global_batch {args.global_batch} does not split over {world} processes")
    data = REPO / "rlhf" / "data"
    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(
            output_dir=tmp, model_name_or_path=args.model, reward_fn="rlhf.task:gold_reward",
            dataset_name=str(data / "prompts.jsonl"), eval_dataset_name=str(data / "prompts_eval.jsonl"),
            per_device_train_batch_size=args.global_batch // world, num_mini_batches=1, gradient_accumulation_steps=1,
            num_ppo_epochs=args.num_ppo_epochs, total_episodes=args.global_batch, response_length=RESPONSE_WIDTH,
            learning_rate=1e-3, max_grad_norm=0.5, temperature=0.7, kl_coef=0.05, seed=0, use_cpu=True,
            num_sample_generations=0, disable_tqdm=True,
        )
        trainer = PPOTrainer(config)
    if trainer.world_size != args.world_size:
        raise SystemExit(f"expected world size {args.world_size}, got {trainer.world_size} (launcher misconfigured)")
    with unwrap_for_generation(trainer.model, trainer.accelerator) as unwrapped:
        assert isinstance(unwrapped, PolicyAndValue), type(unwrapped)

    full = global_batch(trainer, args.global_batch)
    local_size = args.global_batch // world
    local = rows(full, trainer.rank * local_size, (trainer.rank + 1) * local_size)
    trainer.rollout = lambda *_, **__: local
    if hasattr(ppo_module, "masked_whiten"):  # ppo.py whitens per rank; use the global statistics
        ppo_module.masked_whiten = masked_whiten_across_processes
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    metrics, _ = trainer.step(local.prompts, [[0]] * local_size)

    if trainer.accelerator.is_main_process:
        from safetensors.torch import save_file

        weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        moved = max((weights[k] - before[k]).abs().max().item() for k in weights)
        save_file(weights, args.out, metadata={
            "metrics": json.dumps(metrics), "world_size": str(trainer.world_size), "max_change": repr(moved),
        })
    trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main()
