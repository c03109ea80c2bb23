"""`rlhf reward`: a reward model from ranked responses (step 2 of InstructGPT).

    rlhf reward --model_name_or_path SFT --dataset_name D --output_dir OUT [--config FILE.yaml] [RewardConfig flags]
    rlhf reward --config configs/rlhf/tiny.yaml --model_name_or_path runs/sft --output_dir runs/reward  (its reward: section)

The model is a one-scalar sequence classifier initialised from the SFT model (a new score head,
weight ~ N(0, 1/sqrt(d_model + 1))), read at the last real token of `prompt + response + EOS`.
Data: pairs `{prompt, chosen, rejected}` (Bradley-Terry loss) or rankings `{prompt, responses: [best..worst]}`
(InstructGPT's K-wise loss: all C(K,2) pairs of a prompt in the same batch, each prompt weighted once):

    loss = -1/B sum_b 1/C(K_b,2) sum_{i<j} log sigmoid(r(x_b, y_b,i) - r(x_b, y_b,j) - m)

with an optional margin m (`--margin`, or a `margin` column in a pair dataset). A batch holds
`per_device_train_batch_size` prompts with all their responses. Pairs are rankings with K = 2.

After training, the score is shifted so that the SFT policy's responses score mean 0: completions
sampled from the policy (or given by `--calibration_dataset` rows with a `completion`). The shift is
stored as `score_bias` in the model config; `rlhf.common.models.load_reward_model` applies it.

OUT: model + tokenizer, metrics.jsonl, config.yaml, summary.json (`eval_accuracy` on held-out pairs,
`eval_accuracy_before`, `score_bias`, `train_runtime`, `world_size`, ...). Checkpoints, resuming, the
output-folder rules and the divergence guard are those of `rlhf sft` (see rlhf/steps/runs.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from datasets import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.data.data_collator import DataCollatorMixin
from trl import ModelConfig, RewardConfig, RewardTrainer
from trl.trainer.utils import pad

from rlhf.common.data import (
    DataArguments,
    load_checked_train_eval,
    load_dataset_dict,
    ranked_responses,
    render_prompt,
    response_text,
    reward_text,
    validate_dataset,
)
from rlhf.common.distributed import (
    check_trainer_sharding,
    evaluate_before_training,
    models_loaded_whole,
    prepare_trainer_arguments,
)
from rlhf.common.models import (
    get_score_bias,
    is_sequence_classifier,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    set_score_bias,
)
from rlhf.common.utils import hardware_defaults, parse_args, precision_name
from rlhf.steps.evaluate import mean, reward_model_scores, sample_completions
from rlhf.steps.runs import (
    SafeTrainerMixin,
    check_output_dir,
    finish_run,
    peft_config_for,
    run_directory,
    run_train_loss,
)

# TensorBoard logs in OUT/runs/ by default (`--report_to none|tensorboard|wandb|trackio`).
COMMAND_DEFAULTS: dict[str, Any] = {"report_to": "tensorboard"}


# ----------------------------------------------------------------------------------------------- the loss
def kwise_ranking_loss(
    rewards: torch.Tensor,
    num_responses: torch.Tensor | None = None,
    margin: float | torch.Tensor = 0.0,
) -> torch.Tensor:
    """InstructGPT's K-wise ranking loss (Bradley-Terry when K = 2).

        loss = -1/B sum_b 1/C(K_b,2) sum_{i<j<K_b} log sigmoid(r_b,i - r_b,j - m_b)

    Args:
        rewards: (B, K) scores, each row's responses ordered best first; rows of prompts with fewer
            than K responses are padded on the right (padding values are ignored).
        num_responses: (B,) number of real responses in each row (>= 2); default K for every row.
        margin: a constant, or (B,) per-prompt margins m_b that the better response must win by.
    """
    batch, k = rewards.shape
    if num_responses is None:
        num_responses = torch.full((batch,), k, device=rewards.device)
    better, worse = torch.triu_indices(k, k, offset=1, device=rewards.device)  # every pair i < j
    margin = torch.as_tensor(margin, dtype=rewards.dtype, device=rewards.device)
    if margin.ndim == 1:
        margin = margin[:, None]
    pair_losses = -F.logsigmoid(rewards[:, better] - rewards[:, worse] - margin)  # (B, C(K,2))
    valid = (worse[None, :] < num_responses[:, None]).to(rewards.dtype)  # j real => i real (i < j)
    per_prompt = (pair_losses * valid).sum(dim=1) / valid.sum(dim=1).clamp(min=1.0)
    return per_prompt.mean()


def correct_pairs(rewards: torch.Tensor, num_responses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt: how many of its pairs the scores order correctly, and how many pairs it has."""
    k = rewards.shape[1]
    better, worse = torch.triu_indices(k, k, offset=1, device=rewards.device)
    valid = worse[None, :] < num_responses[:, None]
    right = (rewards[:, better] > rewards[:, worse]) & valid
    return right.sum(dim=1), valid.sum(dim=1)


def scores_by_prompt(scores: torch.Tensor, num_responses: torch.Tensor) -> torch.Tensor:
    """(N,) scores of responses laid out prompt after prompt -> (B, K_max), padded with 0."""
    k_max = int(num_responses.max())
    prompt_index = torch.repeat_interleave(torch.arange(len(num_responses), device=scores.device), num_responses)
    starts = torch.cumsum(num_responses, 0) - num_responses
    rank = torch.arange(len(scores), device=scores.device) - starts[prompt_index]
    out = scores.new_zeros(len(num_responses), k_max)
    out[prompt_index, rank] = scores
    return out


# ----------------------------------------------------------------------------------------------- data
@dataclass
class DataCollatorForRanking(DataCollatorMixin):
    """Flatten each prompt's tokenized responses (best first) into one right-padded batch.

    Returns input_ids / attention_mask of shape (sum_b K_b, L), `num_responses` (B,) and `margin` (B,).
    """

    pad_token_id: int
    default_margin: float = 0.0
    pad_to_multiple_of: int | None = None
    return_tensors: str = "pt"

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        sequences = [torch.tensor(ids) for ex in examples for ids in ex["responses_ids"]]
        margins = [ex.get("margin") for ex in examples]
        return {
            "input_ids": pad(sequences, self.pad_token_id, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of),
            "attention_mask": pad(
                [torch.ones_like(s) for s in sequences], 0, padding_side="right", pad_to_multiple_of=self.pad_to_multiple_of
            ),
            "num_responses": torch.tensor([len(ex["responses_ids"]) for ex in examples]),
            "margin": torch.tensor([self.default_margin if m is None else m for m in margins], dtype=torch.float),
        }


def tokenize_rankings(
    dataset: Dataset, tokenizer: PreTrainedTokenizerBase, max_length: int | None, num_proc: int | None = None
) -> Dataset:
    """Rows of pairs or rankings -> {responses_ids: [ids of prompt+response+EOS, best first], margin?}."""
    if "responses_ids" in dataset.column_names:
        return dataset
    fmt = validate_dataset(dataset, "reward")

    def tokenize(example: dict[str, Any]) -> dict[str, Any]:
        prompt = render_prompt(example["prompt"], tokenizer)
        texts = [reward_text(prompt, response_text(r), tokenizer.eos_token) for r in ranked_responses(example, fmt)]
        return {"responses_ids": [tokenizer(t)["input_ids"] for t in texts]}

    keep = ["margin"] if "margin" in dataset.column_names else []
    drop = [c for c in dataset.column_names if c not in keep]
    dataset = dataset.map(tokenize, remove_columns=drop, num_proc=num_proc, desc="Tokenizing responses")
    if max_length is not None:  # rlhf.common.data.check_lengths has warned with a count
        dataset = dataset.filter(lambda ex: max(len(ids) for ids in ex["responses_ids"]) <= max_length)
    if len(dataset) == 0:
        raise ValueError(f"every example is longer than max_length={max_length} tokens; raise --max_length")
    return dataset


class RankingRewardTrainer(SafeTrainerMixin, RewardTrainer):
    """TRL's RewardTrainer with a batch of prompts (each with all its ranked responses) and the K-wise loss.

    TRL's trainer brings model checks, pad-token setup, LoRA, dropout removal and logging; this subclass
    changes what a dataset row is (a prompt's ranking instead of one pair) and the loss. The mixin adds
    atomic checkpoints and the divergence guard (`rlhf.steps.runs.SafeTrainerMixin`).
    """

    def __init__(self, *args: Any, margin: float = 0.0, **kwargs: Any):
        self._default_margin = margin
        self._pair_counts = {"train": [0, 0], "eval": [0, 0]}
        super().__init__(*args, **kwargs)

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        return tokenize_rankings(dataset, processing_class, args.max_length, args.dataset_num_proc)

    def _set_signature_columns_if_needed(self):
        if self._signature_columns is None:
            self._signature_columns = ["responses_ids", "margin"]

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        num_responses = inputs.pop("num_responses")
        margin = inputs.pop("margin")
        outputs = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False)
        rewards = scores_by_prompt(outputs.logits[:, 0].float(), num_responses)
        loss = kwise_ranking_loss(rewards, num_responses, margin)
        with torch.no_grad():
            right, total = correct_pairs(rewards, num_responses)
            counts = self.accelerator.gather_for_metrics(torch.stack([right, total], dim=1)).sum(dim=0)
            self._pair_counts[mode][0] += int(counts[0])
            self._pair_counts[mode][1] += int(counts[1])
            all_scores = self.accelerator.gather_for_metrics(outputs.logits[:, 0].float())
            self._metrics[mode]["mean_reward"].append(all_scores.mean().item())
            self._metrics[mode]["min_reward"].append(all_scores.min().item())
            self._metrics[mode]["max_reward"].append(all_scores.max().item())
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "train" if self.model.training else "eval"
        right, total = self._pair_counts[mode]
        if total:
            self._metrics[mode]["accuracy"] = [right / total]  # exact pairwise accuracy, not a mean of batch means
        self._pair_counts[mode] = [0, 0]
        super().log(logs, start_time)


# ----------------------------------------------------------------------------------------------- calibration
@dataclass
class RewardArguments:
    """Reward-model options beyond TRL's RewardConfig: ranking margin and the SFT-mean-0 calibration."""

    margin: float = field(default=0.0, metadata={"help": "Margin m in -log sigmoid(r_w - r_l - m) for every pair."})
    calibrate: bool = field(
        default=True, metadata={"help": "Shift the score so the SFT policy's responses score mean 0."}
    )
    calibration_dataset: str | None = field(
        default=None,
        metadata={
            "help": "Rows {prompt, completion} to centre on, or {prompt} to sample the SFT policy on "
            "(default: sample on the training prompts)."
        },
    )
    calibration_num_samples: int = field(default=128, metadata={"help": "Responses used for the calibration."})
    calibration_max_new_tokens: int = field(default=48, metadata={"help": "Length limit of sampled responses."})
    calibration_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the policy."})


def calibration_pairs(
    reward_args: RewardArguments,
    policy_path: str,
    tokenizer: PreTrainedTokenizerBase,
    train: Dataset,
    seed: int,
    device: torch.device,
) -> tuple[list[str], list[str], str]:
    """(prompts, responses, source) whose mean score is shifted to 0: given completions, or policy samples."""
    n = reward_args.calibration_num_samples
    rows = train
    if reward_args.calibration_dataset:
        data = load_dataset_dict(reward_args.calibration_dataset)
        rows = data["train"] if "train" in data else next(iter(data.values()))
        if "prompt" not in rows.column_names:
            raise ValueError(
                f"calibration_dataset '{reward_args.calibration_dataset}' needs {{prompt, completion}} or {{prompt}} rows"
            )
    rows = rows.shuffle(seed=seed).select(range(min(n, len(rows))))
    prompts = [render_prompt(p, tokenizer) for p in rows["prompt"]]
    if "completion" in rows.column_names:
        return prompts, [response_text(c) for c in rows["completion"]], "dataset completions"
    if is_sequence_classifier(policy_path):  # no policy to sample from: centre on the ranked responses
        fmt = validate_dataset(train, "reward")
        responses = [response_text(r) for ex in rows for r in ranked_responses(ex, fmt)]
        prompts = [p for p, ex in zip(prompts, rows) for _ in ranked_responses(ex, fmt)]
        return prompts, responses, "training responses"
    policy = load_causal_lm(policy_path, tokenizer=tokenizer).to(device)
    samples = sample_completions(
        policy,
        tokenizer,
        prompts,
        max_new_tokens=reward_args.calibration_max_new_tokens,
        temperature=reward_args.calibration_temperature,
        seed=seed,
    )
    return prompts, samples.completions, "policy samples"


def calibrate_score(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompts: list[str], responses: list[str]
) -> tuple[float, float]:
    """Shift the score bias so `responses` score mean 0; return (mean before, new bias)."""
    before = mean(reward_model_scores(model, tokenizer, prompts, responses))
    bias = get_score_bias(model) - before
    set_score_bias(model, bias)
    return before, bias


# ----------------------------------------------------------------------------------------------- command
def run_reward(
    data_args: DataArguments, training_args: RewardConfig, model_args: ModelConfig, reward_args: RewardArguments
) -> dict[str, Any]:
    """Train the reward model, evaluate held-out pairwise accuracy, calibrate, save; return the summary."""
    if not model_args.model_name_or_path:
        raise ValueError("model_name_or_path is required: the SFT model (hub id or local directory)")
    prepare_trainer_arguments(training_args)  # DeepSpeed / FSDP launch configs on a machine without a GPU
    check_output_dir(training_args)
    trust = bool(training_args.trust_remote_code)
    tokenizer = load_tokenizer(model_args.model_name_or_path, model_args.model_revision, trust)
    torch.manual_seed(training_args.seed)  # the new score head's init
    with models_loaded_whole():  # under ZeRO-3 the new score head is initialised from full weights
        model = load_reward_model(
            model_args.model_name_or_path,
            tokenizer=tokenizer,
            revision=model_args.model_revision,
            dtype=model_args.dtype,
            trust_remote_code=trust,
            attn_implementation=model_args.attn_implementation,
        )
    train, held_out, fmt = load_checked_train_eval(data_args, training_args, "reward", model, tokenizer)

    sections = {"data": data_args, "model": model_args, "training": training_args, "reward": reward_args}
    with run_directory(training_args, sections) as out:
        trainer = RankingRewardTrainer(
            model=model,
            args=training_args,
            data_collator=DataCollatorForRanking(tokenizer.pad_token_id, reward_args.margin),
            train_dataset=train,
            eval_dataset=held_out,
            processing_class=tokenizer,
            peft_config=peft_config_for(model_args, task_type="SEQ_CLS", modules_to_save=["score"]),
            callbacks=[out.metrics_callback],
            margin=reward_args.margin,
        )
        trainer.run_settings = out.settings
        check_trainer_sharding(trainer)
        before = evaluate_before_training(trainer) if held_out is not None else {}
        result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
        train_loss = run_train_loss(trainer, result, out)
        after = trainer.evaluate() if held_out is not None else {}
        summary: dict[str, Any] = {
            "command": "reward",
            "model_name_or_path": model_args.model_name_or_path,
            "dataset_name": data_args.dataset_name,
            "dataset_format": fmt,
            "num_train_examples": len(train),
            "num_eval_examples": len(held_out) if held_out is not None else 0,
            "eval_accuracy_before": before.get("eval_accuracy"),
            "eval_accuracy": after.get("eval_accuracy"),
            "eval_loss": after.get("eval_loss"),
            "train_loss": train_loss,
            "train_runtime": result.metrics.get("train_runtime"),
            "global_step": result.global_step,
            "precision": precision_name(training_args),
            "use_peft": model_args.use_peft,
            "margin": reward_args.margin,
            "seed": training_args.seed,
        }

        def calibrate(final_model: PreTrainedModel) -> None:
            if not reward_args.calibrate:
                return
            prompts, responses, source = calibration_pairs(
                reward_args, model_args.model_name_or_path, tokenizer, train, training_args.seed, trainer.args.device
            )
            mean_before, bias = calibrate_score(final_model, tokenizer, prompts, responses)
            summary.update(
                calibration_source=source,
                calibration_num_samples=len(responses),
                calibration_mean_before=mean_before,
                score_bias=bias,
            )

        accuracy = summary["eval_accuracy"]
        headline = (
            f"held-out pairwise accuracy {accuracy:.3f} (before training {summary['eval_accuracy_before']:.3f})"
            if accuracy is not None else f"train loss {summary['train_loss']:.4f}"
        )
        finish_run(trainer, out, summary, sections, before_save=calibrate, headline=headline)
    return summary


def main(argv: list[str] | None = None) -> dict[str, Any]:
    data_args, training_args, model_args, reward_args = parse_args(
        [DataArguments, RewardConfig, ModelConfig, RewardArguments],
        argv,
        defaults={**hardware_defaults(), **COMMAND_DEFAULTS},
        description=__doc__, command="reward",
    )
    return run_reward(data_args, training_args, model_args, reward_args)
