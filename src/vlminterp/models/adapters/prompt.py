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
