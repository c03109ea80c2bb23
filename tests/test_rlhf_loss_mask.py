"""The seam's loss mask: every method trains only on the tokens ``Rollout.loss_mask`` marks.

A response region with two trained segments and a masked segment between them (the layout of a
conversation, environment text between the policy's turns): the masked tokens get exactly zero
gradient in every method's loss, and the loss is the hand-computed sum over the trained tokens.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import save_tiny_model

from rlhf.methods import grpo, ppo, reinforce_pp, rloo
from rlhf.methods.grpo_config import parse_grpo_args
from rlhf.methods.ppo_config import parse_ppo_args
from rlhf.methods.reinforce_pp import parse_reinforce_pp_args
from rlhf.methods.rloo_config import parse_rloo_args

DATA = Path(__file__).resolve().parents[1] / "rlhf" / "data"
WIDTH = 6  # response tokens; no stop token, so every column is a real token
MASKED = [1, 2]  # the environment's segment between two trained ones: [0] and [3, 4, 5]
TRAINED = [0, 3, 4, 5]
COMMON = ["--reward_fn", "same_numbers_reward:letter_fraction", "--dataset_name", str(DATA / "prompts.jsonl"),
          "--eval_dataset_name", str(DATA / "prompts_eval.jsonl"), "--num_eval_prompts", "4", "--stop_token", "None",
          "--seed", "0", "--disable_tqdm", "--report_to", "none", "--use_cpu", "--num_sample_generations", "0"]
GROUP = ["--per_device_train_batch_size", "8", "--max_completion_length", str(WIDTH), "--max_steps", "1"]
METHODS = {
    "ppo": (ppo, ppo.PPOTrainer, parse_ppo_args, ["--total_episodes", "8", "--per_device_train_batch_size", "8",
                                                   "--response_length", str(WIDTH), "--num_ppo_epochs", "1"]),
    "grpo": (grpo, grpo.GRPOTrainer, parse_grpo_args, [*GROUP, "--num_generations", "4", "--loss_type", "dapo"]),
    "rloo": (rloo, rloo.RLOOTrainer, parse_rloo_args, [*GROUP, "--num_generations", "4"]),
    "reinforce_pp": (reinforce_pp, reinforce_pp.ReinforcePPTrainer, parse_reinforce_pp_args, GROUP),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny"))


def one_loss(command: str, tiny: Path, out: Path, monkeypatch):
    """The method's loss on its first micro batch of a holed rollout, with the per-token log-probabilities
    as a leaf tensor (to read their gradient), and the tensors the method built."""
    module, trainer_class, parse, flags = METHODS[command]
    trainer = trainer_class(parse(["--model_name_or_path", str(tiny), "--output_dir", str(out), *COMMON, *flags]))
    batch = trainer.rollout(*trainer.next_batch(), trainer.sample_generator)
    assert batch.mask.all() and batch.responses.shape[1] == WIDTH
    loss_mask = torch.ones_like(batch.loss_mask)
    loss_mask[:, MASKED] = 0
    holed = batch.with_loss_mask(loss_mask)
    assert (holed.kl[:, MASKED] == 0).all() and (holed.logprobs[:, MASKED] == 0).all()

    leaves, captured = [], {}
    real = module.logprobs_and_entropy

    def leaf_logprobs(logits, tokens, temperature):
        logprobs, entropy = real(logits, tokens, temperature)
        leaves.append(logprobs.detach().requires_grad_())
        return leaves[-1], entropy

    def capture(tensors, passes, shuffle, loss_fn):
        captured["tensors"] = tensors
        loss, stats = loss_fn(tensors)  # the whole batch as one micro batch
        captured["loss"], captured["stats"] = loss, stats
        return [stats], [0.0]

    monkeypatch.setattr(module, "logprobs_and_entropy", leaf_logprobs)
    monkeypatch.setattr(trainer, "optimize_on_batch", capture)
    trainer.model.train()
    trainer.update_policy(holed)
    captured["loss"].backward()
    return captured, leaves[0].grad, loss_mask


@pytest.mark.parametrize("command", sorted(METHODS))
def test_masked_tokens_get_exactly_zero_gradient(command, tiny, tmp_path, monkeypatch):
    captured, grad, loss_mask = one_loss(command, tiny, tmp_path / command, monkeypatch)
    assert torch.equal(captured["tensors"]["mask"], loss_mask)  # the mask every loss statistic uses
    assert (grad[:, MASKED] == 0).all(), grad
    assert grad[:, TRAINED].abs().sum() > 0


@pytest.mark.parametrize("command", sorted(METHODS))
def test_two_trained_segments_give_the_hand_computed_loss(command, tiny, tmp_path, monkeypatch):
    """One pass from the sampling weights: every ratio is 1 (no clipping), so the policy loss is
    ``-sum_t A_t / N`` over the trained tokens (N: their count; RLOO: the number of sequences, its
    ratio being the sequence's summed log-probability), and its gradient is ``-A_t / N`` at each."""
    captured, grad, loss_mask = one_loss(command, tiny, tmp_path / command, monkeypatch)
    advantages = captured["tensors"]["advantages"].expand_as(loss_mask)
    n = loss_mask.shape[0] if command == "rloo" else loss_mask.sum()
    expected_grad = -advantages * loss_mask / n
    torch.testing.assert_close(grad, expected_grad, rtol=1e-5, atol=1e-7)
    policy_loss = captured["stats"]["policy"] if command == "ppo" else captured["stats"]["loss"]
    hand = -(advantages * loss_mask).sum() / n
    torch.testing.assert_close(policy_loss, hand, rtol=1e-5, atol=1e-7)
