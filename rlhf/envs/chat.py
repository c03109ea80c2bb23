"""The tokens of a conversation that grows turn by turn, with the tokenizer's chat template.

The policy's tokens are kept exactly as sampled: the conversation is never re-tokenised (a BPE may split
the same text differently in context, and the log-probabilities must be those of the tokens the policy
drew). Only the environment's text is tokenised, one turn at a time:

- the first user turn: ``apply_chat_template([user], add_generation_prompt=True)``, tokenized as the
  prompts of one-turn RL are (``add_special_tokens=True``), so a one-turn env gives the same query;
- an environment turn after a policy reply: the text the template puts after that reply -- rendered
  with a placeholder reply and cut after it -- i.e. the end of the assistant turn (e.g. ``EOS\\n``),
  the user turn and the generation prompt. When the policy's reply already ends with the stop token and
  the template's end of turn starts with that token's text, it is not added twice.
"""

from __future__ import annotations

__all__ = ["ChatFormat"]

PLACEHOLDER = "\x00reply\x00"  # a reply no template or tokenizer changes, to find where a reply ends


class ChatFormat:
    """Token ids of the first user turn and of the environment turns of one tokenizer's chat template."""

    def __init__(self, tokenizer, stop_token_id: int | None):
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("--env needs a tokenizer with a chat template (the conversation's turns); this one has none")
        self.tokenizer = tokenizer
        self.stop_text = tokenizer.decode([stop_token_id]) if stop_token_id is not None else None

    def _render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)

    def first_turn(self, observation: str) -> list[int]:
        text = self._render([{"role": "user", "content": observation}], True)
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        if not ids:
            raise ValueError("the first user turn tokenizes to no tokens")
        return ids

    def env_turn_text(self, observation: str, reply_has_stop: bool) -> str:
        """What follows a policy reply: the end of its turn, the user turn, the generation prompt."""
        messages = [{"role": "user", "content": "x"}, {"role": "assistant", "content": PLACEHOLDER},
                    {"role": "user", "content": observation}]
        text = self._render(messages, True)
        after = text[text.index(PLACEHOLDER) + len(PLACEHOLDER):]
        if reply_has_stop and self.stop_text and after.startswith(self.stop_text):
            after = after[len(self.stop_text):]  # the policy sampled the end of its turn itself
        return after

    def env_turn(self, observation: str, reply_has_stop: bool) -> list[int]:
        return self.tokenizer(self.env_turn_text(observation, reply_has_stop), add_special_tokens=False)["input_ids"]
