"""The tiny preset's tokenizer: a byte-level BPE trained deterministically on the kit's own vocabulary.

Shipped as ``skinflow/assets/tiny_tokenizer/`` (a few KB) so the tiny preset needs no download. Rebuild with
``python -m skinflow.models.tiny_tokenizer`` after changing the corpus; a test checks the shipped file equals
a fresh build. Byte-level BPE can encode any string, so unseen words still round-trip.
"""

from __future__ import annotations

import sys
from pathlib import Path

QWEN_SPECIAL_TOKENS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|image_pad|>", "<|video_pad|>",
)
VOCAB_SIZE = 1024
ASSET_DIR = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"

# Qwen2-VL's chat template, without the video branch.
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' %}"
    "<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] == 'text' %}{{ content['text'] }}"
    "{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def training_corpus() -> list[str]:
    """Lines the BPE merges are learned from: labels, caption vocabulary, prompts and format text."""
    from skinflow.data.formats import CAPTION_FIELDS, PROMPTS, SPECIAL_TAGS, SYSTEM_PROMPT
    from skinflow.data.ontology import ALIASES, ONTOLOGY
    from skinflow.data.synthetic import LESION_CLASSES, SIZE_RADIUS

    # prompts repeated so their words become whole tokens: every training sequence carries one
    lines = [SYSTEM_PROMPT, *PROMPTS.values(), "You are a helpful assistant.", " ".join(SPECIAL_TAGS)] * 40
    lines += [f"{rank}. {label}" for label in ONTOLOGY.labels for rank in range(1, 7)]
    lines += [f"{rank}. {label}" for label in sorted(ONTOLOGY.nine_partitions) for rank in range(1, 3)]
    lines += sorted(ALIASES)
    for cls in LESION_CLASSES:
        values = [cls.colour, cls.shape, cls.surface, cls.distribution, cls.lesion_type, cls.border, *cls.locations]
        lines += [f"{name}: {value}" for name in CAPTION_FIELDS for value in values] * 2
    lines += [f"size: {s}" for s in SIZE_RADIUS] * 4
    return lines


def build(out_dir: str | Path = ASSET_DIR) -> Path:
    """Train the BPE and save it as a ``transformers`` fast tokenizer in ``out_dir``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from skinflow.data.formats import SPECIAL_TAGS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TAGS), special_tokens=list(QWEN_SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", bos_token=None,
        unk_token=None, additional_special_tokens=list(QWEN_SPECIAL_TOKENS[1:]),
    )
    fast.add_tokens(list(SPECIAL_TAGS))  # format tags as plain added tokens: they survive decoding
    fast.chat_template = CHAT_TEMPLATE
    fast.model_max_length = 1024
    out_dir = Path(out_dir)
    fast.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":
    print(build(sys.argv[1] if len(sys.argv) > 1 else ASSET_DIR))
