"""The morning report: ``OUT_DIR/report.html`` plus ``OUT_DIR/report_files/`` (CSS, JS, thumbnails).

After an overnight run people want to look, not read logs: each output beside its scan (slider or
toggle), the instances drawn over it, the hints and their CIEDE2000, seed and model (a tiny test
model is flagged loudly), per-file metrics, and every failed file with the journal's reason.
Everything is local and relative (works from ``file://``, no network); every string that comes
from a file, a record or the journal is HTML-escaped.
"""

from __future__ import annotations

import html
import statistics
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from urllib.parse import quote

import numpy as np
from PIL import Image
from skimage.color import lab2rgb

from mtcolor_batch import __version__
from mtcolor_batch.core.color import image_lightness
from mtcolor_batch.core.errors import UserError, visible_text
from mtcolor_batch.core.fs import atomic_write_text, staged_dir
from mtcolor_batch.evaluate import metrics
from mtcolor_batch.evaluate.evaluation import (
    FileMetrics,
    Prediction,
    find_predictions,
    locate_scan,
    score_arrays,
)
from mtcolor_batch.evaluate.records import FailedRow, FileRecord, find_records, read_failures
from mtcolor_batch.evaluate.verify import verify_output
from mtcolor_batch.scan.discover import OUTPUT_FOLDER_MARK, REPORT_FOLDER

REPORT_HTML = "report.html"
REPORT_DIR = REPORT_FOLDER
THUMB_LONG_SIDE = 640
ASSETS = ("errortrap.js", "report.css", "report.js")
_PALETTE = ("#ff4d4d", "#4dd2ff", "#ffd24d", "#7dff4d", "#ff4dd2", "#b84dff", "#ff944d", "#4dffb8")


def e(value: object) -> str:
    """HTML-escape anything shown (quotes too: it also goes into attributes); control and
    right-to-left override characters from file names are shown as ``\\xNN`` / ``\\uNNNN``."""
    return html.escape(visible_text(str(value)), quote=True)


@dataclass
class _Entry:
    """One output as the page shows it."""

    index: int
    pred: Prediction
    size: tuple[int, int] | None = None  # (w, h) of the output
    before_note: str = ""
    row: FileMetrics | None = None
    error: str | None = None


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return "inf" if np.isinf(value) else f"{value:.{digits}f}"


def _lab_hex(lab: tuple[float, float, float]) -> str:
    rgb = np.clip(lab2rgb(np.array([[lab]], dtype=np.float64))[0, 0], 0, 1)
    return "#" + "".join(f"{int(round(c * 255)):02x}" for c in rgb)


def _thumb(rgb: np.ndarray) -> Image.Image:
    img = Image.fromarray((np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8))
    img.thumbnail((THUMB_LONG_SIDE, THUMB_LONG_SIDE), Image.Resampling.LANCZOS)
    return img


def _gray_from_thumb(thumb: Image.Image) -> Image.Image:
    """The scan's look recovered from the output's L* (equal by the luminance lock)."""
    lab = np.zeros((thumb.height, thumb.width, 3), dtype=np.float64)
    lab[..., 0] = image_lightness(np.asarray(thumb, dtype=np.float32) / 255.0)
    return Image.fromarray((np.clip(lab2rgb(lab), 0, 1) * 255 + 0.5).astype(np.uint8))


def _prepare(entry: _Entry, thumbs: Path, scans_dir: Path | None, with_metrics: bool) -> None:
    """Thumbnails (and metrics) from one read of the output and the scan."""
    pred = entry.pred
    rgb = metrics.load_rgb(pred.path)
    entry.size = (rgb.shape[1], rgb.shape[0])
    after = _thumb(rgb)
    after.save(thumbs / f"{entry.index:04d}-after.jpg", "JPEG", quality=85)
    scan_path = locate_scan(pred, scans_dir)
    scan = metrics.load_rgb(scan_path) if scan_path is not None else None
    if scan is not None and scan.shape[:2] == rgb.shape[:2]:
        before = _thumb(scan)
    else:
        entry.before_note = "scan not found (or of another size): before = the output's own lightness (L*)"
        before = _gray_from_thumb(after)
    before.save(thumbs / f"{entry.index:04d}-before.jpg", "JPEG", quality=85)
    if with_metrics:
        entry.row = score_arrays(
            FileMetrics(relpath=pred.relpath, output=str(pred.path)), rgb, scan, None, pred.record
        )


def _overlay(rec: FileRecord, size: tuple[int, int]) -> str:
    w, h = size
    font = round(max(w, h) / 30, 1)  # in image pixels: about 15 px on screen whatever the scan size
    parts = [f'<svg class="overlay" viewBox="0 0 {w} {h}" preserveAspectRatio="none" aria-hidden="true">']
    for n, inst in enumerate(rec.instances):
        if inst.box is None:
            continue
        x0, y0, x1, y1 = inst.box
        color = _lab_hex(inst.hint_lab) if inst.hint_lab is not None else _PALETTE[n % len(_PALETTE)]
        dash = "" if inst.source == "sidecar" else ' stroke-dasharray="6 4"'
        parts.append(
            f'<rect x="{x0}" y="{y0}" width="{max(0, x1 - x0)}" height="{max(0, y1 - y0)}" '
            f'stroke="{color}"{dash}><title>{e(inst.label)}: {e(inst.text)}</title></rect>'
            f'<text x="{x0 + 3}" y="{y0 + font}" font-size="{font}">{e(inst.id)} {e(inst.label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _model_text(rec: FileRecord) -> str:
    m = rec.model
    sha = str(m.get("weights_sha256") or "")[:12]
    bits = [str(m.get("bundle") or "?")]
    if m.get("revision"):
        bits.append(f"rev {m['revision']}")
    if sha:
        bits.append(f"weights {sha}")
    return ", ".join(bits)


def _instances_table(rec: FileRecord, row: FileMetrics | None) -> str:
    if not rec.instances:
        return '<p class="note">no instances (global colorization only)</p>'
    clip = {i["id"]: i.get("clip_mask_cos") for i in (row.instances if row else [])}
    out = [
        '<table class="instances"><thead><tr><th>#</th><th>label</th><th>text</th><th>source</th>'
        "<th>hint</th><th>result</th><th>ΔE00 before → after</th></tr></thead><tbody>"
    ]
    for inst in rec.instances:
        if inst.hint_lab is not None:
            lab = ", ".join(f"{v:.1f}" for v in inst.hint_lab)
            hint = (
                f'<span class="swatch" style="background:{_lab_hex(inst.hint_lab)}"></span>'
                f'{e(inst.hint_name or "")} <span class="note">lab({e(lab)})</span>'
            )
        else:
            hint = "–"
        result = (
            f'<span class="swatch" style="background:{_lab_hex(inst.result_lab)}"></span>'
            if inst.result_lab is not None and inst.hint_lab is not None
            else ""
        )
        de = f"{_fmt(inst.delta_e_before)} → {_fmt(inst.delta_e)}" if inst.hint_lab is not None else "–"
        score = clip.get(inst.id)
        extra = f' <span class="note">CLIP cos {_fmt(score)}</span>' if score is not None else ""
        out.append(
            f"<tr><td>{e(inst.id)}</td><td>{e(inst.label)}</td><td>{e(inst.text)}{extra}</td>"
            f'<td>{e(inst.source)}</td><td>{hint}</td><td>{result}</td><td class="num">{e(de)}</td></tr>'
        )
    out.append("</tbody></table>")
    return "".join(out)


def _metrics_table(row: FileMetrics | None) -> str:
    if row is None:
        return ""
    cells = [
        ("colourfulness (H&S)", _fmt(row.colorfulness_hs, 1)),
        ("max ΔL* vs scan", _fmt(row.luminance_max_dl)),
        ("hint ΔE00 mean/max", f"{_fmt(row.hint_de_mean)} / {_fmt(row.hint_de_max)}" if row.hinted else "–"),
    ]
    head = "".join(f"<th>{e(k)}</th>" for k, _ in cells)
    body = "".join(f'<td class="num">{e(v)}</td>' for _, v in cells)
    notes = "".join(f'<p class="note">{e(n)}</p>' for n in row.notes)
    table = f'<table class="metrics"><thead><tr>{head}</tr></thead><tbody><tr>{body}</tr></tbody></table>'
    return table + notes


def _href(out_dir: Path, path: Path) -> str:
    return quote(path.relative_to(out_dir).as_posix())


def _credentials_badge(rec: FileRecord, image: Path, out_dir: Path) -> str:
    """Content Credentials: valid / invalid / absent, checked as ``mtcolor-batch verify`` does."""
    v = verify_output(image, rec.raw, rec.source_path, out_dir=out_dir, source=rec.relpath)
    title = "; ".join(v.problems) or f"C2PA manifest signed by {v.check.signer} ({v.check.trust})"
    return f'<span class="badge cc-{v.badge}" title="{e(title)}">Content Credentials: {v.badge}</span>'


def _done_html(entry: _Entry, out_dir: Path) -> str:
    rec = entry.pred.record
    assert rec is not None and entry.size is not None
    w, h = entry.size
    i = entry.index
    hinted = len(rec.hinted)
    warn = bool(rec.warnings)
    badges = ""
    if rec.tiny:
        badges += '<span class="badge tiny" title="random weights: not a real colorization">TINY MODEL</span>'
    if hinted:
        badges += f'<span class="badge hinted">{hinted} hinted</span>'
    if warn:
        badges += f'<span class="badge warn">{len(rec.warnings)} warning(s)</span>'
    badges += _credentials_badge(rec, entry.pred.path, out_dir)
    prompt = e(rec.prompt or "")
    sidecar = (rec.raw.get("sidecar") or {}).get("path")
    meta = [
        ("seed", f'{e(rec.seed)} <span class="note">({e(rec.raw.get("seed_source", ""))})</span>'),
        ("model", e(_model_text(rec)) + (" <strong>(tiny test model)</strong>" if rec.tiny else "")),
        ("profile", e(rec.profile or "")),
        ("device", e(rec.device or "")),
        ("prompt", prompt),
        ("sidecar", e(sidecar) if sidecar else "none"),
        ("time", f"{sum(rec.timings.values()):.2f} s"),
    ]
    meta_html = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in meta)
    warnings = "".join(f"<li>{e(wm)}</li>" for wm in rec.warnings)
    before_note = f'<p class="note">{e(entry.before_note)}</p>' if entry.before_note else ""
    out_href = _href(out_dir, entry.pred.path)
    thumb = f"{REPORT_DIR}/thumbs/{i:04d}"
    return f"""<article class="entry done" id="file-{i}" data-failed="0" data-hinted="{int(hinted > 0)}" \
data-warn="{int(warn)}" data-relpath="{e(rec.relpath)}">
<h2><a href="{out_href}">{e(rec.relpath)}</a>{badges}</h2>
<div class="compare" style="aspect-ratio: {w} / {h}">
<img class="before" src="{thumb}-before.jpg" alt="before: {e(rec.relpath)}" loading="lazy">
<img class="after" src="{thumb}-after.jpg" alt="after: {e(rec.relpath)}" loading="lazy">
{_overlay(rec, entry.size)}<div class="divider"></div>
<span class="tag b">before</span><span class="tag a">after</span>
</div>
<div class="controls"><input type="range" min="0" max="100" value="50" aria-label="before/after split">
<button type="button" class="toggle" aria-pressed="false">show before</button></div>
{before_note}<dl class="meta">{meta_html}</dl>
{_metrics_table(entry.row)}{_instances_table(rec, entry.row)}
{f'<ul class="warnings">{warnings}</ul>' if warnings else ""}
</article>"""


def _failed_html(n: int, relpath: str, reason: str, attempts: int | None, what: str) -> str:
    tries = f' <span class="note">after {e(attempts)} attempt(s)</span>' if attempts else ""
    return f"""<article class="entry failed" id="failed-{n}" data-failed="1" data-hinted="0" data-warn="0" \
data-relpath="{e(relpath)}">
<h2>{e(relpath)}<span class="badge fail">{e(what)}</span></h2>
<p class="reason">{e(reason or "no reason recorded")}</p>{tries}
</article>"""


def _summary(entries: list[_Entry]) -> str:
    rows = [en.row for en in entries if en.row is not None]

    def values(attr: str) -> list[float]:
        return [v for r in rows if (v := getattr(r, attr)) is not None]

    def mean(attr: str) -> str:
        return _fmt(statistics.fmean(values(attr))) if values(attr) else "–"

    if not rows:
        return ""
    return (
        f"<span>mean colourfulness (H&amp;S) <b>{mean('colorfulness_hs')}</b></span>"
        f"<span>worst max ΔL* <b>{_fmt(max(values('luminance_max_dl'), default=None))}</b></span>"
        f"<span>mean hint ΔE00 <b>{mean('hint_de_mean')}</b></span>"
    )


def _page(out_dir: Path, entries: list[_Entry], failures: list[FailedRow]) -> str:
    done = [en for en in entries if en.error is None]
    broken = [en for en in entries if en.error is not None]
    n_failed = len(failures) + len(broken)
    n_hinted = sum(1 for en in done if en.pred.record and en.pred.record.hinted)
    n_warn = sum(1 for en in done if en.pred.record and en.pred.record.warnings)
    tiny = [en for en in done if en.pred.record and en.pred.record.tiny]
    banner = (
        (
            f'<div class="banner">{len(tiny)} of {len(done)} outputs were made with a TINY random test '
            "model: they are pipeline checks, not real colorizations.</div>"
        )
        if tiny
        else ""
    )
    cards = [_failed_html(n, f.relpath, f.error, f.attempts, "failed") for n, f in enumerate(failures)]
    cards += [
        _failed_html(len(failures) + n, en.pred.relpath, en.error or "", None, "unreadable output")
        for n, en in enumerate(broken)
    ]
    cards += [_done_html(en, out_dir) for en in done]
    body = "\n".join(cards) if cards else '<p class="empty">No outputs and no failures recorded yet.</p>'
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en" data-js-errors="0" data-ready="0">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mtcolor-batch report: {e(out_dir.name)}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{REPORT_DIR}/report.css">
<script src="{REPORT_DIR}/errortrap.js"></script>
</head>
<body data-filter="all">
<header>
<h1>mtcolor-batch report</h1>
<div class="sub">{e(out_dir.resolve())} · generated {e(now)} by mtcolor-batch {e(__version__)}</div>
{banner}
<p class="counts"><span><b id="n-done">{len(done)}</b> colorized</span>
<span><b id="n-failed">{n_failed}</b> failed</span>
<span><b>{n_hinted}</b> with hints</span>{_summary(done)}</p>
</header>
<nav class="filters" aria-label="filters">
<button type="button" data-filter="all" aria-pressed="true">All ({len(done) + n_failed})</button>
<button type="button" data-filter="hinted" aria-pressed="false">Hinted ({n_hinted})</button>
<button type="button" data-filter="failed" aria-pressed="false">Failed ({n_failed})</button>
<button type="button" data-filter="warnings" aria-pressed="false">Warnings ({n_warn})</button>
<label><input type="checkbox" id="outlines" checked> instance outlines</label>
<span id="shown"></span>
</nav>
<main id="entries">
{body}
</main>
<script src="{REPORT_DIR}/report.js"></script>
</body>
</html>
"""


def _is_output_folder(out_dir: Path) -> bool:
    """A run's folder: it has ``.mtcolor/`` or its own ``.color.json`` records (a copy without the journal).

    Why ask: the report writes report.html and report_files/ into the folder it is given, and a folder
    of originals must never be written into. Records inside a nested output folder do not count.
    """
    if (out_dir / OUTPUT_FOLDER_MARK).is_dir():
        return True
    for record in find_records(out_dir):
        folders = record.relative_to(out_dir).parents
        if not any((out_dir / f / OUTPUT_FOLDER_MARK).is_dir() for f in folders if f != Path(".")):
            return True
    return False


def build_report(out_dir: Path, scans_dir: Path | None = None, with_metrics: bool = True) -> Path:
    """Write ``out_dir/report.html`` and its ``report_files/`` folder; return the HTML path.

    Safe to call at the end of ``run --report`` or any time later; the previous report is replaced
    only once the new one is complete. ``scans_dir`` overrides where originals are looked for.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        raise UserError("output folder not found", path=out_dir)
    if scans_dir is not None and not scans_dir.is_dir():
        raise UserError("scans folder not found", path=scans_dir)
    if not _is_output_folder(out_dir):
        raise UserError(
            "not an output folder (no .mtcolor/ and no .color.json records here); nothing written",
            path=out_dir,
            hint="give the folder `run` wrote, e.g. SCANS-colorized",
        )
    preds = find_predictions(out_dir, records_only=True)
    failures = read_failures(out_dir)
    with staged_dir(out_dir / REPORT_DIR) as staging:
        thumbs = staging / "thumbs"
        thumbs.mkdir()
        for name in ASSETS:
            data = (resources.files("mtcolor_batch.evaluate") / "assets" / name).read_bytes()
            (staging / name).write_bytes(data)
        entries = []
        for i, pred in enumerate(preds):
            entry = _Entry(index=i, pred=pred, error=pred.error)
            if entry.error is None:
                try:
                    _prepare(entry, thumbs, scans_dir, with_metrics)
                except (UserError, ValueError, OSError) as exc:
                    entry.error = str(exc)
            entries.append(entry)
        page = _page(out_dir, entries, failures)
    html_path = out_dir / REPORT_HTML
    atomic_write_text(html_path, page)
    return html_path
