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

    def pixels_to_images(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> list[np.ndarray]:
        """The inverse of ``images`` (first temporal frame): each image as the model receives it, (H, W, 3) floats in
        [0, 1] after undoing the normalisation. For looking at what a batch carries (``benchmarks/
        real_sample_baseline.py --save-grid``) and for tests that the pixels are the photograph's."""
        patch, merge = self.image_processor.patch_size, self.image_processor.merge_size
        mean = np.asarray(self.image_processor.image_mean, dtype=np.float64)
        std = np.asarray(self.image_processor.image_std, dtype=np.float64)
        out, offset = [], 0
        for t, h, w in image_grid_thw.tolist():
            rows = pixel_values[offset:offset + t * h * w].detach().double().cpu().numpy()
            offset += t * h * w
            # rows run over (t, h / merge, w / merge, merge, merge); each row is (channel, temporal patch, patch, patch)
            grid = rows.reshape(t, h // merge, w // merge, merge, merge, 3, -1, patch, patch)[0, ..., 0, :, :]
            image = grid.transpose(0, 2, 5, 1, 3, 6, 4).reshape(h * patch, w * patch, 3)
            out.append(np.clip(image * std + mean, 0.0, 1.0))
        return out

    def decode(self, ids: torch.Tensor) -> list[str]:
        return self.tokenizer.batch_decode(ids, skip_special_tokens=True)
