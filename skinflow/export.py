"""``python -m skinflow export --ckpt <stage checkpoint> --out DIR [--merge]``: a stage's weights for use outside skinflow.

A stage checkpoint holds trainable weights and the backbone's identity only. Export rebuilds the backbone from that
identity (the same ``pretrained_path`` must be readable; a changed one is refused naming both), loads the weights
as ``init_from`` does and writes into ``DIR``:

- ``adapter/`` (LoRA stages): a PEFT adapter, ``adapter_config.json`` + ``adapter_model.safetensors``, loadable
  with ``PeftModel.from_pretrained(<base model>, DIR/adapter)`` on the stock base checkpoint;
- ``model/`` (with ``--merge``, and always for full training): a complete model folder, adapters merged into the
  language layers, with the tokenizer, the image processor and the checkpoint's own ``generation_config.json``,
  loadable with ``Qwen2_5_VLForConditionalGeneration.from_pretrained(DIR/model)``;
- ``dve/`` (DVE stages): ``dve.safetensors`` (every FDLinear's spectrum, bias and gain heads) and
  ``dve_config.json``. Stock loaders cannot use these: an FDLinear computes a new weight per image, which no
  static linear layer reproduces. In ``model/`` each FDLinear is stored as its static base linear (the layer
  with every gain at 1), so a stock load of ``model/`` is the model *without* the DVE's per-image gains;
  ``load_exported(DIR)`` re-attaches the DVE and gives the stage's exact outputs.
- ``EXPORT.md``: what was exported, from which checkpoint, how to load each part, and how to ask the model about a
  photograph: image size, prompt, processor steps and decoding, with ``run_exported.py``, the same as a script
  (stock transformers and PEFT; no torchvision, no skinflow).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from skinflow.errors import UserError
from skinflow.models.unwrap import bare_model

if TYPE_CHECKING:
    import torch
    from torch import nn

    from skinflow.models.backbone import BackboneSpec
    from skinflow.models.fdlinear import FDLinear

# torch, transformers and Lightning are imported inside the functions: ``export --help`` answers at once


class ExportError(UserError):
    pass


def static_linear(layer: FDLinear) -> nn.Linear:
    """The FDLinear with every gain at 1: its base weight irfft2(spectrum) and its bias."""
    import torch
    from torch import nn

    linear = nn.Linear(layer.in_features, layer.out_features, bias=layer.bias is not None)
    with torch.no_grad():
        linear.weight.copy_(layer.dynamic_weight(torch.ones(layer.num_groups, device=layer.spectrum.device)))
        if layer.bias is not None:
            linear.bias.copy_(layer.bias)
    return linear.to(layer.spectrum.device)


def dve_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every FDLinear parameter, named from the bare Qwen2.5-VL model (``model.visual.blocks.7.mlp.up_proj.spectrum``)."""
    from skinflow.models.fdlinear import FDLinear

    core = bare_model(model)
    return {f"{name}.{key}": value.detach().contiguous() for name, layer in core.named_modules()
            if isinstance(layer, FDLinear) for key, value in layer.state_dict().items()}


def merged_model(model: nn.Module) -> nn.Module:
    """The bare Qwen2.5-VL model, LoRA merged in and every FDLinear replaced by its static base linear."""
    from skinflow.models.fdlinear import FDLinear

    core = model.merge_and_unload() if hasattr(model, "merge_and_unload") else model
    for name, layer in list(core.named_modules()):
        if isinstance(layer, FDLinear):
            parent, _, child = name.rpartition(".")
            setattr(core.get_submodule(parent), child, static_linear(layer))
    return core  # the DVE's boundary hook stays on the vision tower: with no FDLinear left it does nothing


def export_stage(ckpt: str | Path, out: str | Path, merge: bool = False) -> dict[str, Path]:
    """Write the exported parts of ``ckpt`` into ``out``; returns {part: folder}."""
    from safetensors.torch import save_file

    from skinflow.models.backbone import spec_from_dict
    from skinflow.stages.base import CheckpointMismatch, SkinflowStage, read_stage_checkpoint

    try:
        checkpoint = read_stage_checkpoint(ckpt)
        spec = spec_from_dict(checkpoint["backbone_identity"]["spec"])
        if spec.tiny.stem == "conv":
            raise ExportError(f"{ckpt}: its tiny backbone has the convolutional stem (backbone.tiny.stem: conv), which "
                              "stock Qwen2.5-VL cannot load; use the stage checkpoint itself (test, predict, init_from)")
        stage = SkinflowStage(spec)  # the backbone the checkpoint was trained on
        stage.load_checkpoint_weights(checkpoint, str(ckpt))
    except CheckpointMismatch as err:
        raise ExportError(str(err)) from err
    model, processor = stage.model, stage.processor
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parts: dict[str, Path] = {}
    if spec.lora is not None:
        model.save_pretrained(out / "adapter")  # PEFT: adapter_config.json + adapter_model.safetensors
        parts["adapter"] = out / "adapter"
    if spec.dve.enabled:
        (out / "dve").mkdir(exist_ok=True)
        save_file(dve_state(model), out / "dve" / "dve.safetensors")
        (out / "dve" / "dve_config.json").write_text(json.dumps(asdict(spec.dve), indent=2))
        parts["dve"] = out / "dve"
    if merge or spec.lora is None:
        core = merged_model(model)
        core.generation_config = core.checkpoint_generation_config or core.generation_config  # the checkout's own
        core.save_pretrained(out / "model")
        processor.tokenizer.save_pretrained(out / "model")
        processor.image_processor.save_pretrained(out / "model")
        parts["model"] = out / "model"
    snippet = inference_snippet(stage, checkpoint, spec, parts)
    (out / "run_exported.py").write_text(snippet)
    parts["script"] = out / "run_exported.py"
    (out / "EXPORT.md").write_text(export_note(ckpt, checkpoint, spec, parts, snippet))
    return parts


def inference_settings(checkpoint: dict) -> tuple[int, str, bool]:
    """``(image_size, prompt name, recorded)`` the stage was evaluated with: the DataModule's, as Lightning recorded
    them in the checkpoint (``mixed`` prompts: the diagnosis prompt, the one the test split is answered under); else
    the DataModule's defaults, ``recorded`` False."""
    import inspect

    from skinflow.data.datamodule import Fitzpatrick17kDataModule

    defaults = {k: p.default for k, p in inspect.signature(Fitzpatrick17kDataModule).parameters.items()}
    recorded = checkpoint.get("datamodule_hyper_parameters") or {}
    size = int(recorded.get("image_size", defaults["image_size"]))
    prompt = recorded.get("prompt", defaults["prompt"])
    return size, ("diagnosis" if prompt not in PROMPT_NAMES else prompt), "image_size" in recorded


PROMPT_NAMES = ("warmup", "caption", "diagnosis")

SNIPPET = '''import sys

import cv2  # opencv-python-headless (albumentations' own dependency); no torchvision needed
import numpy as np
import torch
from PIL import Image
from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

IMAGE = sys.argv[1] if len(sys.argv) > 1 else "lesion.jpg"
SIZE = {size}  # {size_note}
SYSTEM = {system!r}
PROMPT = {prompt!r}
{load}
image_processor = Qwen2VLImageProcessorPil.from_pretrained({processor_from!r})

# 1. the image as the stage saw it in evaluation: longest side SIZE px (bilinear), reflect-padded to a SIZE square
rgb = np.asarray(Image.open(IMAGE).convert("RGB"))
scale = SIZE / max(rgb.shape[:2])
rgb = cv2.resize(rgb, (round(rgb.shape[1] * scale), round(rgb.shape[0] * scale)), interpolation=cv2.INTER_LINEAR)
top, left = (SIZE - rgb.shape[0]) // 2, (SIZE - rgb.shape[1]) // 2
rgb = cv2.copyMakeBorder(rgb, top, SIZE - rgb.shape[0] - top, left, SIZE - rgb.shape[1] - left, cv2.BORDER_REFLECT_101)
vision = image_processor(images=[rgb], return_tensors="pt")  # pixel_values, image_grid_thw (14-px patches)

# 2. the prompt: the chat template with one image; its single <|image_pad|> becomes one per merged 2 x 2 patch
messages = [{{"role": "system", "content": SYSTEM}},
            {{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": PROMPT}}]}}]
text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
patches = int(vision["image_grid_thw"].prod()) // image_processor.merge_size ** 2
text = text.replace("<|image_pad|>", "<|image_pad|>" * patches)
inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False)
image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")

# 3. greedy decoding as skinflow evaluates: stop ids only, no repetition penalty, placeholders never generated
with torch.no_grad():
    out = model.generate(**inputs, **vision, mm_token_type_ids=(inputs["input_ids"] == image_token).int(),
                         do_sample=False, max_new_tokens={max_new_tokens}, eos_token_id={eos}, pad_token_id={pad},
                         suppress_tokens={suppress}, repetition_penalty=1.0, temperature=None, top_p=None, top_k=None)
print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
'''


def inference_snippet(stage, checkpoint: dict, spec: BackboneSpec, parts: dict[str, Path]) -> str:
    """A script that answers for one image with stock transformers (and PEFT for an adapter), run in the export
    folder: ``python run_exported.py lesion.jpg``; the same image size, prompt, processor steps and greedy decoding as
    the stage's evaluation."""
    from skinflow.data.formats import PROMPTS, SYSTEM_PROMPT

    size, prompt, recorded = inference_settings(checkpoint)
    sampling = stage.greedy_sampling()
    max_new_tokens = (checkpoint.get("hyper_parameters") or {}).get("max_new_tokens", sampling.max_new_tokens)
    base = spec.pretrained_path
    if "model" in parts:
        load = ('model = Qwen2_5_VLForConditionalGeneration.from_pretrained("model", dtype=torch.float32).eval()\n'
                'tokenizer = AutoTokenizer.from_pretrained("model")')
        processor_from = "model"
    else:  # an adapter on the stock base checkpoint
        load = ("from peft import PeftModel\n\n"
                f"base = Qwen2_5_VLForConditionalGeneration.from_pretrained({base!r}, dtype=torch.float32)\n"
                'model = PeftModel.from_pretrained(base, "adapter").eval()\n'
                f"tokenizer = AutoTokenizer.from_pretrained({base!r})")
        processor_from = base
    if "dve" in parts:
        load += ("\n# the DVE's per-image gains need skinflow's loader (pip install skinflow); without it the model runs"
                 "\n# with every gain at 1:  from skinflow.export import load_exported; model = load_exported('.').eval()")
    note = ("the DataModule's image_size this stage was trained and tested with" if recorded else
            "the DataModule's default: this checkpoint does not record its image_size; use the run's config.yaml value")
    return SNIPPET.format(size=size, size_note=note, system=SYSTEM_PROMPT, prompt=PROMPTS[prompt], load=load,
                          processor_from=processor_from, max_new_tokens=max_new_tokens,
                          eos=list(sampling.eos_ids), pad=sampling.pad_id, suppress=list(sampling.suppressed))


def export_note(ckpt, checkpoint: dict, spec: BackboneSpec, parts: dict[str, Path], snippet: str | None = None) -> str:
    base = spec.pretrained_path or f"the {spec.preset} preset (random init, seed {spec.seed})"
    lines = [f"# Export of {ckpt}", "", f"Stage `{checkpoint.get('skinflow_stage', '?')}` on backbone {base}.", ""]
    if "adapter" in parts:
        lines += ["- `adapter/`: PEFT LoRA adapter. `PeftModel.from_pretrained(Qwen2_5_VLForConditionalGeneration"
                  f".from_pretrained({base!r}), 'adapter')`."
                  + (" It was trained beside the DVE heads: on the stock base it runs without them." if "dve" in parts else "")]
    if "model" in parts:
        lines += ["- `model/`: complete model folder (adapters merged). `Qwen2_5_VLForConditionalGeneration"
                  ".from_pretrained('model')`."]
    if "dve" in parts:
        lines += ["- `dve/`: Dynamic Vision Encoder weights (FDLinear). Stock loaders cannot use them: an FDLinear "
                  "computes a new weight per image. `model/` stores each FDLinear as its static base linear, so a "
                  "stock load runs without the per-image gains; `skinflow.export.load_exported('<this folder>')` "
                  "re-attaches them and reproduces the stage exactly."]
    if snippet:
        size, prompt, recorded = inference_settings(checkpoint)
        lines += ["", "## Asking it about a photograph", "",
                  "`run_exported.py` in this folder (`python run_exported.py lesion.jpg`) is the script below: stock "
                  "transformers (and PEFT for an adapter), no torchvision, no skinflow. It prepares the image and the "
                  "prompt as the stage's evaluation did and decodes greedily:", "",
                  f"- **image**: RGB, the longest side resized to {size} px (bilinear), reflect-padded to {size} x "
                  f"{size}{'' if recorded else ' (the DataModule default: this checkpoint does not record its size)'}; "
                  "then Qwen2-VL's PIL image processor (`Qwen2VLImageProcessorPil`: a multiple of 28 px, CLIP mean and "
                  "std, 14-px patches, 2 x 2 merge);",
                  f"- **prompt**: the chat template with the system prompt and one image, then the `{prompt}` prompt; "
                  "the template writes one `<|image_pad|>`, which must be repeated once per merged patch "
                  "(grid_t x grid_h x grid_w / 4) before tokenising: `AutoProcessor` does this, but it needs torchvision;",
                  "- **decoding**: greedy, the checkpoint's sampling settings and repetition penalty off, stopping at "
                  "the stop ids; the answer is `<answer>` with up to six ranked diagnoses (`1. label` per line).", "",
                  "```python", snippet.rstrip(), "```"]
    return "\n".join(lines) + "\n"


def load_exported(folder: str | Path) -> nn.Module:
    """The exported ``model/`` with the DVE re-attached from ``dve/`` (when there is one): the stage's model."""
    import torch
    from safetensors.torch import load_file
    from transformers import Qwen2_5_VLForConditionalGeneration

    from skinflow.models.dve import DVESpec, attach_dve

    folder = Path(folder)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(folder / "model", dtype=torch.float32)
    if (folder / "dve" / "dve.safetensors").exists():
        spec = DVESpec(**json.loads((folder / "dve" / "dve_config.json").read_text()))
        attach_dve(model, spec)
        result = model.load_state_dict(load_file(folder / "dve" / "dve.safetensors"), strict=False)
        if result.unexpected_keys:
            raise ExportError(f"{folder / 'dve'} holds weights the model lacks, e.g. {result.unexpected_keys[:3]}")
    return model


def export_command(argv: list[str]) -> dict[str, Path]:
    parser = argparse.ArgumentParser(prog="python -m skinflow export",
                                     description="Write a stage checkpoint as a PEFT adapter, a merged model folder "
                                                 "and the DVE weights, for use outside skinflow.")
    parser.add_argument("--ckpt", required=True, help="a stage checkpoint (pipeline handoff or Lightning .ckpt)")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--merge", action="store_true", help="also write model/: adapters merged, loadable by from_pretrained")
    ns = parser.parse_args(argv)
    if Path(ns.out).exists() and not Path(ns.out).is_dir():
        parser.error(f"--out {ns.out}: is a file, not a folder (the adapter, model/ and dve.safetensors go inside it)")
    try:
        parts = export_stage(ns.ckpt, ns.out, ns.merge)
    except ExportError as err:
        sys.exit(f"export: {err}")
    for name, path in parts.items():
        print(f"{name}: {path}")
    return parts
