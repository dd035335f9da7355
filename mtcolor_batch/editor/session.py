"""What one ``hints edit`` session can do to a scan folder: list, load, check, preview, save.

Everything a browser asks for is answered here in plain Python, so the web layer only parses
requests. Safety rules live here too, because they are about files, not HTTP:

- a scan is named by its relative path *as discovered at start-up*; no file name from a request is
  ever joined to a folder, so ``../`` in a request can only miss;
- the only files ever written are the scan's sidecar (``photo.jpg.yaml`` / ``photo.yaml``) and new
  mask PNGs beside it, all inside the scan folder, through the project's atomic writer; scans are
  opened read-only and never written;
- a save names the version of the sidecar it started from (sha256 of its bytes, the ETag); a file
  that changed since (another tab, a text editor) is not overwritten;
- what is written is validated first by the same code as ``hints check``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import os
import secrets
import tempfile
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

from mtcolor_batch.core.color import lab_to_srgb
from mtcolor_batch.core.config import Profile
from mtcolor_batch.core.errors import HintError, UserError
from mtcolor_batch.core.fs import atomic_write_bytes
from mtcolor_batch.core.types import Instance, Scan
from mtcolor_batch.core.yaml_guarded import decode_utf8, read_capped
from mtcolor_batch.editor.document import DocumentError, apply_document, instance_lines, to_document
from mtcolor_batch.hints.colors import color_table, parse_color
from mtcolor_batch.hints.folder_rules import folder_chain, missing_colour_errors, needs_colour
from mtcolor_batch.hints.resolve import DEFAULT_LABEL, default_text
from mtcolor_batch.hints.schema import Sidecar, check_instance_count, parse_sidecar_text
from mtcolor_batch.perception.models import Perception
from mtcolor_batch.perception.overlay import instance_rgb, render_overlay
from mtcolor_batch.scan.discover import ScanFile
from mtcolor_batch.scan.imageio import load_scan, upright_size
from mtcolor_batch.scan.sidecars import find_sidecar, sidecar_candidates
from mtcolor_batch.stages.instances import scan_instances
from mtcolor_batch.stages.pipeline import Pipeline

NO_FILE = "none"
"""ETag of a sidecar that does not exist yet."""
MAX_UPLOAD_MASKS = 16
"""Painted masks accepted in one save (each is a scan-sized PNG)."""
MAX_POINTS = 64
"""Clicks accepted in one live segmentation preview."""


class ConflictError(UserError):
    """The sidecar changed on disk since this page loaded it: saving would lose someone's edit."""


SAVE_LOCK_NAME = ".mtcolor-edit.lock"
"""In the scan folder: every ``hints edit`` server on that folder takes it for each save."""


@contextlib.contextmanager
def _save_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the scan folder's save lock file while one save checks and writes.

    Why across processes: two ``hints edit`` servers on one folder each have their own thread lock,
    so both saw the etag their page loaded and both wrote, each reporting "saved", one edit lost.
    Blocking (a save takes milliseconds); the kernel drops the lock if the server dies.
    """
    try:
        fd = os.open(root / SAVE_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise HintError(f"cannot save: {exc.strerror or exc}", path=root / SAVE_LOCK_NAME) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


class NotFound(UserError):
    """A scan name that is not one of the scans this session was started on."""


def _hex(rgb: tuple[float, float, float]) -> str:
    return "#" + "".join(f"{round(max(0.0, min(1.0, c)) * 255):02x}" for c in rgb)


def _to_browser_png(path: Path) -> bytes:
    """An output image (JPEG/PNG/WebP, or a 16-bit TIFF Pillow cannot open) as an 8-bit RGB PNG."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        arr = np.asarray(tifffile.imread(path))
        if arr.dtype == np.uint16:
            arr = (arr.astype(np.uint32) * 255 // 65535).astype(np.uint8)
        return _png(Image.fromarray(arr.astype(np.uint8)).convert("RGB"))
    with Image.open(path) as image:
        return _png(image.convert("RGB"))


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue()


def _problem_dict(err: HintError, lines: Sequence[int]) -> dict[str, Any]:
    """A problem with the hint it belongs to (the item whose block contains the error's line)."""
    hint = None
    if err.line is not None:
        for k, start in enumerate(lines):
            if start <= err.line:
                hint = k
    return {"hint": hint, "line": err.line, "message": err.message, "fix": err.hint, "text": err.one_line()}


@dataclass
class _Loaded:
    """One scan as the run sees it: upright luma and the instances ``run`` would use."""

    scan: Scan
    instances: list[Instance]
    warnings: list[str]


class EditorSession:
    """The scans of one folder, the profile and perception models, and the session's secret token."""

    def __init__(
        self,
        root: Path,
        scans: Sequence[Path],
        profile: Profile,
        perception: Perception | None = None,
        token: str | None = None,
        bundle_dir: Path | None = None,
    ) -> None:
        self.root = Path(root).resolve()
        self.profile = profile
        self.perception = perception
        self.token = token or secrets.token_urlsafe(32)
        self.max_sidecar_bytes = profile.hints.max_sidecar_bytes
        self.scans: OrderedDict[str, Path] = OrderedDict()
        for path in scans:
            real = Path(path).resolve()
            if real.is_relative_to(self.root):
                self.scans[real.relative_to(self.root).as_posix()] = real
        self._cache: OrderedDict[str, _Loaded] = OrderedDict()
        self._write_lock = threading.Lock()  # one save at a time: the ETag check and the rename pair up
        self._model_lock = threading.Lock()  # perception models are not re-entrant
        self._load_lock = threading.Lock()
        self.bundle_dir = bundle_dir
        self._pipeline: Any = None  # the run's Pipeline, loaded on the first preview
        self._preview_lock = threading.Lock()

    # -- names ------------------------------------------------------------------------------
    def scan_path(self, rel: str) -> Path:
        """The scan's path, re-checked now: a scan (or a folder above it) swapped for a symlink
        after start-up must not make the server read a file outside the scan folder."""
        path = self.scans.get(rel)
        if path is None:
            raise NotFound(f"no scan '{rel}' in this session", hint="pick one from the list")
        if Path(os.path.realpath(path)) != path:
            raise NotFound(
                f"scan '{rel}' was replaced by a link since the editor started; it is not served",
                hint="restart `hints edit` if the change was yours",
            )
        return path

    def sidecar_path(self, rel: str) -> Path:
        """The sidecar ``run`` reads for this scan, or the one a save would create."""
        scan = self.scan_path(rel)
        return find_sidecar(scan) or sidecar_candidates(scan)[0]

    def _rel(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def _inside(self, path: Path) -> Path:
        """``path`` after symlinks, refusing anything outside the scan folder (or the folder itself)."""
        real = path.resolve()
        if not real.is_relative_to(self.root) or real == self.root:
            raise HintError(f"refusing to write outside the scan folder {self.root}", path=path)
        return real

    # -- for the folder rules panel (editor/folder_panel.py) ----------------------------------------
    @property
    def write_lock(self) -> threading.Lock:
        """Held by every save, so an ETag check and its rename pair up across both panels."""
        return self._write_lock

    def relative(self, path: Path) -> str:
        return self._rel(path)

    def inside(self, path: Path) -> Path:
        return self._inside(path)

    def forget(self) -> None:
        """Drop every cached scan: a folder rule change can recolour any of them."""
        with self._load_lock:
            self._cache.clear()

    @staticmethod
    def swatch(color: object) -> str | None:
        """The ``#rrggbb`` of a colour as the picker shows it (None if it does not parse)."""
        return EditorSession._swatch(color)

    # -- reading ----------------------------------------------------------------------------
    def read_sidecar(self, rel: str) -> tuple[str, str]:
        """(text, etag) of the scan's sidecar; ("", "none") when there is none yet."""
        path = self.sidecar_path(rel)
        if not path.exists():
            return "", NO_FILE
        self._inside(path)
        # The run's own reader: size cap before reading, and a FIFO, directory or device is refused
        # unopened (reading a FIFO hung the listing, and a directory made it a 500).
        data = read_capped(path, self.max_sidecar_bytes)
        return decode_utf8(path, data), hashlib.sha256(data).hexdigest()

    def _loaded(self, rel: str) -> _Loaded:
        """The run's view of a scan (cached: the scan array also keys SAM's embedding cache)."""
        path = self.scan_path(rel)
        with self._load_lock:  # the page asks for data and image at once: perceive once, not twice
            if rel in self._cache:
                self._cache.move_to_end(rel)
                return self._cache[rel]
            with self._model_lock:
                try:
                    scan, found = scan_instances(path, self.root, self.profile, self.perception)
                    instances, notes = found.instances, found.warnings
                except HintError as exc:  # a broken sidecar: show the scan and the problem, no instances
                    scan = load_scan(path, self.root, self.profile.scan)
                    instances, notes = [], [exc.one_line()]
            loaded = _Loaded(scan, instances, list(notes))
            self._cache[rel] = loaded
            while len(self._cache) > 2:  # the current scan and the one before: enough for back-and-forth
                self._cache.popitem(last=False)
            return loaded

    def _validate(
        self, text: str, path: Path, scan_size: tuple[int, int], scan_root: Path | None
    ) -> tuple[Sidecar | None, list[HintError]]:
        """``hints check``'s verdict on text for ``path``: the sidecar rules, then the run's per-sidecar cap
        (``hints.max_sidecar_instances``), so the editor never shows as fine, or saves, what ``run`` fails."""
        sidecar, problems = parse_sidecar_text(text, path, scan_size=scan_size, scan_root=scan_root)
        if sidecar is not None and not problems:
            try:
                check_instance_count(sidecar, path, self.profile.hints.max_sidecar_instances)
                # a region with only a label needs a folder rule (or label hint) for its colour
                if any(needs_colour(h) for h in sidecar.instances):
                    chain = folder_chain(path, self.root, self.max_sidecar_bytes)
                    problems = missing_colour_errors(sidecar.instances, path, chain)
            except HintError as exc:
                problems = [exc]
        return sidecar, problems

    def _problems(self, rel: str, text: str) -> list[dict[str, Any]]:
        _, problems = self._validate(text, self.sidecar_path(rel), self._size(rel), self.root)
        lines = instance_lines(text)
        return [_problem_dict(p, lines) for p in problems]

    def _size(self, rel: str) -> tuple[int, int]:

        return upright_size(self.scan_path(rel))

    def scan_list(self) -> list[dict[str, Any]]:
        """Every scan with whether it has a sidecar and how many problems ``hints check`` finds."""
        out = []
        for rel in self.scans:
            sidecar = find_sidecar(self.scans[rel])
            problems = 0
            if sidecar is not None:
                try:
                    text, _ = self.read_sidecar(rel)
                    problems = len(self._problems(rel, text))
                except (UserError, OSError):  # this scan's problem: the listing goes on
                    problems = 1
            out.append(
                {
                    "path": rel,
                    "name": self.scans[rel].name,
                    "sidecar": sidecar is not None,
                    "problems": problems,
                }
            )
        return out

    def load(self, rel: str) -> dict[str, Any]:
        """Everything the page shows for one scan."""
        loaded = self._loaded(rel)
        sidecar = self.sidecar_path(rel)
        text, etag = self.read_sidecar(rel)
        doc_error = None
        try:
            doc = to_document(text, str(sidecar))
        except DocumentError as exc:
            doc, doc_error = to_document(""), exc.one_line()
        h, w = loaded.scan.size
        return {
            "path": rel,
            "name": self.scans[rel].name,
            "size": [h, w],
            "sidecar": self._rel(sidecar),
            "exists": etag != NO_FILE,
            "etag": etag,
            "doc": doc,
            "doc_error": doc_error,
            "problems": self._problems(rel, text) if etag != NO_FILE else [],
            "warnings": loaded.warnings,
            "instances": [self._instance_dict(inst, k) for k, inst in enumerate(loaded.instances)],
            "segmenter": getattr(self.perception, "segmenter", None) is not None,
            "preview": self.bundle_dir is not None,
        }

    def _instance_dict(self, inst: Instance, k: int) -> dict[str, Any]:
        r, g, b = instance_rgb(inst, k)
        return {
            "id": inst.id,
            "label": inst.label,
            "text": inst.text,
            "source": inst.source,
            "box": [int(v) for v in inst.box],
            "color": f"#{r:02x}{g:02x}{b:02x}",
            "hint_color": inst.color.name if inst.color is not None else None,
            "hint_from": inst.hint_from,  # "a/mtcolor-folder.yaml:3" marks a folder rule's colour
        }

    def image_png(self, rel: str) -> bytes:
        """The scan upright, 8-bit gray: what the run reads, in the pixels hints are written in."""
        luma = self._loaded(rel).scan.luma
        return _png(Image.fromarray(np.round(np.clip(luma, 0.0, 1.0) * 255.0).astype(np.uint8), mode="L"))

    def overlay_png(self, rel: str) -> bytes:
        """The ``hints show`` picture of the saved sidecar, without the run's ids: the page numbers
        the hints, and one picture shows one numbering."""
        loaded = self._loaded(rel)
        return _png(render_overlay(loaded.scan.luma, loaded.instances, numbered=False))

    # -- live help while editing ----------------------------------------------------------------
    def check(self, rel: str, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Problems of the draft (as ``hints check`` would report them), the final text and swatch
        of every hint, and the YAML that a save would write."""
        text, _ = self.read_sidecar(rel)
        sidecar = self.sidecar_path(rel)
        hints = [dict(h) for h in doc.get("instances") or []]
        planned: dict[int, str] = {}  # painted, not yet saved: the file name a save would give it
        taken: set[Path] = set()
        for k, hint in enumerate(hints):
            if hint.pop("upload", None) is not None:
                target = self._mask_target(sidecar, self.scan_path(rel).stem, taken)
                taken.add(target)
                planned[k] = hint["mask"] = target.relative_to(sidecar.parent).as_posix()
        try:
            new_text = apply_document(text, {**doc, "instances": hints}, str(sidecar))
        except DocumentError as exc:
            return {"problems": [_problem_dict(exc, [])], "texts": [], "swatches": [], "yaml": text}
        problems = [
            p
            for p in self._problems(rel, new_text)
            if not (p["hint"] in planned and f"'{planned[p['hint']]}'" in p["message"])  # not written yet
        ]
        return {
            "problems": problems,
            "texts": [self._final_text(h) for h in hints],
            "swatches": [self._swatch(h.get("color")) for h in hints],
            "yaml": new_text,
        }

    def _final_text(self, hint: Mapping[str, Any]) -> str | None:
        """The text the model receives for this hint (the run's own rule), or None while invalid."""
        fields = {k: v for k, v in hint.items() if k in ("label", "color", "text") and v not in (None, "")}
        drawn = any(hint.get(k) is not None for k in ("box", "points", "polygon", "mask", "upload"))
        if drawn or "label" not in fields:
            fields["box"] = [0, 0, 1, 1]  # a stand-in region: the text rule does not depend on it
        text = yaml.safe_dump({"version": 1, "instances": [fields]}, sort_keys=False)
        sidecar, problems = parse_sidecar_text(text, Path("draft.yaml"))
        if sidecar is None or problems:
            return None
        item = sidecar.instances[0]
        if needs_colour(item):
            return None  # a label-only region: its text is the folder rule's, known once saved
        return default_text(item, item.label.strip() if item.label else DEFAULT_LABEL)

    @staticmethod
    def _swatch(color: object) -> str | None:
        if not isinstance(color, str) or not color.strip():
            return None
        try:
            return _hex(lab_to_srgb(parse_color(color).lab))
        except HintError:
            return None

    def segment(self, rel: str, points: Sequence[Sequence[float]]) -> bytes:
        """SAM's mask for clicks on this scan, as a transparent PNG (one embedding per scan)."""
        segmenter = getattr(self.perception, "segmenter", None)
        if segmenter is None:
            raise UserError("this model bundle has no segmentation model", hint="start with --model BUNDLE")
        clicks = [(float(p[0]), float(p[1])) for p in points][:MAX_POINTS]
        if not clicks:
            raise UserError("click at least once inside the thing")
        loaded = self._loaded(rel)
        h, w = loaded.scan.size
        if any(not (0 <= x < w and 0 <= y < h) for x, y in clicks):
            raise UserError(f"a click is outside the {w}x{h} scan")
        with self._model_lock:
            mask, _score = segmenter.segment_points(loaded.scan.luma, clicks)
        rgba = np.zeros((h, w, 4), dtype=np.uint8)
        rgba[mask] = (255, 64, 160, 140)
        return _png(Image.fromarray(rgba, mode="RGBA"))

    def preview(self, rel: str) -> bytes:
        """ "Colorize this one": the real pipeline (``run``'s stages, this profile, the saved sidecar)
        on one scan, written to a private temporary folder outside the scan tree and the output
        folder, and returned as a PNG (8-bit, for the browser); the temporary files are removed."""
        if self.bundle_dir is None:
            raise UserError("no model bundle: start `hints edit` with --model BUNDLE to colorize a preview")

        path = self.scan_path(rel)
        with self._preview_lock, tempfile.TemporaryDirectory(prefix="mtcolor-preview-") as tmp:
            if self._pipeline is None:
                self._pipeline = Pipeline.load(self.profile, self.bundle_dir, self.root, Path(tmp))
            pipeline = dataclasses.replace(self._pipeline, out_dir=Path(tmp))
            with self._model_lock:
                result = pipeline.process(ScanFile(path=path, relpath=rel), lambda _stage: None)
            return _to_browser_png(Path(tmp) / result.outputs[0])

    @staticmethod
    def colors() -> list[dict[str, str]]:
        """The colour table ``hints check`` accepts, for the picker (name, hex, set)."""
        return [{"name": c.name, "hex": c.hex, "set": c.set} for c in color_table()]

    # -- saving -----------------------------------------------------------------------------
    def _mask_target(self, sidecar: Path, stem: str, taken: set[Path]) -> Path:
        """A new mask file beside the sidecar (``masks/<scan>_hintN_mask.png``); never an existing one.

        The ``_mask`` ending is what discovery reads as "a hint mask, never a scan"."""
        folder = sidecar.parent / "masks"
        for n in range(1, 10_000):
            candidate = folder / f"{stem}_hint{n}_mask.png"
            if not candidate.exists() and candidate not in taken:
                return candidate
        raise HintError("too many mask files", path=folder)

    def _decode_mask(self, data: bytes, size: tuple[int, int]) -> bytes:
        """A painted mask upload -> a 1-bit-looking gray PNG of the scan's size; refuses anything else."""
        h, w = size
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as image:
                    if image.format != "PNG" or image.size != (w, h):
                        raise HintError(f"a painted mask must be a {w}x{h} PNG")
                    image.load()
                    arr = np.asarray(image.convert("RGBA"))
        except (OSError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise HintError(f"cannot read the painted mask: {exc}") from None
        on = arr[:, :, 3] >= 128
        return _png(Image.fromarray(np.where(on, 255, 0).astype(np.uint8), mode="L"))

    def _check_etag(self, rel: str, current: str, etag: str) -> None:
        if current != etag:
            raise ConflictError(
                "the sidecar changed since this page loaded it (another tab or program saved it)",
                path=self.sidecar_path(rel),
                hint="nothing was written; reload to see the other version, then redo your change",
            )

    def save(
        self, rel: str, etag: str, doc: Mapping[str, Any], uploads: Mapping[str, bytes]
    ) -> dict[str, Any]:
        """Validate and write the sidecar (and its new masks); the page's state after the save.

        Raises :class:`ConflictError` when the file is not the version the page loaded, and
        returns ``{"saved": False, "problems": [...]}`` when ``hints check`` would refuse it.
        """
        if len(uploads) > MAX_UPLOAD_MASKS:
            raise HintError(f"at most {MAX_UPLOAD_MASKS} painted masks per save")
        scan = self.scan_path(rel)
        with self._write_lock, _save_lock(self.root):
            text, current = self.read_sidecar(rel)
            self._check_etag(rel, current, etag)
            sidecar = self.sidecar_path(rel)
            self._inside(sidecar)
            target = sidecar
            if target.suffix.lower() not in (".yaml", ".yml") or target == scan:
                raise HintError("refusing to write a file that is not a sidecar", path=target)
            size = self._size(rel)
            doc = dict(doc)
            hints = [dict(h) for h in doc.get("instances") or []]
            masks: dict[Path, bytes] = {}
            for hint in hints:
                key = hint.pop("upload", None)
                if key is None:
                    continue
                if key not in uploads:
                    raise HintError(f"painted mask '{key}' was not sent with the save")
                out = self._mask_target(target, Path(scan.name).stem, set(masks))
                self._inside(out)
                masks[out] = self._decode_mask(uploads[key], size)
                hint["mask"] = out.relative_to(target.parent).as_posix()
            doc["instances"] = hints
            try:
                new_text = apply_document(text, doc, str(target))
            except DocumentError as exc:
                return {"saved": False, "problems": [_problem_dict(exc, [])]}
            if len(new_text.encode("utf-8")) > self.max_sidecar_bytes:
                raise HintError(f"the sidecar would be over the {self.max_sidecar_bytes}-byte limit")
            # Validate without the new mask files first (nothing on disk yet), then with them.
            _, problems = self._validate(new_text, target, size, None)
            if not problems:
                for path, data in masks.items():
                    atomic_write_bytes(path, data)
                _, problems = self._validate(new_text, target, size, self.root)
            if problems:
                for path in masks:
                    path.unlink(missing_ok=True)
                lines = instance_lines(new_text)
                return {"saved": False, "problems": [_problem_dict(p, lines) for p in problems]}
            try:  # a program that ignores the lock (a text editor) may have saved meanwhile
                self._check_etag(rel, self.read_sidecar(rel)[1], etag)
            except ConflictError:
                for path in masks:
                    path.unlink(missing_ok=True)
                raise
            digest = atomic_write_bytes(target, new_text.encode("utf-8"))
            with self._load_lock:
                self._cache.pop(rel, None)
        return {
            "saved": True,
            "etag": digest,
            "sidecar": self._rel(target),
            "masks": [self._rel(p) for p in masks],
        }
