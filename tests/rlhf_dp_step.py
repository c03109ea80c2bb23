"""One `PPOTrainer.step` per case on a fixed global batch, run by tests/test_rlhf_dataparallel.py.

    python tests/rlhf_dp_step.py --model DIR --out_dir DIR --world_size 1 --case mixed:1:mixed --case equal:1:equal
    ACCELERATE_USE_CPU=true accelerate launch --config_file configs/accelerate/cpu_2proc.yaml \
        tests/rlhf_dp_step.py --model DIR --out_dir DIR --world_size 2 --case mixed:1:mixed --case equal:2:equal

A case is ``NAME:GRADIENT_ACCUMULATION_STEPS:LENGTHS``. Every process builds the same global batch of
``--global_batch`` sequences (seeded; logprobs, reference logprobs and values from the initial weights,
which are equal on all ranks) and keeps its own slice of ``global_batch / world_size`` rows; the rollout
(sampling, which differs per rank by design) is replaced by that slice, split into
``GRADIENT_ACCUMULATION_STEPS`` micro batches per optimizer step. ``PPOTrainer.step`` then runs as in
training: KL shaping, GAE, advantage whitening, the ``classic_rl`` PPO epochs with the DDP gradient
all-reduce (under ``no_sync`` for all but the last micro batch), clipping and AdamW. Rank 0 writes the
trained weights and the step's metrics to ``OUT_DIR/NAME.safetensors`` (metrics, the number of DDP
all-reduce calls and the largest weight difference between ranks in the metadata).

Advantages are whitened with the statistics of the whole global batch
(``rlhf.distributed.masked_whiten_across_processes``), so the step does not depend on the world size.
The losses are token means per micro batch, averaged over micro batches and ranks, so the step equals
one process's step on the whole batch when every micro batch holds the same number of real tokens:
``mixed`` lengths give each rank's half 14 real tokens (enough without accumulation), ``equal`` gives
every row 4 (needed with accumulation, where micro batches are random subsets of a rank's rows).
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
from rlhf.distributed import unwrap_for_generation  # noqa: E402
from rlhf.ppo import PPOTrainer, Rollout  # noqa: E402
from rlhf.ppo_config import PPOConfig  # noqa: E402

from classic_rl.core.losses import kl_penalty  # noqa: E402
from rlhf.rl.forward import token_logprobs  # noqa: E402
from rlhf.rl.trainable import PolicyAndValue  # noqa: E402

PROMPT_LENGTHS = (6, 3, 5, 4, 4, 6, 3, 5)
# Real response tokens per row; rows of 5 (= the response length) never stop. Each half of "mixed" sums
# to 14, so both ranks of a 2-process run hold the same number of real tokens.
RESPONSE_LENGTHS = {"mixed": (2, 5, 3, 4, 5, 2, 4, 3), "equal": (4,) * 8}
RESPONSE_WIDTH = 5


def global_batch(trainer: PPOTrainer, size: int, lengths: tuple[int, ...]) -> Rollout:
    """The seeded global rollout batch with ``lengths`` real response tokens per row, identical on every rank."""
    if size != len(lengths):
        raise ValueError(f"--global_batch must be {len(lengths)}, got {size}")
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
    for row, (p, r) in enumerate(zip(PROMPT_LENGTHS, lengths)):
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
    has_stop = torch.tensor([r < RESPONSE_WIDTH for r in lengths])
    kl = kl_penalty(logprobs, ref_logprobs, trainer.config.kl_estimator) * valid
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


def count_allreduces(trainer: PPOTrainer) -> list[int]:
    """Install a DDP communication hook that counts the bucket all-reduces (plain allreduce otherwise)."""
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    calls = [0]
    if isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel):
        def hook(state, bucket):
            calls[0] += 1
            return allreduce_hook(state, bucket)

        trainer.model.register_comm_hook(None, hook)
    return calls


def run_case(args: argparse.Namespace, name: str, accumulation: int, lengths: str, world: int) -> None:
    """Build a trainer, take one step on this rank's slice, write rank 0's weights to OUT_DIR/NAME."""
    data = REPO / "rlhf" / "data"
    local_size = args.global_batch // world
    if local_size % accumulation:
        raise ValueError(f"case {name}: {local_size} sequences per rank do not split into {accumulation} micro batches")
    with tempfile.TemporaryDirectory() as tmp:
        config = PPOConfig(
            output_dir=tmp, model_name_or_path=args.model, reward_fn="rlhf.task:gold_reward",
            dataset_name=str(data / "prompts.jsonl"), eval_dataset_name=str(data / "prompts_eval.jsonl"),
            per_device_train_batch_size=local_size // accumulation, num_mini_batches=1,
            gradient_accumulation_steps=accumulation, num_ppo_epochs=args.num_ppo_epochs,
            total_episodes=args.global_batch, response_length=RESPONSE_WIDTH, learning_rate=1e-3, max_grad_norm=0.5,
            temperature=0.7, kl_coef=0.05, seed=0, use_cpu=True, num_sample_generations=0, disable_tqdm=True,
        )
        trainer = PPOTrainer(config)
    if trainer.world_size != args.world_size:
        raise SystemExit(f"expected world size {args.world_size}, got {trainer.world_size} (launcher misconfigured)")
    with unwrap_for_generation(trainer.model, trainer.accelerator) as unwrapped:
        assert isinstance(unwrapped, PolicyAndValue), type(unwrapped)

    full = global_batch(trainer, args.global_batch, RESPONSE_LENGTHS[lengths])
    local = rows(full, trainer.rank * local_size, (trainer.rank + 1) * local_size)
    trainer.rollout = lambda *_, **__: local
    model = trainer.accelerator.unwrap_model(trainer.model)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    allreduces = count_allreduces(trainer)
    metrics, _ = trainer.step(local.prompts, [[0]] * local_size)

    flat = torch.cat([v.detach().flatten().float() for v in model.state_dict().values()])
    gathered = trainer.accelerator.gather(flat.unsqueeze(0))  # (world, n): every rank's weights
    rank_spread = (gathered - gathered[0]).abs().max().item()
    if trainer.accelerator.is_main_process:
        from safetensors.torch import save_file

        weights = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
        moved = max((weights[k] - before[k]).abs().max().item() for k in weights)
        save_file(weights, str(Path(args.out_dir) / f"{name}.safetensors"), metadata={
            "metrics": json.dumps(metrics), "world_size": str(trainer.world_size), "max_change": repr(moved),
            "allreduce_calls": str(allreduces[0]), "rank_spread": repr(rank_spread),
            "gradient_accumulation_steps": str(accumulation),
        })
    trainer.accelerator.wait_for_everyone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--out_dir", required=True)
    parser.add_argument("--case", action="append", required=True, help="NAME:GRADIENT_ACCUMULATION_STEPS:mixed|equal")
    parser.add_argument("--global_batch", type=int, default=8)
    parser.add_argument("--world_size", type=int, required=True, help="expected number of processes")
    parser.add_argument("--num_ppo_epochs", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if args.global_batch % world:
        raise ValueError(f"--global_batch {args.global_batch} does not split over {world} processes")
    for case in args.case:
        name, accumulation, lengths = case.split(":")
        if lengths not in RESPONSE_LENGTHS:
            raise ValueError(f"--case {case}: lengths must be one of {sorted(RESPONSE_LENGTHS)}")
        run_case(args, name, int(accumulation), lengths, world)


if __name__ == "__main__":
    main()
