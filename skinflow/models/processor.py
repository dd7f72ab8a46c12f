"""A Qwen2.5-VL processor without the video part, so it builds without torchvision.

transformers' ``Qwen2_5_VLProcessor`` insists on a video processor, which imports torchvision; this class
pairs the tokenizer with the PIL image processor and expands each ``<|image_pad|>`` placeholder to the number
of merged patches of its image, exactly as the stock processor does for images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

IMAGE_PAD = "<|image_pad|>"
PLACEHOLDERS = (IMAGE_PAD, "<|video_pad|>")  # tokens the model reads as "vision features go here"


@dataclass
class VisionLanguageProcessor:
    tokenizer: PreTrainedTokenizerBase
    image_processor: Qwen2VLImageProcessorPil

    @property
    def image_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(IMAGE_PAD)

    @property
    def placeholder_token_ids(self) -> list[int]:
        """Ids of the image/video placeholders: never to be sampled (a completion holding one would no longer
        match its image features)."""
        unk = self.tokenizer.unk_token_id
        ids = [self.tokenizer.convert_tokens_to_ids(t) for t in PLACEHOLDERS]
        return [i for i in ids if i is not None and i != unk]

    def chat_prompt(self, prompt: str, system: str | None = None) -> str:
        """The chat-formatted user turn with one image, ending where the assistant's answer starts."""
        messages = [{"role": "system", "content": system}] if system else []
        messages.append({"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def images(self, images: list[np.ndarray]) -> dict[str, torch.Tensor]:
        """``pixel_values`` (sum of patches, C*T*P*P) and ``image_grid_thw`` (one row per image)."""
        out = self.image_processor(images=list(images), return_tensors="pt")
        return {"pixel_values": out["pixel_values"], "image_grid_thw": out["image_grid_thw"]}

    def expand_image_tokens(self, text: str, grid_thw: torch.Tensor) -> str:
        """Replace the single placeholder by one token per merged patch of that image."""
        merge = self.image_processor.merge_size ** 2
        count = int(grid_thw.prod()) // merge
        assert text.count(IMAGE_PAD) == 1, "each prompt carries exactly one image placeholder"
        return text.replace(IMAGE_PAD, IMAGE_PAD * count)

    def decode(self, ids: torch.Tensor) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)
