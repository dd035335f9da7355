"""The signing credentials of Content Credentials: the archive's own, or a generated local pair.

Why a generated pair: every output must be signed from the first run on, before an archive has
obtained a certificate of its own. One local signing CA and one leaf certificate (ES256, with the
extensions C2PA requires of a signer: digitalSignature key usage, an e-mail-protection extended key
usage, no CA flag, issued by a CA rather than self-signed) are made once in the user's config
directory. A validator reads such outputs as signed but ``signingCredential.untrusted`` until the
archive configures its own certificate (``--c2pa-cert/--c2pa-key`` or ``output.c2pa_cert/_key``).

The private key is read from its file where it is used (each worker reads it itself) and is never
copied into a record, a log, the journal or a task argument: only its path travels.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mtcolor_batch.core.config import OutputSettings
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.fs import atomic_write, atomic_write_bytes

MAX_PEM_BYTES = 1 << 20
"""A certificate chain or key is a few KB; the cap is checked before a file is read."""
CHAIN_FILE = "signer-chain.pem"
KEY_FILE = "signer-key.pem"
CA_FILE = "local-ca.pem"
KEY_MODE = 0o600


@dataclass(frozen=True)
class CredentialPaths:
    """Where the certificate chain (leaf first, PEM) and its private key (PEM) lie."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class SigningCredentials:
    """A checked chain and key, read into memory by the process that signs (never pickled)."""

    chain_pem: bytes
    key_pem: bytes
    alg: str  # the C2PA algorithm name the key implies: es256, es384, es512, ps256, ed25519
    subject: str  # the leaf's subject, as records and `verify` name the signer

    def __reduce__(self) -> tuple[object, ...]:
        raise TypeError("signing credentials are read by each worker from their paths, never pickled")


def config_dir() -> Path:
    """``$XDG_CONFIG_HOME/mtcolor-batch`` (``~/.config/mtcolor-batch`` when it is unset)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "mtcolor-batch"


def local_credentials_dir() -> Path:
    return config_dir() / "c2pa"


def local_paths() -> CredentialPaths:
    folder = local_credentials_dir()
    return CredentialPaths(folder / CHAIN_FILE, folder / KEY_FILE)


def ensure_local_credentials() -> tuple[CredentialPaths, bool]:
    """The generated local pair, made now if it does not exist yet; True when it was just made."""
    paths = local_paths()
    if paths.cert.is_file() and paths.key.is_file():
        return paths, False
    generate_local_credentials(paths.cert.parent)
    return paths, True


def signing_paths(settings: OutputSettings) -> CredentialPaths:
    """The archive's configured pair (``output.c2pa_cert``/``_key``), else the local one (made if missing)."""
    if settings.c2pa_cert or settings.c2pa_key:
        if not (settings.c2pa_cert and settings.c2pa_key):
            raise UserError(
                "a C2PA certificate needs its key and a key its certificate",
                hint="give both --c2pa-cert and --c2pa-key (output.c2pa_cert and output.c2pa_key)",
            )
        return CredentialPaths(Path(settings.c2pa_cert).expanduser(), Path(settings.c2pa_key).expanduser())
    return ensure_local_credentials()[0]


def prepare_credentials(settings: OutputSettings) -> tuple[CredentialPaths, bool]:
    """Check the credentials a run will sign with, before any file is touched; pin them as paths.

    Returns the absolute paths (they travel to every worker in the profile, as the bundle's path
    does) and whether a local pair was generated just now. Any problem raises a setup UserError.
    """
    created = False
    if settings.c2pa_cert or settings.c2pa_key:
        paths = signing_paths(settings)
    else:
        paths, created = ensure_local_credentials()
    load_credentials(paths)
    paths = CredentialPaths(paths.cert.resolve(), paths.key.resolve())
    settings.c2pa_cert, settings.c2pa_key = str(paths.cert), str(paths.key)
    return paths, created


def generate_local_credentials(folder: Path) -> CredentialPaths:
    """Write a local signing CA and a leaf certificate it issued (ES256) into ``folder``.

    The key file is created with mode 0600 before any byte of it is written; the chain (leaf, then
    CA) and the CA certificate alone (for ``verify --trust-anchors``) are public.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    now = dt.datetime.now(dt.timezone.utc)
    org = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mtcolor-batch local signer (untrusted)")

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common), org])

    def usage(*, sign: bool, ca: bool) -> x509.KeyUsage:
        return x509.KeyUsage(
            digital_signature=sign, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False,
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("mtcolor-batch local signing CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage(sign=False, ca=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(name("mtcolor-batch local signer"))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage(sign=True, ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = leaf_key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    paths = CredentialPaths(folder / CHAIN_FILE, folder / KEY_FILE)

    def write_key(fh: BinaryIO) -> None:
        os.fchmod(fh.raw.fileno(), KEY_MODE)  # type: ignore[attr-defined]  # core.fs.HashingFile
        fh.write(key_pem)

    atomic_write(paths.key, write_key)
    atomic_write_bytes(folder / CA_FILE, ca.public_bytes(pem))
    atomic_write_bytes(paths.cert, leaf.public_bytes(pem) + ca.public_bytes(pem))  # last: marks done
    return paths


def _read_pem(path: Path, what: str) -> bytes:
    try:
        if path.stat().st_size > MAX_PEM_BYTES:
            raise UserError(f"the C2PA {what} is over {MAX_PEM_BYTES} bytes: not a PEM file", path=path)
        return path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"C2PA {what} not found", path=path, hint=_HINT) from None
    except OSError as exc:
        reason = exc.strerror or exc
        raise UserError(f"cannot read the C2PA {what}: {reason}", path=path, hint=_HINT) from None


_HINT = "give --c2pa-cert CHAIN.pem --c2pa-key KEY.pem, or output.c2pa: off"


def load_credentials(paths: CredentialPaths) -> SigningCredentials:
    """Read and check a chain and key: both PEM, the key matching the leaf certificate.

    Every problem is a :class:`UserError` naming the file (a setup error: exit 2 before any file).
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    chain_pem = _read_pem(paths.cert, "certificate chain")
    key_pem = _read_pem(paths.key, "private key")
    try:
        certs = x509.load_pem_x509_certificates(chain_pem)
    except ValueError:
        raise UserError("not a PEM certificate chain", path=paths.cert, hint=_HINT) from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        # the exception text could quote key bytes: say only what is wrong
        raise UserError(
            "not an unencrypted PEM private key", path=paths.key, hint=_HINT
        ) from None
    leaf = certs[0]
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, pub) != leaf.public_key().public_bytes(der, pub):
        raise UserError(
            f"the private key does not match the certificate {paths.cert}",
            path=paths.key,
            hint="give the key the leaf certificate (the chain's first) was issued for",
        )
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}.get(key.curve.name)
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        alg = "ed25519"
    elif isinstance(key, rsa.RSAPrivateKey):
        alg = "ps256"
    else:
        alg = None
    if alg is None:
        raise UserError(
            "C2PA signs with EC P-256/384/521, Ed25519 or RSA-PSS keys; this key is none of them",
            path=paths.key,
        )
    return SigningCredentials(chain_pem, key_pem, alg, leaf.subject.rfc4514_string())
