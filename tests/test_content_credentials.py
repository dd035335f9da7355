"""C2PA Content Credentials: every output signed, read back with the real c2pa Reader, and `verify`.

The run fixtures go through the real CLI with the tiny bundle; the local signing certificate is
generated into the test session's $XDG_CONFIG_HOME (conftest), never the user's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import c2pa
import numpy as np
import pytest
import tifffile
from PIL import Image
from typer.testing import CliRunner

from mtcolor_batch.cli import app
from mtcolor_batch.core.errors import UserError
from mtcolor_batch.core.fs import OutputBatch
from mtcolor_batch.output.content_credentials import (
    ASSERTION_LABEL,
    ContentSigner,
    Original,
    plain_temp,
    read_credentials,
    record_digest,
)
from mtcolor_batch.output.credentials import (
    CredentialPaths,
    ensure_local_credentials,
    generate_local_credentials,
    load_credentials,
)
from mtcolor_batch.output.provenance import DIGITAL_SOURCE_TYPE
from mtcolor_batch.output.writer import EmbeddedMeta, encode_image
from mtcolor_batch.testing.c2pa_strip import without_manifest
from mtcolor_batch.testing.profiles import fast_profile_yaml

PROFILE = fast_profile_yaml("cc-test", auto_instances=False)


def invoke(*args: object):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def make_scans(root: Path) -> None:
    """One scan per output format: 8/16-bit PNG, JPEG, 8/16-bit TIFF, WebP, BMP (sidecar manifest)."""
    root.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:32, 0:40]
    gray = ((xx * 5 + yy * 3) % 256).astype(np.uint8)
    Image.fromarray(gray, "L").save(root / "a.png")
    Image.fromarray(255 - gray, "L").save(root / "b.jpg", quality=95)
    tifffile.imwrite(root / "c16.tif", (gray.astype(np.uint16) * 257 + 3))
    tifffile.imwrite(root / "c8.tif", gray)
    Image.fromarray(gray.astype(np.uint16) * 200 + 7).save(root / "f16.png")
    Image.fromarray(gray // 2 + 60, "L").convert("RGB").save(root / "d.webp", quality=95)
    Image.fromarray(gray // 3 + 90, "L").save(root / "e.bmp")


@pytest.fixture(scope="module")
def signed_run(tmp_path_factory: pytest.TempPathFactory, tiny_bundle: Path) -> tuple[Path, Path, Path]:
    base = tmp_path_factory.mktemp("cc")
    scans, out, profile = base / "scans", base / "out", base / "p.yaml"
    make_scans(scans)
    profile.write_text(PROFILE)
    args = ("--model", tiny_bundle, "--profile", profile, "--device", "cpu")
    result = invoke("run", scans, "--out", out, *args)
    assert result.exit_code == 0, result.output
    return scans, out, profile


def copy_run(signed_run, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the scans and outputs (records point at the copied scans)."""
    scans, out, _ = signed_run
    scans2, out2 = tmp_path / "scans", tmp_path / "out"
    shutil.copytree(scans, scans2)
    shutil.copytree(out, out2)
    return scans2, out2


def verify(out: Path, *extra: object):
    return invoke("verify", out, "--json", *extra)


def results(result) -> dict[str, dict]:
    return {r["output"]: r for r in json.loads(result.stdout)}


# -- the signed outputs, read with the real c2pa Reader ------------------------------------------


def test_every_output_reads_valid_with_the_scan_as_ingredient(signed_run) -> None:
    scans, out, _ = signed_run
    for rel, scan in (
        ("a.color.png", "a.png"),
        ("b.color.jpg", "b.jpg"),
        ("c16.color.tif", "c16.tif"),
        ("c8.color.tif", "c8.tif"),
        ("d.color.webp", "d.webp"),
        ("f16.color.png", "f16.png"),
    ):
        with c2pa.Reader(str(out / rel)) as reader:
            store = json.loads(reader.json())
            assert reader.get_validation_state() == "Valid", rel
            active = reader.get_active_manifest()
        codes = [s["code"] for s in store.get("validation_status") or []]
        assert codes == ["signingCredential.untrusted"], (rel, codes)  # the local CA: only untrusted
        [ingredient] = active["ingredients"]
        assert ingredient["relationship"] == "parentOf" and ingredient["title"] == scan
        sha = hashlib.sha256((scans / scan).read_bytes()).hexdigest()
        assert ingredient["metadata"]["org.mtcolor-batch.sha256"] == sha
        actions = next(a for a in active["assertions"] if a["label"].startswith("c2pa.actions"))["data"]
        assert [a["action"] for a in actions["actions"]] == ["c2pa.opened", "c2pa.edited"]
        edited = actions["actions"][1]
        assert edited["digitalSourceType"] == DIGITAL_SOURCE_TYPE
        assert edited["softwareAgent"]["name"] == "mtcolor-batch" and edited["softwareAgent"]["version"]
        ours = next(a for a in active["assertions"] if a["label"] == ASSERTION_LABEL)["data"]
        record = json.loads((out / rel).with_suffix(".json").read_text())
        assert ours["seed"] == record["seed"] and ours["steps"] == 2
        assert ours["model"]["weights_sha256"] == record["model"]["weights_sha256"]
        assert ours["record"]["sha256"] == record_digest(record)  # the record as signed
        assert record["output"]["sha256"] == hashlib.sha256((out / rel).read_bytes()).hexdigest()
        assert record["content_credentials"]["embedded"] is True


def test_bmp_gets_a_sidecar_manifest_and_a_note(signed_run) -> None:
    _, out, _ = signed_run
    record = json.loads((out / "e.color.json").read_text())
    entry = record["content_credentials"]
    assert entry["embedded"] is False and entry["manifest"] == "e.color.bmp.c2pa"
    assert "sidecar" in entry["note"]
    check = read_credentials(out / "e.color.bmp")
    assert check.status == "valid" and check.failures == ["signingCredential.untrusted"]


def test_16bit_tiff_keeps_its_pixels_bit_exact_and_its_credentials(tmp_path: Path) -> None:
    """The signed TIFF decodes to exactly the pixels encoded (16 bits per sample)."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 65536, (24, 30, 3), dtype=np.uint16)
    meta = EmbeddedMeta(software="t", description="d", user_comment="c", xmp=b"<x/>")
    signer = ContentSigner(load_credentials(ensure_local_credentials()[0]))
    target = tmp_path / "x.color.tif"
    encode = lambda fh: encode_image(fh, rgb, "TIFF", 16, meta)  # noqa: E731
    with OutputBatch() as batch, plain_temp(tmp_path, encode) as plain:
        signed = signer.write_signed(batch, target, plain, "TIFF", Original("x.tif", "image/tiff", "ab"), {})
    assert tifffile.imread(target).dtype == np.uint16
    assert np.array_equal(tifffile.imread(target), rgb)
    assert read_credentials(target).status == "valid" and signed.sidecar is None
    assert [p.name for p in tmp_path.iterdir()] == ["x.color.tif"]  # no temp left


def test_16bit_tiff_from_a_run_is_bit_exact_to_an_unsigned_run(signed_run, tiny_bundle, tmp_path) -> None:
    scans, out, profile = signed_run
    off = tmp_path / "off.yaml"
    off.write_text(PROFILE + "output:\n  c2pa: 'off'\n")
    plain_out = tmp_path / "plain"
    args = ("--model", tiny_bundle, "--profile", off, "--device", "cpu", "--out", plain_out)
    assert invoke("run", scans / "c16.tif", *args).exit_code == 0
    signed = tifffile.imread(out / "c16.color.tif")
    assert signed.dtype == np.uint16 and np.array_equal(signed, tifffile.imread(plain_out / "c16.color.tif"))
    assert read_credentials(plain_out / "c16.color.tif").status == "absent"
    assert "content_credentials" not in json.loads((plain_out / "c16.color.json").read_text())


@pytest.mark.slow
def test_unsigned_runs_stay_byte_identical(signed_run, tiny_bundle, tmp_path) -> None:
    """With output.c2pa off nothing random enters a file: two runs write the same bytes."""
    scans, _, _ = signed_run
    off = tmp_path / "off.yaml"
    off.write_text(PROFILE + "output:\n  c2pa: off\n")  # YAML's unquoted off (false) means off
    outs = []
    for name in ("one", "two"):
        args = ("--model", tiny_bundle, "--profile", off, "--device", "cpu", "--seed", "5")
        assert invoke("run", scans / "b.jpg", *args, "--out", tmp_path / name).exit_code == 0
        outs.append((tmp_path / name / "b.color.jpg").read_bytes())
    assert outs[0] == outs[1] == without_manifest(outs[0])


# -- verify ----------------------------------------------------------------------------------------


def test_verify_passes_a_fresh_run(signed_run) -> None:
    _, out, _ = signed_run
    result = verify(out)
    assert result.exit_code == 0, result.output
    rows = results(result)
    assert sorted(rows) == [
        "a.color.png",
        "b.color.jpg",
        "c16.color.tif",
        "c8.color.tif",
        "d.color.webp",
        "e.color.bmp",
        "f16.color.png",
    ]
    assert all(r["valid"] and r["original"] == "match" and r["record"] == "match" for r in rows.values())
    assert {r["c2pa_trust"] for r in rows.values()} == {"untrusted"}
    table = invoke("verify", out)
    assert table.exit_code == 0 and "7 valid, 0 not valid" in table.output


def test_verify_reports_a_flipped_pixel_byte(signed_run, tmp_path) -> None:
    _, out = copy_run(signed_run, tmp_path)
    target = out / "d.color.webp"
    data = bytearray(target.read_bytes())
    data[data.index(b"VP8 ") + 8 + 100] ^= 0x01  # a byte of the compressed pixels
    target.write_bytes(bytes(data))
    result = verify(out)
    assert result.exit_code == 1
    row = results(result)["d.color.webp"]
    assert not row["valid"] and row["c2pa_data_hash"] is False and row["c2pa_manifest"] is True
    assert sum(not r["valid"] for r in results(result).values()) == 1


def test_verify_reports_a_tampered_manifest(signed_run, tmp_path) -> None:
    _, out = copy_run(signed_run, tmp_path)
    target = out / "d.color.webp"
    data = bytearray(target.read_bytes())
    data[-20] ^= 0x01  # WebP keeps the manifest store in its last chunk: the signature breaks
    target.write_bytes(bytes(data))
    result = verify(out)
    row = results(result)["d.color.webp"]
    assert result.exit_code == 1 and row["c2pa_signature"] is False


def test_verify_reports_a_stripped_manifest(signed_run, tmp_path) -> None:
    _, out = copy_run(signed_run, tmp_path)
    target = out / "b.color.jpg"
    target.write_bytes(without_manifest(target.read_bytes()))
    result = verify(out)
    assert result.exit_code == 1
    row = results(result)["b.color.jpg"]
    assert row["badge"] == "absent" and row["problems"] == ["no Content Credentials manifest"]


def test_verify_reports_an_original_changed_after_the_run(signed_run, tmp_path) -> None:
    scans, out = copy_run(signed_run, tmp_path)
    scan = scans / "a.png"
    Image.fromarray(np.zeros((32, 40), np.uint8), "L").save(scan)
    result = verify(out, "--scans", scans)
    assert result.exit_code == 1
    row = results(result)["a.color.png"]
    assert row["original"] == "changed" and row["c2pa_signature"] and row["c2pa_data_hash"]
    scan.unlink()
    assert results(verify(out, "--scans", scans))["a.color.png"]["original"] == "missing"


def test_verify_reports_a_record_that_is_not_the_signed_one(signed_run, tmp_path) -> None:
    _, out = copy_run(signed_run, tmp_path)
    record_path = out / "a.color.json"
    record = json.loads(record_path.read_text())
    record["seed"] += 1
    record_path.write_text(json.dumps(record))
    result = verify(out)
    assert result.exit_code == 1 and results(result)["a.color.png"]["record"] == "mismatch"


def test_verify_with_trust_anchors(signed_run, tmp_path) -> None:
    """The archive's CA trusts its own outputs; another signer's (a wrong key) fails."""
    _, out, _ = signed_run
    local_ca = ensure_local_credentials()[0].cert.parent / "local-ca.pem"
    trusted = verify(out, "--trust-anchors", local_ca)
    assert trusted.exit_code == 0, trusted.output
    assert {r["c2pa_trust"] for r in results(trusted).values()} == {"trusted"}
    other = generate_local_credentials(tmp_path / "other-archive")
    result = verify(out, "--trust-anchors", other.cert.parent / "local-ca.pem")
    assert result.exit_code == 1
    assert all("signer not trusted by --trust-anchors" in r["problems"] for r in results(result).values())


def test_verify_setup_errors_exit_2(tmp_path: Path) -> None:
    result = invoke("verify", tmp_path)
    assert result.exit_code == 2 and "no job journal here" in result.output


def test_report_shows_a_credentials_badge_per_image(signed_run, tmp_path) -> None:
    from mtcolor_batch.evaluate.report import build_report

    _, out = copy_run(signed_run, tmp_path)
    (out / "b.color.jpg").write_bytes(without_manifest((out / "b.color.jpg").read_bytes()))
    page = build_report(out, with_metrics=False).read_text()
    assert page.count(">Content Credentials: valid<") == 6
    assert page.count(">Content Credentials: absent<") == 1


# -- credentials -------------------------------------------------------------------------------------


def test_local_credentials_are_made_once_with_a_private_key(tmp_path: Path, monkeypatch) -> None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    paths, created = ensure_local_credentials()
    assert created and paths.cert.parent == tmp_path / "cfg" / "mtcolor-batch" / "c2pa"
    assert stat.S_IMODE(paths.key.stat().st_mode) == 0o600
    assert ensure_local_credentials() == (paths, False)
    leaf, ca = x509.load_pem_x509_certificates(paths.cert.read_bytes())
    assert leaf.issuer == ca.subject != leaf.subject  # issued by the CA, not self-signed
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.EMAIL_PROTECTION in eku
    assert load_credentials(paths).alg == "es256"


def test_a_key_that_does_not_match_the_certificate_is_a_setup_error(tmp_path: Path, tiny_bundle) -> None:
    one = generate_local_credentials(tmp_path / "one")
    two = generate_local_credentials(tmp_path / "two")
    with pytest.raises(UserError, match="does not match the certificate"):
        load_credentials(CredentialPaths(one.cert, two.key))
    scans = tmp_path / "scans"
    make_scans(scans)
    out = tmp_path / "out"
    result = invoke(
        "run", scans, "--out", out, "--model", tiny_bundle, "--c2pa-cert", one.cert, "--c2pa-key", two.key
    )
    assert result.exit_code == 2 and "does not match the certificate" in result.output
    assert len(result.output.strip().splitlines()) == 1 and not out.exists()  # before any file


@pytest.mark.parametrize("problem", ["missing", "unreadable", "not-a-key", "no-key"])
def test_missing_or_unreadable_key_is_one_line_exit_2(tmp_path: Path, tiny_bundle, problem: str) -> None:
    creds = generate_local_credentials(tmp_path / "creds")
    key = creds.key
    if problem == "missing":
        key = tmp_path / "nope.pem"
    elif problem == "unreadable":
        key = tmp_path / "dir-not-file"
        key.mkdir()
    elif problem == "not-a-key":
        key = tmp_path / "junk.pem"
        key.write_text("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
    args = ["--c2pa-cert", creds.cert] + ([] if problem == "no-key" else ["--c2pa-key", key])
    out = tmp_path / "out"
    make_scans(tmp_path / "scans")
    result = invoke("run", tmp_path / "scans", "--out", out, "--model", tiny_bundle, *args)
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("error: ")
    assert not out.exists()


def test_archive_credentials_from_the_profile_sign_every_output(signed_run, tiny_bundle, tmp_path) -> None:
    scans, _, _ = signed_run
    creds = generate_local_credentials(tmp_path / "archive")
    profile = tmp_path / "archive.yaml"
    profile.write_text(
        PROFILE
        + f"output:\n  c2pa_cert: {json.dumps(str(creds.cert))}\n  c2pa_key: {json.dumps(str(creds.key))}\n"
    )
    out = tmp_path / "out"
    result = invoke("run", scans / "a.png", "--out", out, "--model", tiny_bundle, "--profile", profile)
    assert result.exit_code == 0, result.output
    assert "generated a local signing certificate" not in result.output
    ok = verify(out, "--trust-anchors", creds.cert.parent / "local-ca.pem")
    assert ok.exit_code == 0 and results(ok)["a.color.png"]["c2pa_trust"] == "trusted"


def test_the_key_never_enters_a_record_log_or_the_journal(signed_run) -> None:
    scans, out, _ = signed_run
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    key_pem = ensure_local_credentials()[0].key.read_bytes()
    secret = load_pem_private_key(key_pem, None).private_numbers().private_value.to_bytes(32, "big")
    body = b"".join(line for line in key_pem.splitlines() if not line.startswith(b"-----"))
    # the private scalar raw, as hex, as base64, and the PEM text around it (the public key, which
    # the certificate in every manifest carries, is no secret)
    needles = [secret, secret.hex().encode(), base64.b64encode(secret)[:40], body[48:88]]
    assert body[48:88] in key_pem.replace(b"\n", b"") and base64.b64decode(body)[-32:] != secret
    files = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in files)
    for path in files:
        data = path.read_bytes()
        assert not any(n in data for n in needles), path


@pytest.mark.slow
def test_first_run_says_where_the_local_certificate_is(tmp_path: Path, tiny_bundle, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    make_scans(tmp_path / "scans")
    (tmp_path / "p.yaml").write_text(PROFILE)
    args = ("--model", tiny_bundle, "--profile", tmp_path / "p.yaml", "--device", "cpu")
    first = invoke("run", tmp_path / "scans" / "a.png", "--out", tmp_path / "o1", *args)
    assert first.exit_code == 0, first.output
    said = [line for line in first.output.splitlines() if "local signing certificate" in line]
    assert len(said) == 1 and '"untrusted"' in said[0]
    assert str(tmp_path / "cfg") in "".join(first.output.split())
    again = invoke("run", tmp_path / "scans" / "a.png", "--out", tmp_path / "o2", *args)
    assert again.exit_code == 0 and "local signing certificate" not in again.output


# -- crash safety ---------------------------------------------------------------------------------------

KILLER = """
import os, signal, sys
import c2pa
from mtcolor_batch.cli import main

real_sign, count = c2pa.Builder.sign, [0]

def sign_then_die(self, *args):
    result = real_sign(self, *args)
    count[0] += 1
    if count[0] == int(os.environ["KILL_AT"]):
        os.kill(os.getpid(), signal.SIGKILL)  # signed temp written, not yet renamed into place
    return result

c2pa.Builder.sign = sign_then_die
sys.argv = ["mtcolor-batch", *sys.argv[1:]]
main()
"""


@pytest.mark.slow
def test_kill_9_during_a_signed_run_then_resume_leaves_only_signed_outputs(
    tmp_path: Path, tiny_bundle: Path
) -> None:
    scans, out = tmp_path / "scans", tmp_path / "out"
    make_scans(scans)
    (tmp_path / "p.yaml").write_text(PROFILE)
    args = [str(scans), "--out", str(out), "--model", str(tiny_bundle), "--profile", str(tmp_path / "p.yaml")]
    env = dict(os.environ, KILL_AT="3", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-c", KILLER, "run", *args, "--device", "cpu"]
    killed = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    assert killed.returncode == -9, killed.stderr[-2000:]
    images = [p for p in out.rglob("*.color.*") if p.suffix not in (".json", ".c2pa")]
    assert len(images) == 2  # two files finished before the kill
    assert all(read_credentials(p).status == "valid" for p in images)  # none unsigned under its name
    assert any(".mtcolor-tmp" in p.name for p in out.rglob("*"))  # the kill left temps behind
    resumed = invoke("run", *args, "--device", "cpu")
    assert resumed.exit_code == 0, resumed.output
    assert not any(".mtcolor-tmp" in p.name for p in out.rglob("*"))
    result = verify(out)
    assert result.exit_code == 0, result.output
    assert len(results(result)) == 7


def test_ray_workers_get_credential_paths_never_the_key() -> None:
    import pickle

    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from mtcolor_batch.core.config import load_profile
    from mtcolor_batch.jobs.executors.ray import worker_profile

    profile = load_profile(None)
    pinned = worker_profile(profile)
    paths = ensure_local_credentials()[0]
    assert (pinned.output.c2pa_cert, pinned.output.c2pa_key) == (str(paths.cert), str(paths.key))
    assert profile.output.c2pa_key is None and pinned.fingerprint() == profile.fingerprint()
    key_pem = paths.key.read_bytes()
    secret = load_pem_private_key(key_pem, None).private_numbers().private_value.to_bytes(32, "big")
    sent = pickle.dumps(pinned)
    assert secret not in sent and key_pem not in sent
    with pytest.raises(TypeError, match="never pickled"):
        pickle.dumps(load_credentials(paths))
