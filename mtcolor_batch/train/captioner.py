"""Instance texts and whole-image captions for the dataset, from a chain of captioners (paper Sec. 3.5).

The paper asks a VLM for "object + colour" of each mask-cropped instance, falls back to BLIP-2 when
the VLM refuses or says no colour, and we end the chain with the pixel-colour namer, which always
answers from the pixels under the mask. Each link is a ``Captioner``; the ``CaptionChain`` asks them
in order and keeps the first answer that passes the filters (``text_filters.py``), recording every
rejection so the dataset summary can count them.

Models load with ``from_pretrained`` from a local folder or a hub id (the normal Hugging Face cache;
``HF_HUB_OFFLINE=1`` keeps it off the network): BLIP-2 through ``Blip2ForConditionalGeneration`` +
``Blip2Processor``; any image-text-to-text VLM through ``AutoModelForImageTextToText`` +
``AutoProcessor`` and the processor's chat template. Generation is greedy so a rebuilt dataset is
byte-identical, and uses the checkpoint's own ``generation_config.json``.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image

from mtcolor_batch.core.errors import UserError
from mtcolor_batch.evaluate.clip_score import crop_mask
from mtcolor_batch.train import naming, text_filters
from mtcolor_batch.train.dataset_config import DatasetConfig
from mtcolor_batch.train.text_filters import TextRules


def to_pil(rgb: np.ndarray) -> Image.Image:
    return Image.fromarray(np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8), mode="RGB")


@dataclass(frozen=True)
class InstanceView:
    """What a captioner may look at for one instance."""

    crop: Image.Image  # the mask's box, neutral gray outside the mask (as the paper's CLIP score crops)
    label: str  # the finder's or annotation's category name
    lab_mean: tuple[float, float, float]  # mean CIELAB under the mask (the namer's input)


class Captioner(Protocol):
    name: str

    def describe(self, view: InstanceView) -> str:
        """Answer for one instance: "object + colour" in a few words."""

    def caption(self, image: Image.Image) -> str | None:
        """One-sentence caption of the whole photo, or None when this captioner cannot caption."""


class PixelNamer:
    """The last link: "a {basic colour} {label}" from the mean CIELAB under the mask; never fails."""

    name = "namer"

    def describe(self, view: InstanceView) -> str:
        colour = naming.color_name(view.lab_mean)
        return f"{naming.article(colour)} {colour} {view.label}"

    def caption(self, image: Image.Image) -> str | None:
        return None


@dataclass(frozen=True)
class Prompts:
    """What a model is asked (``{label}`` is the instance's category); defaults in profiles/dataset.yaml."""

    instance: str
    image: str


class HFCaptioner:
    """A transformers vision-language model answering prompts about an image (greedy decoding)."""

    def __init__(
        self,
        kind: Literal["vlm", "blip2"],
        source: str,
        device: str,
        *,
        prompts: Prompts,
        max_new_tokens: int = 30,
        dtype: str = "auto",
    ) -> None:
        import torch

        from mtcolor_batch.core.device import resolve_device, resolve_dtype  # deferred: loads torch

        self.kind, self.source, self.prompts, self.max_new_tokens = kind, source, prompts, max_new_tokens
        self.name: str = kind
        self.device = resolve_device(device)
        self.dtype: torch.dtype = resolve_dtype(dtype, self.device)
        try:
            if kind == "blip2":
                from transformers import Blip2ForConditionalGeneration, Blip2Processor

                self.processor: Any = Blip2Processor.from_pretrained(source)
                model: Any = Blip2ForConditionalGeneration.from_pretrained(source, dtype=self.dtype)
            else:
                from transformers import AutoModelForImageTextToText, AutoProcessor

                self.processor = AutoProcessor.from_pretrained(source)
                model = AutoModelForImageTextToText.from_pretrained(source, dtype=self.dtype)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UserError(
                f"cannot load the {kind} captioner: {first}",
                path=source,
                hint="give a local model folder, or a hub id already in the Hugging Face cache "
                "(huggingface-cli download ID on a connected machine)",
            ) from exc
        if kind == "vlm" and not getattr(self.processor, "chat_template", None):
            raise UserError(
                "the VLM captioner's processor has no chat template",
                path=source,
                hint="use an instruction-tuned image-text-to-text model, or give it as blip2",
            )
        self.model = model.to(self.device).eval()
        self.generation = copy.deepcopy(self.model.generation_config)
        self.generation.max_new_tokens = max_new_tokens
        self.generation.do_sample = False
        self.generation.num_beams = 1

    def _inputs(self, image: Image.Image, prompt: str) -> Any:
        if self.kind == "blip2":
            if prompt:
                return self.processor(images=image, text=prompt, return_tensors="pt")
            return self.processor(images=image, return_tensors="pt")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.processor(images=image, text=text, return_tensors="pt")

    def ask(self, image: Image.Image, prompt: str) -> str:
        """The model's answer to ``prompt`` about ``image`` (new tokens only, special tokens dropped)."""
        import torch

        inputs = self._inputs(image, prompt).to(self.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            out = self.model.generate(**inputs, generation_config=self.generation)
        if "input_ids" in inputs:
            out = out[:, inputs["input_ids"].shape[1] :]  # decoder-only models echo the prompt
        return str(self.processor.batch_decode(out, skip_special_tokens=True)[0])

    def describe(self, view: InstanceView) -> str:
        return self.ask(view.crop, self.prompts.instance.format(label=view.label))

    def caption(self, image: Image.Image) -> str | None:
        return self.ask(image, self.prompts.image)


@dataclass
class Answer:
    """The text a chain settled on, who gave it, and what it rejected on the way."""

    text: str | None
    source: str | None
    rejected: list[dict[str, str]] = field(default_factory=list)  # {"by", "reason", "text"}


class CaptionChain:
    """Ask captioners in order (primary VLM -> BLIP-2 -> namer); keep the first acceptable answer."""

    def __init__(self, captioners: list[Captioner], rules: TextRules, *, caption_max_words: int = 40) -> None:
        self.captioners = captioners
        self.rules = rules
        self.caption_rules = TextRules(max_words=caption_max_words, require_colour=False)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.captioners]

    @property
    def has_model(self) -> bool:
        """Whether any link can caption a whole photo (the global text then starts with its caption)."""
        return any(not isinstance(c, PixelNamer) for c in self.captioners)

    def _ask(self, captioner: Captioner, call: Any) -> tuple[str | None, str | None]:
        try:
            raw = call()
        except (RuntimeError, ValueError, IndexError, KeyError) as exc:  # a model that cannot run this input
            return None, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return (text_filters.clean_text(raw) if raw is not None else None), None

    def instance_text(
        self, rgb: np.ndarray, lab: np.ndarray, mask: np.ndarray, label: str, given: str = ""
    ) -> Answer:
        """The first acceptable text: ``given`` (an annotation's own text), then each captioner."""
        crop = crop_mask(rgb, mask)
        if crop is None:
            raise ValueError("empty mask has no crop")
        view = InstanceView(to_pil(crop), label, naming.mean_lab(lab, mask))
        answer = Answer(None, None)
        if given:
            cleaned = text_filters.clean_text(given)
            verdict = text_filters.rejection(cleaned, self.rules)
            if verdict is None:
                answer.text, answer.source = cleaned, "given"
                return answer
            answer.rejected.append({"by": "given", "reason": verdict, "text": cleaned[:200]})
        for captioner in self.captioners:
            text, error = self._ask(captioner, lambda c=captioner: c.describe(view))
            reason = text_filters.ERROR if error else text_filters.rejection(text or "", self.rules)
            if reason is None or (isinstance(captioner, PixelNamer) and text):
                # The namer is the last resort: its "a {colour} {label}" is kept even past a limit.
                answer.text, answer.source = text, captioner.name
                return answer
            answer.rejected.append(
                {"by": captioner.name, "reason": reason, "text": (error or text or "")[:200]}
            )
        return answer

    def image_caption(self, rgb: np.ndarray) -> Answer:
        image = to_pil(rgb)
        answer = Answer(None, None)
        for captioner in self.captioners:
            if isinstance(captioner, PixelNamer):
                continue
            text, error = self._ask(captioner, lambda c=captioner: c.caption(image))
            reason = (
                text_filters.ERROR
                if error
                else text_filters.rejection(text or "", self.caption_rules, need_colour=False)
            )
            if reason is None:
                answer.text, answer.source = text, captioner.name
                return answer
            answer.rejected.append(
                {"by": captioner.name, "reason": reason, "text": (error or text or "")[:200]}
            )
        return answer


def build_chain(config: DatasetConfig, device: str) -> CaptionChain:
    """The paper's chain from the dataset config's models; the namer always closes it."""
    cap = config.captioner
    links: list[Captioner] = []
    if cap.vlm:
        prompts = Prompts(cap.vlm_instance_prompt, cap.vlm_image_prompt)
        links.append(
            HFCaptioner(
                "vlm", cap.vlm, device, prompts=prompts, max_new_tokens=cap.max_new_tokens, dtype=cap.dtype
            )
        )
    if cap.blip2:
        prompts = Prompts(cap.blip2_instance_prompt, cap.blip2_image_prompt)
        links.append(
            HFCaptioner(
                "blip2",
                cap.blip2,
                device,
                prompts=prompts,
                max_new_tokens=cap.max_new_tokens,
                dtype=cap.dtype,
            )
        )
    links.append(PixelNamer())
    rules = TextRules(max_words=config.filters.max_words)
    return CaptionChain(links, rules, caption_max_words=config.filters.caption_max_words)
