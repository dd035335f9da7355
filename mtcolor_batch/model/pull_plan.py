"""What `models pull` takes from each hub repo, and whether those parts fit together.

One home for three things the pull and its dry run must agree on:

* the file patterns per component (configs, one set of safetensors weights, never pickles, never
  a second precision of the same weights);
* the plan a dry run prints: the hub's file list filtered by those patterns, with sizes, without
  downloading a weight;
* the checks that the downloaded configs describe parts that wire together (SD 1.5 UNet, its VAE,
  text encoder, tokenizer and scheduler, a ControlNet of the same UNet, SAM, OWLv2). The pull runs
  them on its staging folder before it spends time on the MT-Color modules; the dry run runs them
  on configs fetched alone, so a user learns about a mismatch before a multi-GB download.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, hf_hub_download

from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.model.registry import COMPONENTS, Component

CONFIG_PATTERNS = ("*.json", "*.txt")
NEVER_DOWNLOADED = (
    "*.non_ema.*",
    "*.ema.*",
    "*.bin",
    "*.ckpt",
    "*.pt",
    "*.pth",
    "*.h5",
    "*.msgpack",
    "*.onnx",
)
"""Unused weight copies (SD 1.5 ships a non-EMA UNet) and every non-safetensors format."""
KNOWN_VARIANTS = ("fp16", "bf16", "fp32")
"""Weight variants a repo may ship beside its plain files; only the one asked for is downloaded."""
WEIGHT_FOLDERS = ("unet", "vae", "text_encoder", "controlnet", "sam", "detector")
CONFIG_FETCH_LIMIT = 256 * 1024
"""A dry run fetches json files up to this size (configs; not a 1 MB tokenizer vocabulary)."""
PERCEPTION_KEYS = ("sam", "detector")


def weight_pattern(variant: str | None) -> str:
    return f"*.{variant}.safetensors" if variant else "*.safetensors"


def component_variant(comp: Component, variant: str | None) -> str | None:
    """Only the SD 1.5 base ships precision variants worth choosing; other parts come as published."""
    return variant if comp.key == "base" else None


def download_patterns(comp: Component, variant: str | None) -> tuple[list[str], list[str]]:
    """(allow_patterns, ignore_patterns) for one component, as ``snapshot_download`` takes them.

    Without a variant, every known variant file is ignored: the plain ``*.safetensors`` pattern
    would otherwise also fetch ``model.fp16.safetensors`` beside ``model.safetensors`` (SD 1.5 ships
    both), a second copy of every weight that the bundle then throws away.
    """
    use = component_variant(comp, variant)
    allow = [_prefix(sub) + p for sub in comp.subfolders for p in (*CONFIG_PATTERNS, weight_pattern(use))]
    ignore = list(NEVER_DOWNLOADED)
    if use is None:
        ignore += [f"*.{v}.*" for v in KNOWN_VARIANTS]
    return allow, ignore


def fallback_patterns(subs: Iterable[str]) -> list[str]:
    """Plain weights for subfolders that have no file of the requested variant."""
    return [_prefix(sub) + p for sub in subs for p in (*CONFIG_PATTERNS, "*.safetensors")]


def _prefix(sub: str) -> str:
    return f"{sub}/" if sub else ""


def selected(names: Iterable[str], allow: list[str], ignore: list[str]) -> list[str]:
    """The names ``snapshot_download`` would fetch for these patterns (its own filter, not a copy)."""
    from huggingface_hub.utils import filter_repo_objects

    return sorted(filter_repo_objects(list(names), allow_patterns=allow, ignore_patterns=ignore))


def select_component_files(comp: Component, names: Iterable[str], variant: str | None) -> list[str]:
    """Every file of ``names`` (a repo listing) the pull downloads for ``comp``, fallback included."""
    names = list(names)
    allow, ignore = download_patterns(comp, variant)
    chosen = set(selected(names, allow, ignore))
    if component_variant(comp, variant):
        missing = [
            sub
            for sub, folder in comp.subfolders.items()
            if folder in WEIGHT_FOLDERS
            and not any(_in(sub, n) and n.endswith(".safetensors") for n in chosen)
        ]
        if missing:
            chosen |= set(selected(names, fallback_patterns(missing), list(NEVER_DOWNLOADED)))
    return sorted(chosen)


def _in(sub: str, name: str) -> bool:
    return "/" not in name if not sub else name.startswith(f"{sub}/") and "/" not in name[len(sub) + 1 :]


# ------------------------------------------------------------------------------------ dry run
@dataclass
class PlannedFile:
    path: str
    size: int | None


@dataclass
class ComponentPlan:
    """One repo of the default bundle as a pull would take it."""

    key: str
    repo_id: str
    revision: str
    commit: str | None
    files: list[PlannedFile]

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def unknown_sizes(self) -> int:
        return sum(f.size is None for f in self.files)


@dataclass
class PullPlan:
    components: list[ComponentPlan]
    problems: list[str] = field(default_factory=list)
    configs_checked: int = 0
    modules_size: int | None = None
    """Bytes of the MT-Color modules the pull writes locally (computed from the configs)."""

    @property
    def download_size(self) -> int:
        return sum(c.size for c in self.components)

    @property
    def unknown_sizes(self) -> int:
        return sum(c.unknown_sizes for c in self.components)


def selected_components(perception: bool) -> list[Component]:
    return [c for c in COMPONENTS if perception or c.key not in PERCEPTION_KEYS]


def plan_pull(
    revisions: dict[str, str] | None = None,
    *,
    variant: str | None = "fp16",
    perception: bool = True,
    api: Any = None,
    download: Callable[..., str] | None = None,
) -> PullPlan:
    """The files a pull would download (from the hub's listing, sizes included) and a config check.

    Only the hub's metadata and the small json configs are fetched, never a weight. ``api`` is an
    ``HfApi`` (``model_info(files_metadata=True)``) and ``download`` an ``hf_hub_download``; both
    default to huggingface_hub's own, and tests pass stand-ins.
    """
    api = HfApi() if api is None else api
    download = hf_hub_download if download is None else download
    revisions = dict(revisions or {})
    plans: list[ComponentPlan] = []
    with tempfile.TemporaryDirectory(prefix="mtcolor-dry-run-") as tmp:
        layout = Path(tmp) / "bundle"
        fetched = 0
        for comp in selected_components(perception):
            rev = revisions.get(comp.key, comp.revision)
            where = f"{comp.repo_id}@{rev}"
            info = _hub_call(where, api.model_info, comp.repo_id, revision=rev, files_metadata=True)
            sizes = {s.rfilename: getattr(s, "size", None) for s in info.siblings or []}
            names = select_component_files(comp, sizes, variant)
            plans.append(
                ComponentPlan(
                    key=comp.key,
                    repo_id=comp.repo_id,
                    revision=rev,
                    commit=getattr(info, "sha", None),
                    files=[PlannedFile(n, sizes[n]) for n in names],
                )
            )
            commit = getattr(info, "sha", None) or rev
            for name in names:
                size = sizes[name]
                if not name.endswith(".json") or (size is not None and size > CONFIG_FETCH_LIMIT):
                    continue
                sub, _, base = name.rpartition("/")
                folder = comp.subfolders.get(sub)
                if folder is None:
                    continue
                local = _hub_call(
                    where, download, comp.repo_id, name, revision=commit, cache_dir=str(Path(tmp) / "hub")
                )
                target = layout / folder / base
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(Path(local).read_bytes())
                fetched += 1
        problems = config_problems(layout, perception=perception)
        modules = None if problems else modules_size(layout)
    return PullPlan(plans, problems, fetched, modules)


def _hub_call(where: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the hub; any failure (HTTP, offline mode, auth, missing revision) is one ModelError line."""

    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # hub errors are many unrelated types
        first = (str(exc).splitlines() or [""])[0][:200]
        raise ModelError(
            f"cannot query {where}: {type(exc).__name__}: {first}",
            hint="the dry run needs the network (hub metadata and small configs only)",
        ) from exc


# ------------------------------------------------------------------------------- config checks
def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def config_problems(root: Path, *, perception: bool = True) -> list[str]:
    """Every way the configs in a bundle-shaped folder fail to wire together, one line each.

    These are the relations the loader and the MT-Color wiring rely on, checked on the configs
    alone (no weights): latent channels, the 8x downsampling shared by the VAE and the
    ControlNet's conditioning encoder, ControlNet residual widths equal to the UNet's, the text
    width the UNet cross-attends to, a scheduler diffusers can rebuild as DDIM, and the
    perception processors' configs.
    """
    problems: list[str] = []
    root = Path(root)

    def load(rel: str) -> dict[str, Any] | None:
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel}: missing")
            return None
        try:
            data = _json(path)
        except (OSError, ValueError) as exc:
            problems.append(f"{rel}: not valid JSON ({exc})")
            return None
        return data if isinstance(data, dict) else None

    unet = load("unet/config.json")
    vae = load("vae/config.json")
    text = load("text_encoder/config.json")
    tok = load("tokenizer/tokenizer_config.json")
    sched = load("scheduler/scheduler_config.json")
    cn = load("controlnet/config.json")
    if unet and vae:
        if vae.get("latent_channels") != unet.get("in_channels"):
            latent, inputs = vae.get("latent_channels"), unet.get("in_channels")
            problems.append(f"vae latent_channels {latent} != unet in_channels {inputs}")
        factor = 2 ** (len(vae.get("block_out_channels", [])) - 1)
        if factor != 8:
            problems.append(f"vae downsamples by {factor}, the sampler expects 8")
    if unet and text and text.get("hidden_size") != unet.get("cross_attention_dim"):
        problems.append(
            f"text_encoder hidden_size {text.get('hidden_size')} != unet cross_attention_dim "
            f"{unet.get('cross_attention_dim')}"
        )
    if tok and text and tok.get("model_max_length") != text.get("max_position_embeddings"):
        problems.append(
            f"tokenizer model_max_length {tok.get('model_max_length')} != text_encoder "
            f"max_position_embeddings {text.get('max_position_embeddings')}"
        )
    if unet and cn:
        for key in (
            "block_out_channels",
            "layers_per_block",
            "cross_attention_dim",
            "in_channels",
            "down_block_types",
        ):
            want, got = unet.get(key), cn.get(key)
            if want is not None and list(_as_list(got)) != list(_as_list(want)):
                problems.append(
                    f"controlnet {key} {got} != unet {key} {want} (its residuals must fit the UNet)"
                )
    if cn:
        channels = cn.get("conditioning_embedding_out_channels", (16, 32, 96, 256))
        factor = 2 ** (len(channels) - 1)
        if factor != 8:
            problems.append(
                f"controlnet conditioning_embedding_out_channels {list(channels)} downsample the control "
                f"image by {factor}, the latents are 8x smaller than the image"
            )
        if cn.get("conditioning_channels", 3) != 3:
            problems.append(
                f"controlnet conditioning_channels {cn.get('conditioning_channels')} != 3 (RGB gray scan)"
            )
    if sched:
        problems += _scheduler_problems(sched)
    if perception:
        problems += _perception_problems(root, load)
    return problems


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def _scheduler_problems(config: dict[str, Any]) -> list[str]:
    import diffusers
    from diffusers import SchedulerMixin

    name = str(config.get("_class_name", ""))
    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        return [f"scheduler _class_name {name!r} is not a diffusers scheduler"]
    problems = []
    if config.get("prediction_type", "epsilon") not in ("epsilon", "v_prediction", "sample"):
        problems.append(f"scheduler prediction_type {config.get('prediction_type')!r} is unknown to DDIM")
    if config.get("beta_schedule", "linear") not in ("linear", "scaled_linear", "squaredcos_cap_v2"):
        problems.append(f"scheduler beta_schedule {config.get('beta_schedule')!r} cannot be rebuilt as DDIM")
    return problems


def _image_processor(root: Path, folder: str, problems: list[str]) -> dict[str, Any] | None:
    """The image processor settings of a perception folder, in either layout transformers reads.

    Hub repos ship ``preprocessor_config.json`` (SAM, OWLv2 as published); ``save_pretrained`` of
    transformers 5 writes ``processor_config.json`` with the same settings under ``image_processor``.
    """
    legacy, current = root / folder / "preprocessor_config.json", root / folder / "processor_config.json"
    try:
        if legacy.is_file():
            return _json(legacy)
        if current.is_file():
            return dict(_json(current).get("image_processor") or {})
    except (OSError, ValueError) as exc:
        problems.append(f"{folder}: image processor config is not valid JSON ({exc})")
        return None
    problems.append(f"{folder}/preprocessor_config.json: missing")
    return None


def _perception_problems(root: Path, load: Callable[[str], dict[str, Any] | None]) -> list[str]:
    problems: list[str] = []
    samc = load("sam/config.json")
    if samc is not None and samc.get("model_type") != "sam":
        problems.append(f"sam/config.json model_type {samc.get('model_type')!r} != 'sam'")
    sam = _image_processor(root, "sam", problems)
    if sam is not None:
        longest = (sam.get("size") or {}).get("longest_edge")
        pad = sam.get("pad_size") or {}
        if not longest or pad.get("height") != longest or pad.get("width") != longest:
            problems.append(f"sam image processor size {sam.get('size')} / pad_size {pad} are not one square")
    det = load("detector/config.json")
    if det is not None and det.get("model_type") != "owlv2":
        problems.append(f"detector/config.json model_type {det.get('model_type')!r} != 'owlv2'")
    detp = _image_processor(root, "detector", problems)
    if det is not None and detp is not None:
        image = (det.get("vision_config") or {}).get("image_size", 768)
        size = detp.get("size") or {}
        if size.get("height") != image or size.get("width") != image:
            problems.append(f"detector image processor size {size} != the model's image_size {image}")
    load("detector/tokenizer_config.json")
    return problems


def modules_size(root: Path) -> int:
    """Bytes of the zero-initialised MT-Color modules a pull writes for these configs (float32).

    Built on the meta device: only shapes are computed, nothing is allocated.
    """
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from mtcolor_batch.model.denoiser import MTColorModules  # deferred: loads torch

    text = _json(Path(root) / "text_encoder" / "config.json")
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(Path(root) / "unet"))
        controlnet = ControlNetModel.from_config(ControlNetModel.load_config(Path(root) / "controlnet"))
        modules = MTColorModules.from_unet(unet, controlnet, text_dim=int(text["hidden_size"]))
    return sum(p.numel() for p in modules.state_dict().values()) * 4


def human_size(n: int | None) -> str:
    """Bytes in the hub's own units (decimal, 3 significant digits): 1.72 GB, 466 B."""
    if n is None:
        return "size not reported"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"
