"""The provenance of every output: embedded metadata (EXIF/XMP) and the ``<stem>.color.json`` record.

Why both: embedded tags travel with the image into any catalogue (and say it was made by a trained
algorithm, IPTC DigitalSourceType), while the JSON record holds everything needed to reproduce the
output on the same device: tool, model bundle and weights hash, every effective parameter, seed,
prompts, instances, input/sidecar/output hashes. Embedded metadata holds no clock time, so two runs
with the same seed write byte-identical images but for their C2PA manifests (signed anew each time,
``output.content_credentials``); the time lives in the JSON record.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from mtcolor_batch import __version__
from mtcolor_batch.core.config import Profile
from mtcolor_batch.core.errors import path_text, visible_text
from mtcolor_batch.core.fs import atomic_write_bytes
from mtcolor_batch.core.types import Instance, Plan, Scan
from mtcolor_batch.model.paper_deviations import deviations
from mtcolor_batch.output.mask_rle import encode_region
from mtcolor_batch.output.writer import EmbeddedMeta

DIGITAL_SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/compositeWithTrainedAlgorithmicMedia"
TOOL = f"mtcolor-batch {__version__}"


def _xml_text(text: str) -> str:
    """``text`` as XML 1.0 character data: characters XML cannot hold at all (control characters
    a file name may contain) are written visibly (:func:`visible_text`), the rest escaped."""
    return escape(visible_text(text))


def build_xmp(
    *, relpath: str, input_sha256: str, model_name: str, seed: int, steps: int, record_name: str
) -> bytes:
    """XMP packet: DigitalSourceType, CreatorTool, DerivedFrom (the original) and one History event."""
    params = f"colorized with MT-Color model {model_name}, seed {seed}, {steps} steps; record {record_name}"
    xml = f"""<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>
<x:xmpmeta xmlns:x="adobe:ns:meta/">
 <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">
  <rdf:Description rdf:about=""
    xmlns:Iptc4xmpExt="http://iptc.org/std/Iptc4xmpExt/2008-02-29/"
    xmlns:xmp="http://ns.adobe.com/xap/1.0/"
    xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/"
    xmlns:stRef="http://ns.adobe.com/xap/1.0/sType/ResourceRef#"
    xmlns:stEvt="http://ns.adobe.com/xap/1.0/sType/ResourceEvent#"
    Iptc4xmpExt:DigitalSourceType={quoteattr(DIGITAL_SOURCE_TYPE)}
    xmp:CreatorTool={quoteattr(TOOL)}>
   <xmpMM:DerivedFrom rdf:parseType="Resource">
    <stRef:filePath>{_xml_text(relpath)}</stRef:filePath>
    <stRef:documentID>sha256:{input_sha256}</stRef:documentID>
   </xmpMM:DerivedFrom>
   <xmpMM:History>
    <rdf:Seq>
     <rdf:li rdf:parseType="Resource">
      <stEvt:action>derived</stEvt:action>
      <stEvt:softwareAgent>{escape(TOOL)}</stEvt:softwareAgent>
      <stEvt:parameters>{_xml_text(params)}</stEvt:parameters>
     </rdf:li>
    </rdf:Seq>
   </xmpMM:History>
  </rdf:Description>
 </rdf:RDF>
</x:xmpmeta>
<?xpacket end="w"?>"""
    return xml.encode("utf-8")


def embedded_meta(
    scan: Scan, *, model_name: str, seed: int, steps: int, record_name: str, icc_profile: bytes | None
) -> EmbeddedMeta:
    """Metadata for the output file of ``scan`` (pointer to the JSON record in UserComment)."""
    pointer = json.dumps(
        {"tool": TOOL, "record": record_name, "input_sha256": scan.sha256, "model": model_name, "seed": seed},
        sort_keys=True,
        ensure_ascii=True,
    )
    return EmbeddedMeta(
        software=TOOL,
        description=f"Colorized by {TOOL} (MT-Color, model {model_name}, seed {seed}) from {scan.relpath}",
        user_comment=pointer,
        xmp=build_xmp(
            relpath=scan.relpath,
            input_sha256=scan.sha256,
            model_name=model_name,
            seed=seed,
            steps=steps,
            record_name=record_name,
        ),
        exif=scan.exif,
        icc_profile=icc_profile,
        tiff_compress=scan.compression not in ("raw", None) if scan.format == "TIFF" else True,
    )


def instance_record(
    inst: Instance, stats: dict[str, Any] | None, scan_size: tuple[int, int]
) -> dict[str, Any]:
    """One instance as provenance lists it (box/area at scan resolution, mask as COCO RLE).

    The mask lets eval crop the instance exactly (the paper's CLIP score) long after the run. It
    is recorded over the instance's box with the scan's (h, w) (``output.mask_rle.encode_region``).
    """
    rec: dict[str, Any] = {
        "id": inst.id,
        "label": inst.label,
        "text": inst.text,
        "source": inst.source,
        "box": list(inst.box),
        "area": inst.area,
        "score": round(float(inst.score), 4),
        "mask_rle": encode_region(inst.mask, inst.box, scan_size),
        "hint_color": None,
        "hint_from": inst.hint_from,  # where its colour/text is written: sidecar or folder rules file, :line
    }
    if inst.color is not None:
        rec["hint_color"] = {"name": inst.color.name, "lab": [round(float(v), 3) for v in inst.color.lab]}
    if stats:
        rec["adherence"] = stats
    return rec


def build_record(
    *,
    scan: Scan,
    profile: Profile,
    plan: Plan,
    seed_source: str,
    engine_info: dict[str, Any],
    model_dir: Path,
    model_hash: str,
    instances: list[dict[str, Any]],
    sidecar_path: Path | None,
    sidecar_sha256: str | None,
    output_path: Path,
    output_sha256: str | None,
    output_format: str,
    output_bit_depth: int,
    device: str,
    timings: dict[str, float],
    warnings: list[str],
    out_dir: Path,
    sidecar_masks: dict[str, str] | None = None,
    folder_files: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The JSON provenance record (every field docs/design.md names).

    ``sidecar_masks`` (the sidecar's mask files' sha256, by path as written) is part of the file's
    fingerprint, so ``journal rebuild`` needs it; it is left out when the sidecar names no mask.
    ``folder_files`` (the ``mtcolor-folder.yaml`` files that applied, ``{relpath: sha256}``) is too;
    ``folder_rules`` lists them farthest first, and is left out when none applied.
    """
    plan_dict = asdict(plan)
    plan_dict["tiles"] = [list(t) for t in plan.tiles]
    departures = deviations(profile)
    return {
        "schema": 1,
        "tool": {"name": "mtcolor-batch", "version": __version__},
        "engine": "mtcolor",
        "model": {
            "bundle": engine_info.get("name") or engine_info.get("bundle"),
            "revision": engine_info.get("revision"),
            "weights_sha256": engine_info.get("weights_sha256") or engine_info.get("sha256"),
            "tiny": bool(engine_info.get("tiny", False)),
            "manifest_sha256": model_hash,
            "path": str(model_dir),
            "info": engine_info,
        },
        "paper_profile": not departures["profile"],  # made in the paper's setting: Profile.follows("paper")
        "paper_deviations": departures,  # where this output departs from the paper, and why
        "profile": {
            "name": profile.name,
            "fingerprint": profile.fingerprint(),
            "values": profile.model_dump(mode="json"),
        },
        "parameters": plan_dict,
        "seed": plan.seed,
        "seed_source": seed_source,
        "prompts": {
            "prompt": plan.prompt,
            "negative_prompt": plan.negative_prompt,
            "instances": [i["text"] for i in instances],
        },
        "instances": instances,
        "sidecar": {
            "path": path_text(sidecar_path.name) if sidecar_path else None,
            "sha256": sidecar_sha256,
            **({"masks": dict(sidecar_masks)} if sidecar_masks else {}),
        },
        **(
            {"folder_rules": [{"path": rel, "sha256": sha} for rel, sha in folder_files.items()]}
            if folder_files
            else {}
        ),
        "input": {
            "relpath": scan.relpath,
            "path": path_text(scan.source),  # path: eval/report find the scan
            "sha256": scan.sha256,
            "format": scan.format,
            "mode": scan.mode,
            "bit_depth": scan.bit_depth,
            "size": [scan.size[1], scan.size[0]],
        },
        "output": {
            "path": output_path.relative_to(out_dir).as_posix(),
            "sha256": output_sha256,
            "format": output_format,
            "bit_depth": output_bit_depth,
        },
        "device": device,
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "warnings": warnings,
        "notes": list(scan.notes),
    }


def record_bytes(record: dict[str, Any]) -> bytes:
    """The record as written to ``<stem>.color.json`` (sorted keys, UTF-8)."""
    return (json.dumps(record, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def write_record(path: Path, record: dict[str, Any]) -> str:
    """Write the record atomically; return its sha256."""
    data = record_bytes(record)
    return atomic_write_bytes(path, data)
