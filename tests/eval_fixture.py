"""A small output folder made with the runner's real writers, for the eval and report tests.

Outputs are real luminance-locked colorizations (render.chroma.compose of the scan's luma with a
constant chroma), records come from output.provenance.build_record and failures from the real
journal, so the tests read exactly what ``mtcolor-batch run`` writes. Names and texts carry HTML
and URL specials to prove the report escapes them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from mtcolor_batch.core.config import Profile
from mtcolor_batch.core.fs import atomic_write
from mtcolor_batch.core.types import ColorHint, Instance
from mtcolor_batch.jobs.journal import Journal, journal_path
from mtcolor_batch.output.provenance import build_record, embedded_meta, instance_record, write_record
from mtcolor_batch.output.writer import encode_image, format_for, output_path
from mtcolor_batch.render.chroma import compose
from mtcolor_batch.scan.imageio import load_scan
from mtcolor_batch.stages.plan import make_plan

ODD_NAME = "odd #1 <b>&'.png"
XSS = "<img src=x onerror=alert(1)>"
FAIL_REASON = "cannot identify image <script>alert('x')</script> & \"quotes\""
DONE = ["a.png", "c16.tif", ODD_NAME, "sub/b.jpg"]
FAILED = ["broken.jpg", "sub/bad & worse.png"]


def _scan_pixels(h: int, w: int, seed: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    return np.clip(0.15 + 0.7 * (xx / w) * (0.5 + 0.5 * np.sin(yy / 7.0)) + rng.normal(0, 0.02, (h, w)), 0, 1)


def _write_scan(path: Path, gray: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".tif":
        tifffile.imwrite(path, (gray * 65535 + 0.5).astype(np.uint16))
    else:
        Image.fromarray((gray * 255 + 0.5).astype(np.uint8), "L").save(path)


def build_out_dir(root: Path, bundle_dir: Path) -> dict[str, Path]:
    """``root/scans`` (originals), ``root/out`` (a run's outputs + journal), ``root/refs`` (references)."""
    scans, out, refs = root / "scans", root / "out", root / "refs"
    profile = Profile()
    journal = Journal(journal_path(out, None))
    for n, rel in enumerate(DONE):
        h, w = (64, 96) if n % 2 == 0 else (80, 64)
        _write_scan(scans / rel, _scan_pixels(h, w, n))
        scan = load_scan(scans / rel, scans, profile.scan)
        plan = make_plan(scan.size, profile.sampling, seed=100 + n, prompt="a harbour, 1910")
        ab = np.stack([np.full((8, 8), 18.0 + 4 * n), np.full((8, 8), -12.0 + 9 * n)]).astype(np.float32)
        rgb = compose(scan.luma, ab)
        fmt = format_for(rel, scan.format)
        suffix = ".tinted" if rel == "c16.tif" else ".color"  # a custom output.suffix: found via the journal
        img_path = output_path(out, rel, suffix)
        rec_path = output_path(out, rel, suffix, json_record=True)
        meta = embedded_meta(
            scan,
            model_name="fixture",
            seed=plan.seed,
            steps=plan.steps,
            record_name=rec_path.name,
            icc_profile=None,
        )
        sha = atomic_write(
            img_path,
            lambda fh, rgb=rgb, fmt=fmt, bd=scan.bit_depth, meta=meta: encode_image(
                fh, rgb, fmt, bd, meta, 95
            ),
        )
        mask = np.zeros(scan.size, dtype=bool)
        mask[8:40, 10:50] = True
        hinted = Instance.from_full_mask(
            1,
            "tram",
            f"a dark green tram {XSS}",
            mask,
            source="sidecar",
            color=ColorHint(lab=(40.0, -35.0, 25.0), name="dark green"),
        )
        auto = Instance(id=2, label="sky", text="sky", mask=~mask, box=(0, 0, w, h), source="auto")
        instances = [
            instance_record(
                hinted,
                {"id": 1, "delta_e": 3.5 + n, "delta_e_before": 20.0 + n, "mean_lab": [41.0, -30.0, 22.0]},
                scan.size,
            ),
            instance_record(auto, {"id": 2, "mean_lab": [70.0, 1.0, -5.0]}, scan.size),
        ]
        record = build_record(
            scan=scan,
            profile=profile,
            plan=plan,
            seed_source="profile",
            engine_info={
                "name": "fixture-bundle",
                "revision": "r1",
                "weights_sha256": "ab" * 32,
                "tiny": n != 0,
            },
            model_dir=bundle_dir,
            model_hash="cd" * 32,
            instances=instances,
            sidecar_path=None,
            sidecar_sha256=None,
            output_path=img_path,
            output_sha256=sha,
            output_format=fmt,
            output_bit_depth=scan.bit_depth,
            device="cpu",
            timings={"colorize": 0.5, "write": 0.01},
            warnings=[f"warning with {XSS}"] if n == 1 else [],
            out_dir=out,
        )
        write_record(rec_path, record)
        journal.upsert_pending(rel, f"fp{n}", size=None, mtime=None, sha256=scan.sha256)
        journal.mark_running(rel)
        outputs = [p.relative_to(out).as_posix() for p in (img_path, rec_path)]
        journal.mark_done(rel, outputs, {"colorize": 0.5})
        if fmt == "PNG":  # lossless: an identical reference (PSNR inf, SSIM 1)
            (refs / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.open(img_path).save(refs / rel)
    for rel in FAILED:
        journal.upsert_pending(rel, "fp-failed", size=None, mtime=None, sha256=None)
        journal.mark_running(rel)
        journal.mark_failed(rel, f"{rel}: {FAIL_REASON}")
    journal.close()
    return {"scans": scans, "out": out, "refs": refs}
