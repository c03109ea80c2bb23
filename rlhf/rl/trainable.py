"""The trained modules of the RL methods, each with one interface: ``forward(query_responses,
attention_mask, context_length) -> (logits (B, R, V), values (B, R) or None)``, and ``.policy`` /
``.critic`` attributes.

- :class:`PolicyOnly` -- the critic-free methods (GRPO, RLOO, REINFORCE++): the policy alone.
- :class:`PolicyAndValue` -- PPO: the policy and its critic as one module, so accelerate prepares (and
  DDP synchronises) both with one wrapper; or the policy with a value head on its last hidden state
  (``--value_head_on_policy``, trlX).
- :class:`ValueModel` -- the critic: a transformer body with a scalar head read at every token,
  initialised from the reward model (N+ details, DeepSpeed-Chat, OpenRLHF).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from rlhf.rl.forward import logits_for_responses, per_token_values, position_ids_from_mask

__all__ = ["PolicyAndValue", "PolicyOnly", "ValueModel", "disable_dropout"]


def disable_dropout(model: nn.Module) -> None:
    """Zero every dropout probability (N+ details: dropout off in policy, reference, RM and critic).

    Keeps train and eval mode numerically identical, so the rollout's logprobs and values match the
    update's first forward pass exactly.
    """
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)


# ----------------------------------------------------------------------------- networks
class PolicyOnly(nn.Module):
    """The trainable module of the critic-free methods: the policy alone (forward gives no values)."""

    def __init__(self, policy: nn.Module, share_prompts: bool = False):
        super().__init__()
        self.policy = policy
        self.critic = None
        self.share_prompts = share_prompts  # run each distinct prompt once (rlhf.rl.forward.logits_for_responses)

    def forward(self, query_responses: Tensor, attention_mask: Tensor, context_length: int) -> tuple[Tensor, None]:
        logits = logits_for_responses(self.policy, query_responses, attention_mask, context_length, self.share_prompts)
        return logits, None


class ValueModel(nn.Module):
    """Critic ``V(s_t)``: a transformer body and a scalar head applied at every position."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = head

    @classmethod
    def from_sequence_classifier(cls, model: nn.Module, zero_head: bool = False) -> ValueModel:
        """Take the body and the ``score`` head of an ``AutoModelForSequenceClassification``.

        ``zero_head`` zeroes the head so every value starts at 0 (for a critic that does not come
        from a trained reward model).
        """
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        prefix = getattr(inner, "base_model_prefix", "model")
        backbone, head = getattr(inner, prefix, None), getattr(inner, "score", None)
        if backbone is None or head is None:
            raise ValueError(
                f"{type(inner).__name__} has no `{prefix}` body or `score` head; the critic needs a "
                "causal-LM sequence classifier (AutoModelForSequenceClassification with num_labels=1)"
            )
        if zero_head:
            with torch.no_grad():
                for p in head.parameters():
                    p.zero_()
        return cls(backbone, head)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Values ``(B, L)`` at every position."""
        return per_token_values(self.backbone, self.head, input_ids, attention_mask)


class PolicyAndValue(nn.Module):
    """The trainable pair: a causal-LM policy and either a separate critic or a value head on it."""

    def __init__(self, policy: nn.Module, critic: ValueModel | None = None):
        super().__init__()
        self.policy = policy
        self.critic = critic
        self.value_head: nn.Linear | None = None
        if critic is None:
            hidden = policy.config.get_text_config().hidden_size
            self.value_head = nn.Linear(hidden, 1)
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)

    def forward(self, query_responses: Tensor, attention_mask: Tensor, context_length: int) -> tuple[Tensor, Tensor]:
        """Logits ``(B, R, V)`` predicting each response token and the values ``(B, R)`` of the states
        before them (columns ``P - 1 .. P + R - 2``)."""
        response_length = query_responses.shape[1] - context_length
        if self.critic is not None:
            logits = logits_for_responses(self.policy, query_responses, attention_mask, context_length)
            values = self.critic(query_responses, attention_mask)
        else:
            out = self.policy(
                input_ids=query_responses,
                attention_mask=attention_mask,
                position_ids=position_ids_from_mask(attention_mask),
                use_cache=False,
                output_hidden_states=True,
            )
            logits = out.logits
            values = self.value_head(out.hidden_states[-1].to(self.value_head.weight.dtype)).squeeze(-1).float()
            logits = logits[:, -(response_length + 1) : -1]
        return logits, values[:, -(response_length + 1) : -1]
