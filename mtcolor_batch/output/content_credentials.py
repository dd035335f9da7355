"""C2PA Content Credentials: a signed manifest in every output, and reading one back.

Why C2PA on top of EXIF/XMP and the JSON record: those are unsigned and lost on the first re-save,
while a C2PA manifest is what archives, newsrooms and platforms check (and the machine-readable
marking EU AI Act Art. 50(2) expects of an AI-altered image). Each output's manifest names the
scan as its ``parentOf`` ingredient (title, format, sha256), records ``c2pa.opened`` then the
colorization as ``c2pa.edited`` (IPTC ``compositeWithTrainedAlgorithmicMedia``, software agent
mtcolor-batch and its version), and carries the provenance essentials in one assertion
(:data:`ASSERTION_LABEL`), with the sha256 of the JSON record.

Ordering: the record names the sha256 of the signed image, so the manifest cannot hold the hash of
the final record. It holds :func:`record_digest`: the hash of the record as it stands before
signing, which is the final record without the two fields only signing produces (``output.sha256``
and ``content_credentials``). ``verify`` recomputes it from the record on disk.

Signing works on the hidden temp file, before the atomic rename (``core.fs.OutputBatch``): the
image is encoded to a plain temp, then signed into the staged temp that is renamed into place, so
no final output ever exists unsigned. The formats the SDK cannot embed into (BMP) get a sidecar
``<output>.c2pa`` manifest store, renamed into place with the image, and a note in the record.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from mtcolor_batch import __version__
from mtcolor_batch.core.fs import OutputBatch, temp_path
from mtcolor_batch.output.credentials import CredentialPaths, SigningCredentials, load_credentials
from mtcolor_batch.output.provenance import DIGITAL_SOURCE_TYPE, record_bytes
from mtcolor_batch.output.writer import format_for

ASSERTION_LABEL = "org.mtcolor-batch.provenance"
INGREDIENT_SHA_KEY = "org.mtcolor-batch.sha256"
SIDECAR_SUFFIX = ".c2pa"
MIME = {
    "JPEG": "image/jpeg", "PNG": "image/png", "TIFF": "image/tiff", "WEBP": "image/webp", "BMP": "image/bmp"
}
_SCAN_MIME = {**MIME, "GIF": "image/gif", "JPEG2000": "image/jp2", "MPO": "image/jpeg"}
_SETTINGS = {"builder": {"thumbnail": {"enabled": False}}}
"""No thumbnails: the SDK would decode every (up to 400 MP, 16-bit) output again to make one, and
the manifest stays a few KB."""
_HARD_BINDINGS = (
    "assertion.dataHash.", "assertion.boxesHash.", "assertion.bmffHash.", "assertion.collectionHash."
)
UNTRUSTED = "signingCredential.untrusted"


@dataclass(frozen=True)
class Original:
    """The scan an output was made from, as its manifest names it."""

    title: str
    format: str
    sha256: str


@dataclass(frozen=True)
class Signed:
    """What signing one output produced."""

    sha256: str  # of the final image bytes
    sidecar: Path | None  # the .c2pa manifest store, for a format that cannot hold one
    entry: dict[str, Any]  # the record's ``content_credentials``


def sidecar_path(image: Path) -> Path:
    return image.with_name(image.name + SIDECAR_SUFFIX)


def record_digest(record: dict[str, Any]) -> str:
    """sha256 of the record as it stood when its output was signed (see the module docstring)."""
    before = {k: v for k, v in record.items() if k != "content_credentials"}
    before["output"] = {**(record.get("output") or {}), "sha256": None}
    return hashlib.sha256(record_bytes(before)).hexdigest()


def provenance_assertion(record: dict[str, Any], record_name: str | None) -> dict[str, Any]:
    """The project assertion: what made this output, from the record (no paths, no key, no clock)."""
    model = record.get("model") or {}
    info = model.get("info") or {}
    params = record.get("parameters") or {}
    departures = record.get("paper_deviations") or {}
    return {
        "tool": {"name": "mtcolor-batch", "version": __version__},
        "model": {
            "bundle": model.get("bundle"),
            "revision": model.get("revision"),
            "weights_sha256": model.get("weights_sha256"),
        },
        "profile": (record.get("profile") or {}).get("name"),
        "profile_fingerprint": (record.get("profile") or {}).get("fingerprint"),
        "seed": record.get("seed"),
        "steps": params.get("steps"),
        "scheduler": info.get("scheduler"),
        "instances": [
            {"label": i.get("label"), "color": (i.get("hint_color") or {}).get("name")}
            for i in record.get("instances") or []
        ],
        "paper_deviations": [d.get("id") for d in departures.get("built_in") or []]
        + [d.get("key") for d in departures.get("profile") or []],
        "input_sha256": (record.get("input") or {}).get("sha256"),
        "record": {"name": record_name, "sha256": record_digest(record)} if record_name else None,
    }


def manifest_definition(
    title: str, fmt: str, original: Original, assertion: dict[str, Any]
) -> dict[str, Any]:
    """The C2PA manifest: the scan as parentOf ingredient, opened -> edited, the project assertion."""
    agent = {"name": "mtcolor-batch", "version": __version__}
    return {
        "claim_generator_info": [agent],
        "title": title,
        "format": fmt,
        "ingredients": [
            {
                "title": original.title,
                "format": original.format,
                "relationship": "parentOf",
                "label": "original-scan",
                "metadata": {INGREDIENT_SHA_KEY: original.sha256},
            }
        ],
        "assertions": [
            {
                "label": "c2pa.actions",
                "data": {
                    "actions": [
                        {"action": "c2pa.opened", "parameters": {"ingredientIds": ["original-scan"]}},
                        {
                            "action": "c2pa.edited",
                            "description": "colorized with MT-Color",
                            "digitalSourceType": DIGITAL_SOURCE_TYPE,
                            "softwareAgent": agent,
                        },
                    ]
                },
            },
            {"label": ASSERTION_LABEL, "data": assertion},
        ],
    }


def scan_mime(scan_format: str) -> str:
    return _SCAN_MIME.get(scan_format.upper(), f"image/{scan_format.lower()}")


class ContentSigner:
    """Signs outputs with one set of credentials; built where it signs (each worker reads the key)."""

    def __init__(self, credentials: SigningCredentials) -> None:
        import c2pa

        self._c2pa = c2pa
        info = c2pa.C2paSignerInfo(credentials.alg, credentials.chain_pem, credentials.key_pem, None)
        self._signer = c2pa.Signer.from_info(info)
        self._context = c2pa.Context.from_dict(_SETTINGS)
        self._embeddable = set(c2pa.Builder.get_supported_mime_types())
        self.subject = credentials.subject

    @classmethod
    def from_paths(cls, paths: CredentialPaths) -> ContentSigner:
        return cls(load_credentials(paths))

    def can_embed(self, fmt: str) -> bool:
        return MIME.get(fmt, "") in self._embeddable

    def write_signed(
        self,
        batch: OutputBatch,
        target: Path,
        plain: Path,
        fmt: str,
        original: Original,
        assertion: dict[str, Any],
    ) -> Signed:
        """Stage ``target`` as ``plain`` (the encoded image) signed, plus a sidecar if it must.

        Only staged in ``batch``: nothing is renamed into place until the batch commits.
        """
        c2pa = self._c2pa
        mime = MIME[fmt]
        embed = self.can_embed(fmt)
        definition = manifest_definition(target.name, mime, original, assertion)
        builder = c2pa.Builder(definition, context=self._context)
        if not embed:
            builder.set_no_embed()
        manifest: list[bytes] = []

        def sign_into(fh: BinaryIO) -> None:
            fh.rehash_all()  # type: ignore[attr-defined]  # core.fs.HashingFile: the SDK writes to the file
            with open(plain, "rb") as src:
                manifest.append(builder.sign(self._signer, mime, src, fh.raw))  # type: ignore[attr-defined]

        try:
            sha = batch.add(target, sign_into)
        finally:
            builder.close()
        entry: dict[str, Any] = {
            "standard": "C2PA",
            "signer": self.subject,
            "embedded": embed,
            "record_sha256": (assertion.get("record") or {}).get("sha256"),
        }
        side = None
        if not embed:
            side = sidecar_path(target)
            batch.add(side, _writer(manifest[0]))
            entry["manifest"] = side.name
            entry["note"] = f"{fmt} cannot hold a C2PA manifest: it is in the sidecar {side.name}"
        return Signed(sha256=sha, sidecar=side, entry=entry)


@contextlib.contextmanager
def plain_temp(folder: Path, encode: Callable[[BinaryIO], None]) -> Iterator[Path]:
    """The unsigned encoding of an output, in a hidden temp beside it, removed when the block ends.

    A kill -9 leaves it as an ordinary dead writer's temp (``core.fs`` names), which the next run
    removes; it is never renamed to an output name.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(folder)
    try:
        with open(tmp, "wb") as fh:
            encode(fh)
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


# -- reading back ------------------------------------------------------------------------------


@dataclass
class CredentialCheck:
    """What a validator finds in one output (``status``: valid | invalid | absent)."""

    status: str
    manifest: bool
    signature: bool | None = None
    data_hash: bool | None = None
    trust: str = "-"  # trusted | untrusted | -
    signer: str | None = None
    ingredient_sha256: str | None = None
    assertion: dict[str, Any] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "manifest": self.manifest,
            "signature": self.signature,
            "data_hash": self.data_hash,
            "trust": self.trust,
            "signer": self.signer,
            "ingredient_sha256": self.ingredient_sha256,
            "failures": list(self.failures),
            "error": self.error,
        }


def _context(trust_anchors: bytes | None) -> Any:
    import c2pa

    if trust_anchors is None:
        return None
    return c2pa.Context.from_dict(
        {"verify": {"verify_trust": True}, "trust": {"trust_anchors": trust_anchors.decode("utf-8")}}
    )


def read_credentials(image: Path, trust_anchors: bytes | None = None) -> CredentialCheck:
    """Read and validate ``image``'s manifest (embedded, or its ``.c2pa`` sidecar) with the c2pa SDK.

    ``trust_anchors``: PEM of the CA(s) to trust; with them, an untrusted signer is invalid.
    """
    import c2pa

    image = Path(image)
    side = sidecar_path(image)
    mime = MIME.get(_format_of(image))
    context = _context(trust_anchors)
    try:
        with open(image, "rb") as fh:
            if side.is_file():
                reader = c2pa.Reader(mime, fh, side.read_bytes(), context)
            else:
                reader = c2pa.Reader.try_create(mime, fh, None, context)
            if reader is None:
                return CredentialCheck("absent", manifest=False)
            with reader:
                store = json.loads(reader.json())
                state = reader.get_validation_state() or ""
    except c2pa.C2paError as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "ManifestNotFound" in type(exc).__name__ or "no JUMBF" in text:
            return CredentialCheck("absent", manifest=False)
        return CredentialCheck("invalid", manifest=True, signature=False, error=text)
    active = (store.get("manifests") or {}).get(store.get("active_manifest") or "", {})
    results = (store.get("validation_results") or {}).get("activeManifest") or {}
    failures = [str(f.get("code")) for f in results.get("failure") or []]
    if not results:
        failures = [str(s.get("code")) for s in store.get("validation_status") or []]
    binding = [c for c in failures if c.startswith(_HARD_BINDINGS)]
    signature = [
        c for c in failures if c.startswith(("claimSignature.", "signingCredential.")) and c != UNTRUSTED
    ]
    trusted = state == "Trusted"
    trust = "trusted" if trusted else "untrusted" if UNTRUSTED in failures or state == "Valid" else "-"
    others = [c for c in failures if c not in binding and c not in signature and c != UNTRUSTED]
    ok = not binding and not signature and not others and state in ("Valid", "Trusted")
    if trust_anchors is not None and not trusted:
        ok = False
    parent: dict[str, Any] = next(
        (i for i in active.get("ingredients") or [] if i.get("relationship") == "parentOf"), {}
    )
    sig = active.get("signature_info") or {}
    assertion = next(
        (a.get("data") for a in active.get("assertions") or [] if a.get("label") == ASSERTION_LABEL), None
    )
    return CredentialCheck(
        status="valid" if ok else "invalid",
        manifest=True,
        signature=not signature,
        data_hash=not binding,
        trust=trust,
        signer=sig.get("common_name") or sig.get("issuer"),
        ingredient_sha256=(parent.get("metadata") or {}).get(INGREDIENT_SHA_KEY),
        assertion=assertion if isinstance(assertion, dict) else {},
        failures=failures,
    )


def _writer(data: bytes) -> Callable[[BinaryIO], None]:
    def put(fh: BinaryIO) -> None:
        fh.write(data)

    return put


def _format_of(image: Path) -> str:
    return format_for(image.name, "")
