"""The per-file stage chain: scan -> sidecar -> perceive -> hints -> plan -> colorize -> compose -> write.

One :class:`Pipeline` holds what is loaded once per run (engine, perception models, profile) and
turns one discovered file into its outputs. Stages are announced through a callback before they
start; the batch runner uses it for progress and as the safe point to stop at after a Ctrl-C (any
stage before ``write`` can be abandoned without leaving anything behind).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from mtcolor_batch.core.color import rgb_to_ab
from mtcolor_batch.core.config import Profile
from mtcolor_batch.core.errors import UserError, is_out_of_space
from mtcolor_batch.core.fs import OutputBatch
from mtcolor_batch.hints.adherence import enforce
from mtcolor_batch.model.bundle import read_manifest
from mtcolor_batch.output.content_credentials import (
    ContentSigner,
    Original,
    plain_temp,
    provenance_assertion,
    scan_mime,
)
from mtcolor_batch.output.credentials import signing_paths
from mtcolor_batch.output.provenance import build_record, embedded_meta, instance_record, record_bytes
from mtcolor_batch.output.writer import check_output_names, encode_image, format_for, output_path
from mtcolor_batch.render.chroma import compose_quantized, decoded_to_output, resize_luma
from mtcolor_batch.scan.discover import ScanFile
from mtcolor_batch.scan.imageio import load_scan, srgb_icc_bytes

StageCallback = Callable[[str], None]


def model_hash(bundle_dir: Path) -> str:
    """Digest of every weight file's sha256 (from the manifest: cheap, no weights read)."""
    return read_manifest(bundle_dir).weights_sha256


def derive_seed(input_sha256: str) -> int:
    """Seed from the file's content: reruns (and moved files) get the same seed without a record."""
    return int(input_sha256[:8], 16) & 0x7FFFFFFF


def fingerprint(
    input_sha256: str,
    sidecar_sha256: str | None,
    profile_fp: str,
    model_fp: str,
    masks: Mapping[str, str] | None = None,
    folder_files: Mapping[str, str] | None = None,
) -> str:
    """What must match for a done file to be skipped: input, sidecar, the sidecar's mask files
    (``{path as written: sha256}``), the folder rules files that apply (``{relpath: sha256}``: an
    edited rule redoes exactly the scans below it), profile and model. Without masks or rules it is
    what it always was, so files without them are not redone after an upgrade."""
    text = f"{input_sha256}|{sidecar_sha256 or '-'}|{profile_fp}|{model_fp}"
    if masks:
        text += "|masks:" + "|".join(f"{raw}={sha}" for raw, sha in sorted(masks.items()))
    if folder_files:
        text += "|folder:" + "|".join(f"{rel}={sha}" for rel, sha in sorted(folder_files.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class Interrupted(Exception):
    """Raised by a stage callback to abandon the current file before ``write`` (after a first Ctrl-C)."""


@dataclass
class FileResult:
    """What one processed file produced (paths relative to the output folder).

    ``warnings``: the record's ``warnings`` then its ``notes`` (what loading the scan noticed); the
    run's summary lists them under the file's name.
    """

    outputs: list[str]
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    engine_seconds: float = 0.0
    fingerprint: str = ""  # of the input, sidecar and masks as read for this output (not as planned)
    output_sha256: dict[str, str] = field(default_factory=dict)  # output relpath -> sha256 written


@dataclass
class Pipeline:
    """Loaded once per run; :meth:`process` runs the stage chain on one file."""

    profile: Profile
    bundle_dir: Path
    engine: Any
    perception: Any
    device: str
    scan_root: Path
    out_dir: Path
    model_fp: str
    signer: ContentSigner | None = None  # C2PA Content Credentials (output.c2pa: sign)

    @classmethod
    def load(cls, profile: Profile, bundle_dir: Path, scan_root: Path, out_dir: Path) -> Pipeline:
        """Load the engine and the perception models from the bundle on the profile's device.

        The C2PA key is read here, from the path the profile names, by the process that signs
        (a Ray worker included): it never travels in a task argument.
        """
        from mtcolor_batch.core.device import flush_cpu_denormals  # deferred: loads torch
        from mtcolor_batch.model.engine import EngineOptions, MTColorEngine  # deferred: loads torch
        from mtcolor_batch.perception.models import load_perception  # deferred: loads torch

        flush_cpu_denormals()  # before any model loads, so torch's worker threads inherit it

        signer = None
        if profile.output.c2pa == "sign":
            signer = ContentSigner.from_paths(signing_paths(profile.output))

        engine = MTColorEngine.load(
            bundle_dir,
            device=profile.device,
            dtype=profile.sampling.dtype,
            options=EngineOptions.from_sampling(profile.sampling),
        )
        device = str(getattr(engine, "device", profile.device))
        # Loaded even with auto instances off: SAM also serves sidecar box/point hints.
        perception = load_perception(bundle_dir, device, long_side=profile.perception.size)
        return cls(
            profile=profile,
            bundle_dir=bundle_dir,
            engine=engine,
            perception=perception,
            device=device,
            scan_root=scan_root,
            out_dir=out_dir,
            model_fp=model_hash(bundle_dir),
            signer=signer,
        )

    def process(self, item: ScanFile, stage: StageCallback) -> FileResult:
        """Run every stage on one file and write its outputs atomically; raise UserError on bad input."""
        from mtcolor_batch.perception.instances import resize_instances  # deferred: loads torch
        from mtcolor_batch.stages.instances import (  # deferred: loads torch
            find_instances,
            read_folder_rules,
            read_sidecar,
            sidecar_masks,
        )
        from mtcolor_batch.stages.plan import make_plan  # deferred: loads torch

        prof = self.profile
        timings: dict[str, float] = {}
        clock = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal clock
            now = time.perf_counter()
            timings[name] = timings.get(name, 0.0) + (now - clock)
            clock = now

        stage("load")
        check_output_names(self.out_dir, item.relpath, prof.output.suffix, item.stem)
        scan = load_scan(item.path, self.scan_root, prof.scan)
        lap("load")
        stage("hints")
        sidecar = read_sidecar(scan, prof.hints)
        masks = sidecar_masks(sidecar, self.scan_root)  # recorded, so `journal rebuild` has the fingerprint
        folder = read_folder_rules(scan, self.scan_root, prof.hints)
        lap("hints")
        stage("perceive")
        found = find_instances(scan, sidecar, self.perception, prof, self.scan_root, folder)
        instances, warnings = found.instances, found.warnings + ([item.name_note] if item.name_note else [])
        lap("perceive")
        stage("plan")
        # The sidecar speaks for this one file, so its seed beats the run-wide profile/--seed.
        if found.seed is not None:
            seed, seed_source = found.seed, "sidecar"
        elif prof.seed is not None:
            seed, seed_source = prof.seed, "profile"
        else:
            seed, seed_source = derive_seed(scan.sha256), "input sha256"
        prompt = found.prompt or prof.sampling.prompt
        plan = make_plan(scan.size, prof.sampling, seed, prompt, found.negative_prompt)
        luma_w = resize_luma(scan.luma, plan.working_size)
        insts_w = resize_instances(instances, scan.size, plan.working_size)
        lap("plan")
        stage("colorize")
        decoded = None
        # Asked at every denoising step, so a Ctrl-C or SIGTERM abandons the file within one step
        # rather than after the whole sampling (minutes for hundreds of steps on a tiled scan).
        def on_step(_step: int) -> None:
            stage("colorize")

        if prof.output.luminance_lock:
            ab = self.engine.colorize(luma_w, insts_w, plan, on_step)
        else:  # the paper profile: the decoded RGB is the output; a*, b* only for adherence stats
            decoded = self.engine.colorize_rgb(luma_w, insts_w, plan, on_step)
            ab = rgb_to_ab(decoded)
        lap("colorize")
        ab, stats = enforce(ab, luma_w, insts_w, prof.hints)
        lap("adherence")
        stage("compose")
        fmt = format_for(scan.relpath, scan.format)
        bit_depth = scan.bit_depth if fmt in ("TIFF", "PNG") else 8
        if decoded is not None:
            rgb = decoded_to_output(decoded, scan.size, bit_depth)
        else:
            # Straight to the output's integers: a float32 RGB copy would be 12 B/px (1.2 GB at 100 MP).
            rgb = compose_quantized(scan.luma, ab, bit_depth)
        lap("compose")
        stage("write")
        info = dict(self.engine.info)
        model_name = str(info.get("name") or info.get("bundle") or self.bundle_dir.name)
        img_path = output_path(self.out_dir, scan.relpath, prof.output.suffix, stem=item.stem)
        rec_path = output_path(
            self.out_dir, scan.relpath, prof.output.suffix, json_record=True, stem=item.stem
        )
        meta = embedded_meta(
            scan,
            model_name=model_name,
            seed=seed,
            steps=plan.steps,
            record_name=rec_path.name,
            icc_profile=srgb_icc_bytes() if scan.icc_profile else None,
        )
        outputs = [img_path.relative_to(self.out_dir).as_posix()]

        def encode(fh: BinaryIO) -> None:
            encode_image(fh, rgb, fmt, bit_depth, meta, prof.output.jpeg_quality)

        def record(out_sha: str | None) -> dict[str, Any]:
            stats_by_id = _stats_by_id(stats)
            return build_record(
                scan=scan,
                profile=prof,
                plan=plan,
                seed_source=seed_source,
                engine_info=info,
                model_dir=self.bundle_dir,
                model_hash=self.model_fp,
                instances=[instance_record(i, stats_by_id.get(i.id), scan.size) for i in instances],
                sidecar_path=sidecar.path,
                sidecar_sha256=sidecar.sha256,
                sidecar_masks=masks,
                folder_files=found.folder_files,
                output_path=img_path,
                output_sha256=out_sha,
                output_format=fmt,
                output_bit_depth=bit_depth,
                device=self.device,
                timings=timings,
                warnings=warnings,
                out_dir=self.out_dir,
            )

        hashes: dict[str, str] = {}  # output -> sha256 written, for the journal's done row
        with OutputBatch() as batch:  # image (+ C2PA sidecar) + record renamed into place together
            if self.signer is None:
                out_sha = batch.add(img_path, encode)
                hashes[outputs[0]] = out_sha
                lap("write")
                rec = record(out_sha) if prof.output.write_json else None
            else:
                with plain_temp(img_path.parent, encode) as plain:
                    lap("write")
                    # Built before signing: the manifest carries its digest (record_digest).
                    rec = record(None)
                    original = Original(Path(scan.relpath).name, scan_mime(scan.format), scan.sha256)
                    assertion = provenance_assertion(rec, rec_path.name if prof.output.write_json else None)
                    signed = self.signer.write_signed(batch, img_path, plain, fmt, original, assertion)
                lap("sign")
                rec["output"]["sha256"] = hashes[outputs[0]] = signed.sha256
                rec["content_credentials"] = signed.entry
                if signed.sidecar is not None:
                    outputs.append(signed.sidecar.relative_to(self.out_dir).as_posix())
            if rec is not None and prof.output.write_json:
                data = record_bytes(rec)
                outputs.append(rec_path.relative_to(self.out_dir).as_posix())
                hashes[outputs[-1]] = batch.add(rec_path, lambda fh: _put(fh, data))
        lap("write")
        return FileResult(
            outputs=outputs,
            timings=timings,
            warnings=warnings + list(scan.notes),
            engine_seconds=timings.get("colorize", 0.0),
            # What the journal must hold for this output: the bytes read here, which a sidecar
            # edited after planning (and reverted later) would otherwise leave out of step for good.
            fingerprint=fingerprint(
                scan.sha256, sidecar.sha256, prof.fingerprint(), self.model_fp, masks, found.folder_files
            ),
            output_sha256=hashes,
        )


def _put(fh: BinaryIO, data: bytes) -> None:
    fh.write(data)


def _stats_by_id(stats: Any) -> dict[int, dict[str, Any]]:
    """Adherence stats keyed by instance id, whatever container the hints stage returns."""
    if isinstance(stats, dict):
        return {int(k): v for k, v in stats.items()}
    out: dict[int, dict[str, Any]] = {}
    for entry in stats or []:
        if isinstance(entry, dict) and "id" in entry:
            out[int(entry["id"])] = entry
    return out


class FileProcessor(Protocol):
    """What an executor needs from a loaded pipeline (:class:`Pipeline`, or a test double)."""

    device: str

    def process(self, item: ScanFile, stage: StageCallback) -> FileResult: ...


@dataclass
class WorkResult:
    """One file's result as every executor records it (plain fields: it crosses process boundaries)."""

    relpath: str
    state: str  # done | failed | no-space (the disk is full: the file is not at fault, the run stops)
    error: str = ""
    outputs: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    engine_seconds: float = 0.0
    fingerprint: str = ""  # of what was read for this output (empty: the planned one stands)
    output_sha256: dict[str, str] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def process_one(pipeline: FileProcessor, item: ScanFile, stage: StageCallback) -> WorkResult:
    """The unit of work every executor runs unchanged: one file, classified done or failed.

    A :class:`UserError` fails the file with its own one-line reason; any other exception is an
    engine or library bug, which fails this file (never the whole overnight run) with a one-line
    ``internal error``. :class:`Interrupted` raised by ``stage`` propagates: the executor rolls the
    file back. A full disk is no file's fault: ``no-space``, and the executor stops the run.
    """
    started = time.perf_counter()
    state = "failed"
    try:
        result = pipeline.process(item, stage)
    except Interrupted:
        raise
    except UserError as exc:
        reason = exc.one_line()
        state = "no-space" if is_out_of_space(exc) else state
    except Exception as exc:  # an engine/library bug must not end an overnight run
        reason = f"{item.relpath}: internal error: {type(exc).__name__}: {exc}".splitlines()[0]
        state = "no-space" if is_out_of_space(exc) else state
    else:
        seconds = time.perf_counter() - started
        return WorkResult(
            relpath=item.relpath,
            state="done",
            outputs=list(result.outputs),
            timings={**{k: float(v) for k, v in result.timings.items()}, "total": seconds},
            seconds=seconds,
            engine_seconds=float(result.engine_seconds),
            fingerprint=result.fingerprint,
            output_sha256=dict(result.output_sha256),
            warnings=list(result.warnings),
        )
    seconds = time.perf_counter() - started
    return WorkResult(item.relpath, state, reason, timings={"total": seconds}, seconds=seconds)
