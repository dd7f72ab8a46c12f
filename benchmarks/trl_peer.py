"""What the benchmarks that run TRL's ``GRPOTrainer`` beside the kit share (imported by ``grpo_vs_trl.py`` and
``grpo_step_scale.py``, which run as scripts from this folder; TRL is a benchmark extra, not a dependency)."""

from __future__ import annotations

import time

from transformers import Qwen2_5_VLProcessor, TrainerCallback
from transformers.processing_utils import ProcessorMixin


class ImageOnlyProcessor(Qwen2_5_VLProcessor):
    """The stock processor without its video part (which needs torchvision)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


class StepTimer(TrainerCallback):
    """Seconds of each optimizer step of a transformers ``Trainer``."""

    def __init__(self):
        self.times, self.start = [], 0.0

    def on_step_begin(self, *args, **kwargs):
        self.start = time.perf_counter()

    def on_step_end(self, *args, **kwargs):
        self.times.append(time.perf_counter() - self.start)
