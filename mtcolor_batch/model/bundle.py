"""Model bundles: one directory, one manifest, every file hashed.

A bundle is the unit of provenance: an output names the bundle and the digest of its weights, and
``verify`` proves the files on disk are the ones that digest describes. Only safetensors weights are
accepted, because pickle-based formats (.bin/.pt/.ckpt) can run code when loaded.

Layout (docs/design.md): ``mtcolor.json`` + ``unet/ vae/ text_encoder/ tokenizer/ controlnet/ scheduler/``
+ ``mtcolor_modules.safetensors`` (+ optional perception folders ``sam/`` and ``detector/``).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import snapshot_download

from mtcolor_batch.core.errors import ModelError
from mtcolor_batch.core.fs import atomic_write_text, sha256_file, staged_dir
from mtcolor_batch.model.pull_plan import (
    WEIGHT_FOLDERS,
    component_variant,
    config_problems,
    download_patterns,
    fallback_patterns,
    selected_components,
)
from mtcolor_batch.model.registry import (
    COMPONENTS,
    MANIFEST_FILE,
    MODULES_FILE,
    REQUIRED_FOLDERS,
    default_bundle_dir,
    hub_cache_dir,
    not_a_bundle,
)

FORMAT_VERSION = 1
UNSAFE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".h5", ".msgpack", ".onnx")
"""Weight formats a bundle refuses: pickles can execute code; the others are not what we load."""


@dataclass
class Bundle:
    """A bundle as described by its manifest (``files`` maps relative path -> sha256)."""

    path: Path
    name: str
    revision: str
    tiny: bool
    components: dict[str, str]
    files: dict[str, str]
    sources: dict[str, Any] = field(default_factory=dict)

    @property
    def weights_sha256(self) -> str:
        """One digest over every file's hash: what provenance records as "the model"."""
        return manifest_digest(self.files)

    @property
    def has_perception(self) -> bool:
        return "sam" in self.components and "detector" in self.components

    def file(self, rel: str) -> Path:
        return self.path / rel


def manifest_digest(files: dict[str, str]) -> str:
    text = "\n".join(f"{rel}:{files[rel]}" for rel in sorted(files))
    return hashlib.sha256(text.encode()).hexdigest()


def _bundle_files(root: Path) -> list[str]:
    """Every file that belongs to the bundle (relative, posix), the manifest excluded, sorted."""
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if rel != MANIFEST_FILE:
                out.append(rel)
    return out


def _refuse_unsafe(root: Path, rels: list[str]) -> None:
    for rel in rels:
        if rel.lower().endswith(UNSAFE_WEIGHT_SUFFIXES):
            raise ModelError(
                "weights in a pickle/unsupported format are refused (safetensors only)",
                path=root / rel,
                hint="delete it or convert it to .safetensors",
            )


def _components_of(root: Path) -> dict[str, str]:
    comps = {p.name: p.name for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")}
    if (root / MODULES_FILE).is_file():
        comps["mtcolor_modules"] = MODULES_FILE
    return comps


def save_bundle(
    root: Path,
    *,
    name: str,
    revision: str,
    tiny: bool = False,
    sources: dict[str, Any] | None = None,
) -> Bundle:
    """Hash every file under ``root`` and write ``mtcolor.json``; the folder must already be complete.

    Writing the manifest last (atomically) means a half-assembled folder never looks like a bundle.
    """
    root = Path(root)
    _check_layout(root)
    rels = _bundle_files(root)
    _refuse_unsafe(root, rels)
    files = {rel: sha256_file(root / rel) for rel in rels}
    bundle = Bundle(
        path=root,
        name=name,
        revision=revision,
        tiny=tiny,
        components=_components_of(root),
        files=files,
        sources=dict(sources or {}),
    )
    manifest = {
        "format": FORMAT_VERSION,
        "name": bundle.name,
        "revision": bundle.revision,
        "tiny": bundle.tiny,
        "components": bundle.components,
        "sources": bundle.sources,
        "weights_sha256": bundle.weights_sha256,
        "files": files,
    }
    atomic_write_text(root / MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return bundle


def _check_layout(root: Path) -> None:
    if not root.is_dir():
        raise ModelError("model bundle folder not found", path=root, hint="run `mtcolor-batch models pull`")
    for folder in REQUIRED_FOLDERS:
        if not (root / folder).is_dir():
            raise ModelError(
                f"bundle is missing the '{folder}/' component",
                path=root,
                hint="re-run `mtcolor-batch models pull` or point --model at a complete bundle",
            )
    if not (root / MODULES_FILE).is_file():
        raise ModelError(
            f"bundle is missing {MODULES_FILE}",
            path=root,
            hint="re-run `mtcolor-batch models pull` or point --model at a complete bundle",
        )


def read_manifest(root: Path) -> Bundle:
    """Parse ``mtcolor.json`` without touching the weights (cheap; for listings)."""
    root = Path(root)
    mpath = root / MANIFEST_FILE
    if not root.is_dir():
        raise ModelError("model bundle folder not found", path=root, hint="run `mtcolor-batch models pull`")
    if not mpath.is_file():
        raise not_a_bundle(root)
    try:
        data = json.loads(mpath.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ModelError(
            f"bundle manifest is not UTF-8 text (byte {exc.start})",
            path=mpath,
            hint="re-pull the bundle or restore mtcolor.json",
        ) from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read bundle manifest: {exc}", path=mpath) from exc
    try:
        if data.get("format") != FORMAT_VERSION:
            raise ModelError(
                f"unsupported bundle format {data.get('format')!r} (this version reads {FORMAT_VERSION})",
                path=mpath,
            )
        files = {str(k): str(v) for k, v in data["files"].items()}
        return Bundle(
            path=root,
            name=str(data["name"]),
            revision=str(data["revision"]),
            tiny=bool(data.get("tiny", False)),
            components={str(k): str(v) for k, v in data["components"].items()},
            files=files,
            sources=dict(data.get("sources") or {}),
        )
    except (KeyError, AttributeError, TypeError) as exc:
        raise ModelError(f"bundle manifest is malformed (missing or bad key {exc})", path=mpath) from exc


def verify_problems(bundle: Bundle) -> list[str]:
    """Every way the folder differs from its manifest, one line each (empty list = verified).

    Returned as a list so ``models verify`` can show all problems at once; ``load_bundle`` raises on
    the first one.
    """
    root = bundle.path
    problems: list[str] = []
    for folder in REQUIRED_FOLDERS:
        if not (root / folder).is_dir():
            problems.append(
                f"{root / folder}: component folder is missing (re-run `mtcolor-batch models pull`)"
            )
    on_disk = set(_bundle_files(root))
    for rel in sorted(bundle.files):
        path = root / rel
        if rel.lower().endswith(UNSAFE_WEIGHT_SUFFIXES):  # listed or not: the loading rule
            problems.append(
                f"{path}: pickle/unsupported weight format refused (safetensors only), even though "
                f"{MANIFEST_FILE} lists it (re-pull the bundle)"
            )
        elif rel not in on_disk:
            problems.append(
                f"{path}: file listed in {MANIFEST_FILE} is missing (restore it or re-pull the bundle)"
            )
        elif sha256_file(path) != bundle.files[rel]:
            problems.append(
                f"{path}: sha256 does not match {MANIFEST_FILE} "
                "(file changed; restore it or re-pull the bundle)"
            )
    for rel in sorted(on_disk - set(bundle.files)):
        if rel.lower().endswith(UNSAFE_WEIGHT_SUFFIXES):
            problems.append(
                f"{root / rel}: pickle/unsupported weight format refused (safetensors only; delete it)"
            )
        elif rel.endswith((".safetensors", ".json", ".txt")):
            problems.append(
                f"{root / rel}: file is not listed in {MANIFEST_FILE} (remove it, or re-save the bundle)"
            )
    modules = root / MODULES_FILE
    if modules.is_file():
        from mtcolor_batch.model.denoiser import (  # deferred: loads torch
            FORMAT_VERSION,
            OUTDATED_HINT,
            modules_format,
        )

        found = modules_format(modules)
        if found is not None and found != FORMAT_VERSION:
            hint = OUTDATED_HINT if found == 1 else "update mtcolor-batch or re-pull the bundle"
            problems.append(
                f"{modules}: MT-Color modules are format {found}, "
                f"this version needs {FORMAT_VERSION} ({hint})"
            )
    problems += accelerator_problems(bundle)
    return problems


def accelerator_problems(bundle: Bundle) -> list[str]:
    """Accelerators (``model/accelerators.py``) the manifest describes with another file or digest
    than its files list holds: the section names what runs, the files list what was verified."""
    raw = bundle.sources.get("accelerators") or {}
    if not isinstance(raw, dict):
        return [f"{bundle.path / MANIFEST_FILE}: the accelerators section is malformed (re-add them)"]
    problems = []
    for name, data in sorted(raw.items()):
        rel = data.get("file") if isinstance(data, dict) else None
        if not rel or bundle.files.get(str(rel)) != data.get("sha256"):
            problems.append(
                f"{bundle.path / str(rel or name)}: accelerator '{name}' is not the file {MANIFEST_FILE} "
                "lists (re-add it with `mtcolor-batch models accelerator add`)"
            )
    return problems


def verify_bundle(bundle: Bundle) -> None:
    """Raise a one-line :class:`ModelError` naming the first bad file and what to do."""
    problems = verify_problems(bundle)
    if problems:
        more = f" (+{len(problems) - 1} more; see `mtcolor-batch models verify`)" if len(problems) > 1 else ""
        raise ModelError(problems[0] + more)


def load_bundle(root: Path, *, verify: bool = True) -> Bundle:
    """Read a bundle's manifest and (by default) prove every file matches it."""
    bundle = read_manifest(Path(root))
    if verify:
        verify_bundle(bundle)
    else:
        _check_layout(bundle.path)
    return bundle


# ------------------------------------------------------------------------------------------ pull
def _commit_of(snapshot: Path, revision: str) -> str:
    """The commit a hub snapshot resolved to (its folder name), else the requested revision."""
    name = Path(snapshot).name
    return name if len(name) == 40 and all(c in "0123456789abcdef" for c in name) else revision


def _copy_component(snapshot: Path, sub: str, target: Path, variant: str | None) -> None:
    """Copy configs and one set of safetensors weights from a snapshot folder into the bundle.

    ``name.<variant>.safetensors`` is stored as ``name.safetensors`` so the bundle loads without a
    variant argument; when both exist the variant wins (it is what was asked for).
    """
    import shutil

    src_root = snapshot / sub if sub else snapshot
    if not src_root.is_dir():
        return
    target.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src_root.iterdir() if p.is_file())
    variant_names = {p.name for p in files if variant and p.name.endswith(f".{variant}.safetensors")}
    for p in files:
        name = p.name
        if name.lower().endswith(UNSAFE_WEIGHT_SUFFIXES):
            continue
        if name.endswith(".safetensors"):
            if variant and name.endswith(f".{variant}.safetensors"):
                name = name[: -len(f".{variant}.safetensors")] + ".safetensors"
            elif variant and name.replace(".safetensors", f".{variant}.safetensors") in variant_names:
                continue  # the variant of this file is copied instead
            elif "." in name[: -len(".safetensors")]:
                continue  # another variant (fp16, non_ema, ...) than the one asked for
        elif not name.endswith((".json", ".txt")):
            continue
        shutil.copyfile(p, target / name)


def pull_bundle(
    dest: Path | None = None,
    *,
    revisions: dict[str, str] | None = None,
    variant: str | None = "fp16",
    perception: bool = True,
    log: Any = None,
) -> Bundle:
    """Assemble the default bundle from the hub (network needed) and write its manifest.

    ``revisions`` overrides the registry's revision per component key (``base``, ``controlnet``,
    ``sam``, ``detector``). Weights are fetched as safetensors only (configs as json/txt); the base
    model's ``fp16`` variant is preferred (half the download; the engine upcasts on CPU) and the
    plain file is fetched only where no variant exists. The bundle is built in a temp folder next to
    ``dest`` and moved into place at the end, so a failed pull never leaves a half bundle behind.
    """

    say = log or (lambda _msg: None)
    dest = Path(dest) if dest else default_bundle_dir()
    revisions = dict(revisions or {})
    unknown = set(revisions) - {c.key for c in COMPONENTS}
    if unknown:
        raise ModelError(
            f"unknown component in --revision: {', '.join(sorted(unknown))}",
            hint=f"use one of {', '.join(c.key for c in COMPONENTS)}",
        )
    sources: dict[str, Any] = {}
    with staged_dir(dest, "pulling") as staging:
        for comp in selected_components(perception):
            rev = revisions.get(comp.key, comp.revision)
            say(f"pulling {comp.key}: {comp.repo_id}@{rev}")
            use_variant = component_variant(comp, variant)
            allow, ignore = download_patterns(comp, variant)
            snapshot = Path(_download(comp.repo_id, rev, allow, ignore, hub_cache_dir()))
            missing = [
                sub
                for sub, folder in comp.subfolders.items()
                if folder in WEIGHT_FOLDERS and not any((snapshot / sub).glob("*.safetensors"))
            ]
            if missing and use_variant:
                fallback = fallback_patterns(missing)
                snapshot = Path(_download(comp.repo_id, rev, fallback, ignore, hub_cache_dir()))
            for sub, folder in comp.subfolders.items():
                _copy_component(snapshot, sub, staging / folder, use_variant)
                if folder in WEIGHT_FOLDERS and not any((staging / folder).glob("*.safetensors")):
                    raise ModelError(
                        f"{comp.repo_id}@{rev} has no safetensors weights for '{folder}'",
                        hint="pick a revision that ships .safetensors (pickle weights are refused)",
                    )
            sources[comp.key] = {
                "repo_id": comp.repo_id,
                "revision": rev,
                "commit": _commit_of(snapshot, rev),
            }
        problems = config_problems(staging, perception=perception)
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ModelError(
                f"the pulled parts do not fit together: {problems[0]}{more}",
                hint="check the --revision pins; `mtcolor-batch models pull --dry-run` lists every problem",
            )
        say("writing zero-initialised MT-Color modules")
        _write_fresh_modules(staging)
        revision = "+".join(f"{k}@{v['commit'][:12]}" for k, v in sources.items())
        save_bundle(staging, name=dest.name, revision=revision, tiny=False, sources=sources)
    return read_manifest(dest)


def _download(repo_id: str, revision: str, allow: list[str], ignore: list[str], cache: Path) -> str:
    try:
        return snapshot_download(
            repo_id,
            revision=revision,
            allow_patterns=allow,
            ignore_patterns=ignore,
            cache_dir=str(cache),
        )
    except Exception as exc:  # hub errors are many unrelated types (HTTP, offline mode, auth, 404)
        raise ModelError(
            f"cannot download {repo_id}@{revision}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}",
            hint="`models pull` needs the network; offline, copy a bundle over and pass --model DIR",
        ) from exc


def _write_fresh_modules(root: Path) -> None:
    """Zero-gated PMAM + instance guidance sized for this UNet/ControlNet (exact no-ops)."""
    import json as _json

    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    from mtcolor_batch.model.denoiser import MTColorModules  # deferred: loads torch

    text_config = _json.loads((root / "text_encoder" / "config.json").read_text(encoding="utf-8"))
    # Shapes only depend on the configs: build on the meta device, no weights read or allocated.
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(root / "unet"))
        controlnet = ControlNetModel.from_config(ControlNetModel.load_config(root / "controlnet"))
    # The instance branches start from the UNet's self-attention weights: read just those tensors.
    from safetensors import SafetensorError, safe_open

    files = sorted((root / "unet").glob("*.safetensors"))

    def weight(name: str) -> torch.Tensor:
        for path in files:
            with safe_open(str(path), framework="pt") as f:
                if name in f.keys():  # noqa: SIM118 - safe_open is not a dict
                    return f.get_tensor(name).float()
        raise ModelError(f"UNet weight {name} not found", path=root / "unet")

    with torch.random.fork_rng(devices=[]):  # seeded: the same pull gives the same bytes
        torch.manual_seed(0)
        text_dim = int(text_config["hidden_size"])
        try:
            modules = MTColorModules.from_unet(unet, controlnet, text_dim=text_dim, weight=weight)
        except (OSError, ValueError, ModelError, SafetensorError):
            # Unreadable UNet weights fail `verify`/load later with their own message; the modules
            # keep random branch projections (still exact no-ops: the gates are zero).
            torch.manual_seed(0)
            modules = MTColorModules.from_unet(unet, controlnet, text_dim=text_dim, init_branches=False)
    modules.save(root / MODULES_FILE)
