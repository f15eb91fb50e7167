"""The chat template of a family: one user turn with an image, an optional system turn.

    template = PromptTemplate(user_turn="USER: {image}\n{text} ASSISTANT:")
    template.format("Describe this image.")                 # 'USER: <image>\nDescribe this image. ASSISTANT:'
    template.format_with("a red square", "What is it?")     # the image's place taken by text
"""
from __future__ import annotations

from dataclasses import dataclass

#: The LLaVA-1.5 (Vicuna) system prompt, which Kaduri et al. use (configs/llava-1.5-7b.yaml sets it).
LLAVA_SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
    "helpful, detailed, and polite answers to the human's questions."
)


@dataclass(frozen=True)
class PromptTemplate:
    """A single-user-turn chat template; `{image}` marks where the image placeholder goes."""

    user_turn: str  # e.g. "USER: {image}\n{text} ASSISTANT:"
    system_turn: str = "{system} "  # prepended when a system prompt is given
    image_placeholder: str = "<image>"
    default_system_prompt: str | None = None  # used when system_prompt is None ("" = no system turn)

    def format(self, text: str, system_prompt: str | None = None) -> str:
        return self.format_with(self.image_placeholder, text, system_prompt)

    def format_with(self, image: str, text: str, system_prompt: str | None = None) -> str:
        """The same turn with `image` (any text, e.g. a description of the image) in the image's place."""
        prompt = self.user_turn.format(image=image, text=text)
        if system_prompt is None:
            system_prompt = self.default_system_prompt
        if system_prompt:
            prompt = self.system_turn.format(system=system_prompt) + prompt
        return prompt


def answer_first_token(tokenizer, prefix: str, word: str) -> int:
    """Id of the first token `word` adds when it follows `prefix` after a space.

    Tokenizing the prefix alone and the prefix + " " + word and taking the first id where they
    differ gives the word's first sub-token in context (e.g. "▁dog" after "It is a" for Llama's
    SentencePiece vocabulary; the word itself for the organism's word-level vocabulary).
    """
    base = tokenizer(prefix, add_special_tokens=False)["input_ids"]
    full = tokenizer(f"{prefix} {word}", add_special_tokens=False)["input_ids"]
    for index, token in enumerate(full):
        if index >= len(base) or base[index] != token:
            return int(token)
    raise ValueError(f"{word!r} adds no token after {prefix!r}")
