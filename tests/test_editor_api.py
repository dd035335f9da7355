"""``hints edit``'s HTTP API: load, save, round trip, validation, traversal, token/Host, conflicts."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from starlette.testclient import TestClient

from mtcolor_batch.core.config import load_profile
from mtcolor_batch.core.types import Instance
from mtcolor_batch.editor.app import allowed_hosts, create_app
from mtcolor_batch.editor.session import EditorSession
from mtcolor_batch.hints.check import check_sidecars
from mtcolor_batch.hints.template import template_text
from mtcolor_batch.scan.discover import discover

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "scans"
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"
TOKEN = "t0ken-for-tests"
H = {"X-Editor-Token": TOKEN}
STREET = "street_1910.jpg"


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def scans(tmp_path: Path) -> Path:
    root = tmp_path / "scans"
    shutil.copytree(EXAMPLES, root)
    return root


def make_client(root: Path, perception: object | None = None) -> tuple[TestClient, EditorSession]:
    session = EditorSession(root, [f.path for f in discover(root)], load_profile(None), perception, TOKEN)
    return TestClient(create_app(session, allowed_hosts(PORT)), base_url=BASE), session


@pytest.fixture
def client(scans: Path) -> TestClient:
    return make_client(scans)[0]


def load(client: TestClient, path: str = STREET) -> dict:
    r = client.get("/api/scan", params={"path": path}, headers=H)
    assert r.status_code == 200, r.text
    return r.json()


def save(client: TestClient, data: dict, doc: dict | None = None, etag: str | None = None, **extra):
    body = {"path": data["path"], "etag": data["etag"] if etag is None else etag, "doc": doc or data["doc"]}
    body.update(extra)
    return client.post("/api/save", json=body, headers=H)


def hint(**fields) -> dict:
    out = {k: None for k in ("label", "index", "box", "points", "polygon", "mask", "color", "text")}
    out.update(orig=None, extra=[])
    out.update(fields)
    return out


def png_data_url(mask: np.ndarray) -> str:
    rgba = np.zeros((*mask.shape, 4), np.uint8)
    rgba[mask] = 255
    buffer = io.BytesIO()
    Image.fromarray(rgba, mode="RGBA").save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


# -- load ------------------------------------------------------------------------------------------


def test_lists_scans_and_loads_the_runs_view(client: TestClient, scans: Path) -> None:
    r = client.get("/api/scans", headers=H)
    assert r.status_code == 200
    listed = {s["path"]: s for s in r.json()["scans"]}
    assert set(listed) == {"harbour/harbour_16bit.tif", "portrait.png", STREET}
    assert all(s["sidecar"] and s["problems"] == 0 for s in listed.values())

    data = load(client)
    assert data["size"] == [384, 512] and data["sidecar"] == "street_1910.jpg.yaml"
    assert data["etag"] == sha(scans / "street_1910.jpg.yaml")
    assert data["doc"]["exclude"] == ["sky"]
    (only,) = data["doc"]["instances"]
    assert only["box"] == [205, 173, 384, 276] and only["color"] == "dark green" and only["orig"] == 0
    # The instances come from the run's own chain (resolve_for_show): the hint with its final text.
    assert [(i["source"], i["text"]) for i in data["instances"]] == [("sidecar", "a dark green tram")]
    img = client.get("/api/image", params={"path": STREET, "token": TOKEN})
    assert img.status_code == 200 and Image.open(io.BytesIO(img.content)).size == (512, 384)


def test_image_is_upright_after_exif_orientation(tmp_path: Path) -> None:
    root = tmp_path / "scans"
    root.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees: stored 40 wide x 30 high, shown 30 wide x 40 high
    Image.new("L", (40, 30), 128).save(root / "turned.jpg", exif=exif.tobytes())
    client, _ = make_client(root)
    data = load(client, "turned.jpg")
    assert data["size"] == [40, 30] and not data["exists"] and data["etag"] == "none"
    img = client.get("/api/image", params={"path": "turned.jpg", "token": TOKEN})
    assert Image.open(io.BytesIO(img.content)).size == (30, 40)


# -- save and round trip ------------------------------------------------------------------------------


def test_save_adds_hints_keeps_comments_and_passes_check(client: TestClient, scans: Path) -> None:
    scan_hash = sha(scans / STREET)
    data = load(client)
    doc = data["doc"]
    doc["instances"].insert(
        0, hint(polygon=[[10, 10], [120, 12], [60, 90]], color="brick red", label="awning")
    )
    doc["seed"] = 77
    r = save(client, data, doc)
    assert r.status_code == 200, r.text
    text = (scans / "street_1910.jpg.yaml").read_text(encoding="utf-8")
    assert "# the tram" in text  # the user's comment moved with its hint
    assert r.json()["etag"] == sha(scans / "street_1910.jpg.yaml")
    parsed = yaml.safe_load(text)
    assert parsed["seed"] == 77 and parsed["exclude"] == ["sky"]
    assert [h.get("polygon") is not None for h in parsed["instances"]] == [True, False]
    problems, _, checked = check_sidecars(scans, 256 * 1024)
    assert problems == [] and checked == 3
    assert sha(scans / STREET) == scan_hash  # the scan is never written
    again = load(client)
    assert [i["text"] for i in again["instances"] if i["source"] == "sidecar"] == [
        "a brick red awning",
        "a dark green tram",
    ]


def test_unchanged_document_round_trips_byte_for_byte(client: TestClient, scans: Path) -> None:
    for rel, sidecar in ((STREET, "street_1910.jpg.yaml"), ("portrait.png", "portrait.yaml")):
        before = (scans / sidecar).read_bytes()
        r = save(client, load(client, rel))
        assert r.status_code == 200, r.text
        assert (scans / sidecar).read_bytes() == before


def test_unknown_keys_are_kept_and_reported_not_dropped(client: TestClient, scans: Path) -> None:
    sidecar = scans / "portrait.yaml"
    sidecar.write_text(
        "version: 1\n# keep me\ninstances:\n  - box: [1, 1, 50, 50]\n    colour: navy   # typo\n",
        encoding="utf-8",
    )
    before = sidecar.read_bytes()
    data = load(client, "portrait.png")
    (item,) = data["doc"]["instances"]
    assert item["extra"] == {"colour": "navy"}
    assert data["problems"][0]["hint"] == 0 and "did you mean 'color'" in data["problems"][0]["fix"]
    r = save(client, data)  # still there: refused, shown at the hint, file untouched
    assert r.status_code == 422 and r.json()["problems"][0]["hint"] == 0
    assert sidecar.read_bytes() == before
    fixed = data["doc"]
    fixed["instances"][0].update(color="navy", extra=[])
    r = save(client, data, fixed)
    assert r.status_code == 200, r.text
    text = sidecar.read_text(encoding="utf-8")
    assert "# keep me" in text and "colour" not in text and "color: navy" in text


def test_edited_init_template_stays_readable(tmp_path: Path) -> None:
    root = tmp_path / "scans"
    root.mkdir()
    Image.new("L", (80, 64), 100).save(root / "street.png")
    mask = np.zeros((64, 80), bool)
    mask[10:30, 5:40] = True
    detected = Instance.from_full_mask(1, "tram", "tram", mask, score=0.5)
    assert detected.box == (5, 10, 40, 30)
    template = template_text("street.png", (64, 80), [detected], None)
    (root / "street.png.yaml").write_text(template, encoding="utf-8")
    client, _ = make_client(root)
    data = load(client, "street.png")
    assert data["problems"] == [] and data["doc"]["instances"] == []
    doc = data["doc"]
    doc["instances"] = [hint(box=[2, 3, 40, 30], color="dark green"), hint(label="tram", color="navy")]
    doc["prompt"] = "a tram in 1910"
    assert save(client, data, doc).status_code == 200
    text = (root / "street.png.yaml").read_text(encoding="utf-8")
    assert "written by `mtcolor-batch hints init`" in text and "#   box: [5, 10, 40, 30]" in text
    parsed = yaml.safe_load(text)
    assert parsed["prompt"] == "a tram in 1910"
    assert parsed["instances"] == [
        {"box": [2, 3, 40, 30], "color": "dark green"},
        {"label": "tram", "color": "navy"},
    ]
    assert check_sidecars(root, 256 * 1024)[0] == []


def test_validation_errors_are_pinned_to_their_hint_and_nothing_is_written(
    client: TestClient, scans: Path
) -> None:
    sidecar = scans / "street_1910.jpg.yaml"
    before, mtime = sidecar.read_bytes(), sidecar.stat().st_mtime_ns
    data = load(client)
    doc = data["doc"]
    doc["instances"] += [hint(box=[0, 0, 9999, 20], color="navy"), hint(box=[5, 5, 50, 50], color="navvy")]
    check = client.post("/api/check", json={"path": STREET, "doc": doc}, headers=H).json()
    assert {p["hint"] for p in check["problems"]} == {1, 2}
    assert check["texts"] == ["a dark green tram", "a navy object", None]
    assert check["swatches"][:2] == ["#006400", "#000080"] and check["swatches"][2] is None
    r = save(client, data, doc)
    assert r.status_code == 422
    by_hint = {p["hint"]: p for p in r.json()["problems"]}
    assert "outside the 512x384 scan" in by_hint[1]["message"]
    assert "unknown colour 'navvy'" in by_hint[2]["message"] and "navy" in by_hint[2]["fix"]
    assert sidecar.read_bytes() == before and sidecar.stat().st_mtime_ns == mtime


def test_second_tab_save_is_refused_and_nothing_is_lost(client: TestClient, scans: Path) -> None:
    tab_a, tab_b = load(client), load(client)
    doc_a = tab_a["doc"]
    doc_a["prompt"] = "tab A"
    assert save(client, tab_a, doc_a).status_code == 200
    saved_a = (scans / "street_1910.jpg.yaml").read_bytes()
    doc_b = tab_b["doc"]
    doc_b["prompt"] = "tab B"
    r = save(client, tab_b, doc_b)
    assert r.status_code == 409 and r.json()["conflict"]
    assert "changed since this page loaded it" in r.json()["error"]
    assert (scans / "street_1910.jpg.yaml").read_bytes() == saved_a
    # A new sidecar created meanwhile (another tab, a text editor) is not replaced either.
    (scans / "portrait.yaml").unlink()
    fresh = load(client, "portrait.png")
    (scans / "portrait.yaml").write_text("version: 1\nprompt: written elsewhere\n", encoding="utf-8")
    doc = fresh["doc"]
    doc["instances"] = [hint(box=[1, 1, 9, 9], color="red")]
    assert save(client, fresh, doc).status_code == 409
    assert "written elsewhere" in (scans / "portrait.yaml").read_text(encoding="utf-8")


def test_painted_mask_is_saved_inside_the_tree(client: TestClient, scans: Path) -> None:
    data = load(client, "portrait.png")
    h, w = data["size"]
    mask = np.zeros((h, w), bool)
    mask[100:200, 50:150] = True
    existing = scans / "masks" / "portrait_hint1_mask.png"
    existing.parent.mkdir()
    existing.write_bytes(b"not mine")  # a file already there is never overwritten
    doc = data["doc"]
    doc["instances"].append(hint(upload="m1", color="dark green"))
    r = save(client, data, doc, uploads={"m1": png_data_url(mask)})
    assert r.status_code == 200, r.text
    assert r.json()["masks"] == ["masks/portrait_hint2_mask.png"] and existing.read_bytes() == b"not mine"
    written = np.asarray(Image.open(scans / "masks" / "portrait_hint2_mask.png"))
    assert written.shape == (h, w) and (written > 0).sum() == mask.sum()
    assert yaml.safe_load((scans / "portrait.yaml").read_text())["instances"][1]["mask"] == (
        "masks/portrait_hint2_mask.png"
    )
    assert check_sidecars(scans, 256 * 1024)[0] == []
    wrong = load(client, "portrait.png")
    doc = wrong["doc"]
    doc["instances"].append(hint(upload="m2", color="red"))
    r = save(client, wrong, doc, uploads={"m2": png_data_url(np.ones((10, 10), bool))})
    assert r.status_code == 400 and "must be a 384x512 PNG" in r.json()["error"]


# -- safety ---------------------------------------------------------------------------------------------


def test_token_host_origin_and_content_type_are_checked(client: TestClient, scans: Path) -> None:
    data = load(client)
    body = {"path": STREET, "etag": data["etag"], "doc": data["doc"]}
    assert client.get("/api/scans").status_code == 403
    assert client.get("/api/scans", headers={"X-Editor-Token": "wrong"}).status_code == 403
    assert client.post("/api/save", json=body).status_code == 403
    assert client.post(f"/api/save?token={TOKEN}", json=body).status_code == 403  # query token: GET only
    rebinding = {**H, "Host": f"evil.example:{PORT}"}
    assert client.get("/api/scans", headers=rebinding).status_code == 403
    assert client.get("/", headers={"Host": "evil.example"}).status_code == 403
    assert (
        client.post("/api/save", json=body, headers={**H, "Origin": "http://evil.example"}).status_code == 403
    )
    form = client.post("/api/save", content=json.dumps(body), headers={**H, "Content-Type": "text/plain"})
    assert form.status_code == 415
    assert client.get("/api/scans", headers={**H, "Host": f"localhost:{PORT}"}).status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'none'" in page.headers["content-security-policy"]
    assert client.get("/static/editor.js").status_code == 200


def test_request_size_limits(client: TestClient) -> None:
    big = {"path": STREET, "doc": {"prompt": "x" * (2 * 1024 * 1024)}}
    assert client.post("/api/check", json=big, headers=H).status_code == 413
    lying = client.post(
        "/api/check",
        content=json.dumps(big),
        headers={**H, "Content-Type": "application/json", "Content-Length": "10"},
    )
    assert lying.status_code in (400, 413)  # never more than the declared/limited bytes are parsed


def test_traversal_attempts_cannot_leave_the_tree(client: TestClient, scans: Path, tmp_path: Path) -> None:
    for name in ("../outside.png", "/etc/passwd", "portrait.yaml", "harbour/masks/boat.png"):
        assert client.get("/api/scan", params={"path": name}, headers=H).status_code == 404
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/session.py").status_code == 404
    outside = tmp_path / "outside.png"
    Image.new("L", (512, 384), 255).save(outside)
    data = load(client)
    for mask in ("../outside.png", str(outside), "../../etc/passwd"):
        doc = json.loads(json.dumps(data["doc"]))
        doc["instances"].append(hint(mask=mask, color="red"))
        r = save(client, data, doc)
        assert r.status_code == 422, (mask, r.text)
        assert r.json()["problems"][0]["hint"] == 1
    assert sha(scans / "street_1910.jpg.yaml") == data["etag"]
    # A sidecar that is a symlink out of the tree is never written through.
    victim = tmp_path / "victim.yaml"
    victim.write_text("version: 1\n", encoding="utf-8")
    (scans / "portrait.yaml").unlink()
    (scans / "portrait.yaml").symlink_to(victim)
    client2, _ = make_client(scans)
    r = client2.get("/api/scan", params={"path": "portrait.png"}, headers=H)
    assert r.status_code == 400 and "outside the scan folder" in r.json()["error"]
    assert victim.read_text(encoding="utf-8") == "version: 1\n"


def test_live_segmentation_embeds_each_scan_once(scans: Path, tiny_perception) -> None:
    client, session = make_client(scans, tiny_perception)
    data = load(client, "portrait.png")
    assert data["segmenter"] is True
    segmenter = tiny_perception.segmenter
    first = client.post("/api/segment", json={"path": "portrait.png", "points": [[100, 200]]}, headers=H)
    assert first.status_code == 200 and first.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(first.content)).size == (384, 512)
    count = segmenter.embed_count
    for points in ([[100, 200], [120, 220]], [[10, 10]]):
        r = client.post("/api/segment", json={"path": "portrait.png", "points": points}, headers=H)
        assert r.status_code == 200
    assert segmenter.embed_count == count  # more clicks on the same scan reuse the embedding
    bad = client.post("/api/segment", json={"path": "portrait.png", "points": [[9999, 1]]}, headers=H)
    assert bad.status_code == 400
    del session


@pytest.mark.slow
def test_colorize_preview_runs_the_pipeline_without_writing_outputs(scans: Path, tiny_bundle: Path) -> None:
    from mtcolor_batch.perception.models import load_perception

    profile = load_profile(None, {"device": "cpu", "sampling.steps": 2, "sampling.working_long_side": 256})
    before = sorted(p.relative_to(scans.parent) for p in scans.parent.rglob("*"))
    session = EditorSession(
        scans,
        [f.path for f in discover(scans)],
        profile,
        load_perception(tiny_bundle, "cpu"),
        TOKEN,
        bundle_dir=tiny_bundle,
    )
    client = TestClient(create_app(session, allowed_hosts(PORT)), base_url=BASE)
    assert load(client, "portrait.png")["preview"] is True
    r = client.post("/api/preview", json={"path": "portrait.png"}, headers=H)
    assert r.status_code == 200, r.text
    image = Image.open(io.BytesIO(r.content))
    assert image.size == (384, 512) and image.mode == "RGB"
    assert sorted(p.relative_to(scans.parent) for p in scans.parent.rglob("*")) == before  # nothing written
    none = make_client(scans)[0].post("/api/preview", json={"path": "portrait.png"}, headers=H)
    assert none.status_code == 400 and "--model" in none.json()["error"]


def test_server_binds_loopback_only_and_cli_refuses_bad_input(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mtcolor_batch.cli import app
    from mtcolor_batch.editor.server import bind_loopback

    sock = bind_loopback(0)
    try:
        assert sock.getsockname()[0] == "127.0.0.1"
    finally:
        sock.close()
    runner = CliRunner(env={"MTCOLOR_HOME": str(tmp_path / "home")})
    missing = runner.invoke(app, ["hints", "edit", str(tmp_path / "nope"), "--no-browser"])
    assert missing.exit_code == 2 and "no such file or folder" in missing.output
    (tmp_path / "empty").mkdir()
    empty = runner.invoke(app, ["hints", "edit", str(tmp_path / "empty"), "--no-browser"])
    assert empty.exit_code == 2 and "no scans found" in empty.output


def test_check_of_an_unsaved_painted_mask_shows_only_real_problems(client: TestClient, scans: Path) -> None:
    data = load(client, "portrait.png")
    doc = data["doc"]
    doc["instances"].append(hint(upload="m1", color="navy"))
    result = client.post("/api/check", json={"path": "portrait.png", "doc": doc}, headers=H).json()
    assert result["problems"] == [] and "mask: masks/portrait_hint1_mask.png" in result["yaml"]
    assert result["texts"][1] == "a navy object"
    doc["instances"][1]["color"] = None
    result = client.post("/api/check", json={"path": "portrait.png", "doc": doc}, headers=H).json()
    assert [p["hint"] for p in result["problems"]] == [1] and "neither color nor text" in result["problems"][
        0
    ]["message"]
    assert not (scans / "masks").exists()


def test_the_per_sidecar_hint_cap_is_applied_as_hints_check_does(scans: Path) -> None:
    """``hints.max_sidecar_instances``: the list and the scan show it as a problem, and a save over it
    is refused with ``hints check``'s own line, so the editor never writes what ``run`` would fail."""
    profile = load_profile(None)
    hints = profile.hints.model_copy(update={"max_sidecar_instances": 2})
    profile = profile.model_copy(update={"hints": hints})
    session = EditorSession(scans, [f.path for f in discover(scans)], profile, None, TOKEN)
    client = TestClient(create_app(session, allowed_hosts(PORT)), base_url=BASE)
    sidecar = scans / "street_1910.jpg.yaml"

    data = load(client)
    doc = data["doc"]
    doc["instances"] += [hint(box=[0, 0, 40, 40], color="red"), hint(box=[50, 50, 90, 90], color="blue")]
    before = sidecar.read_bytes()
    r = save(client, data, doc)
    assert r.status_code == 422 and r.json()["saved"] is False
    (problem,) = r.json()["problems"]
    assert "3 instances, over the limit of 2 per sidecar" in problem["text"]
    assert sidecar.read_bytes() == before  # refused: nothing written

    # The same file written by hand: listed with a problem, and the problem shown on load, in the words
    # of `hints check`.
    over = yaml.safe_load(before)
    over["instances"] += [{"box": [0, 0, 40, 40], "color": "red"}, {"box": [50, 50, 90, 90], "color": "blue"}]
    sidecar.write_text(yaml.safe_dump(over), encoding="utf-8")
    listed = {s["path"]: s for s in client.get("/api/scans", headers=H).json()["scans"]}
    assert listed[STREET]["problems"] == 1 and listed["portrait.png"]["problems"] == 0
    checked, _, _ = check_sidecars(scans, 256 * 1024, 2)
    assert [p["text"] for p in load(client)["problems"]] == checked


# -- hostile requests and files (issue 22): one-line 400s, nothing served from outside ------------------


def lenient(session: EditorSession) -> TestClient:
    """A client that turns a server exception into the 500 a browser would get."""
    return TestClient(create_app(session, allowed_hosts(PORT)), base_url=BASE, raise_server_exceptions=False)


def one_line_400(r) -> str:
    assert r.status_code == 400, (r.status_code, r.text[:300])
    message = r.json()["error"]
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize(
    "doc",
    [
        {"instances": 5},
        {"instances": [5]},
        {"instances": [[1, 2]]},
        {"extra": 5, "instances": []},
        {"prompt": ["x"], "instances": []},
        {"seed": {"a": 1}},
        {"instances": [{**hint(box=[0, 0, 5, 5], color="red"), "orig": "x"}]},
        {"instances": [{**hint(color="red"), "upload": ["k"]}]},
        {"instances": [hint(mask="a\0b.png", color="red")]},
        {"instances": [hint(label="a\0b", box=[0, 0, 5, 5], color="red")]},
        {"exclude": ["sky\0"]},
        {"instances": [hint(polygon=[[[[[[[[[[1]]]]]]]]]], color="red")]},
    ],
)
def test_wrong_shapes_nul_and_deep_values_are_one_line_400s(scans: Path, doc: dict) -> None:
    client = lenient(make_client(scans)[1])
    data = load(client)
    before = sha(scans / "street_1910.jpg.yaml")
    one_line_400(client.post("/api/check", json={"path": STREET, "doc": doc}, headers=H))
    one_line_400(save(client, data, doc))
    assert sha(scans / "street_1910.jpg.yaml") == before


def test_a_100k_deep_body_is_a_400(scans: Path) -> None:
    client = lenient(make_client(scans)[1])
    deep = "[" * 100_000 + "]" * 100_000
    body = ('{"path": "street_1910.jpg", "doc": ' + deep + "}").encode()
    for url in ("/api/check", "/api/save", "/api/segment", "/api/preview"):
        r = client.post(url, content=body, headers={**H, "Content-Type": "application/json"})
        assert "nested too deeply" in one_line_400(r), url


def test_token_in_the_query_string_only_for_images(client: TestClient) -> None:
    query = {"token": TOKEN}
    assert client.get("/api/image", params={"path": STREET, **query}).status_code == 200
    for url in ("/api/scans", "/api/colors"):
        assert client.get(url, params=query).status_code == 403, url
    assert client.get("/api/scan", params={"path": STREET, **query}).status_code == 403


def test_one_upload_named_by_many_hints_counts_against_the_mask_cap(scans: Path) -> None:
    from mtcolor_batch.editor.session import MAX_UPLOAD_MASKS

    client = lenient(make_client(scans)[1])
    data = load(client)
    h, w = data["size"]
    mask = np.zeros((h, w), bool)
    mask[5:20, 5:20] = True
    hints = [{**hint(color="red"), "upload": "k"} for _ in range(MAX_UPLOAD_MASKS + 1)]
    r = save(client, data, {**data["doc"], "instances": hints}, uploads={"k": png_data_url(mask)})
    assert f"at most {MAX_UPLOAD_MASKS}" in one_line_400(r)
    assert not (scans / "masks").exists()


def test_a_scan_swapped_for_an_outside_link_after_start_up_is_not_served(scans: Path, tmp_path: Path) -> None:
    client = lenient(make_client(scans)[1])
    secret = tmp_path / "secret.png"
    Image.fromarray(np.full((40, 50), 200, np.uint8)).save(secret)
    (scans / STREET).unlink()
    (scans / STREET).symlink_to(secret)
    for r in (
        client.get("/api/image", params={"path": STREET}, headers=H),
        client.get("/api/scan", params={"path": STREET}, headers=H),
    ):
        assert r.status_code == 404 and "replaced by a link" in r.json()["error"], r.text[:200]


def test_the_editor_picture_carries_one_numbering(scans: Path) -> None:
    """The page numbers hints #1, #2... on the picture; the overlay it shows under them leaves the
    run's ids out of its tags (it used to show both numberings on one picture)."""
    from mtcolor_batch.perception.overlay import render_overlay

    client, session = make_client(scans)
    load(client)
    loaded = session._loaded(STREET)
    assert loaded.instances
    png = client.get("/api/image", params={"path": STREET, "kind": "overlay"}, headers=H).content
    with Image.open(io.BytesIO(png)) as shown:
        pixels = np.asarray(shown.convert("RGB"))
    plain = np.asarray(render_overlay(loaded.scan.luma, loaded.instances, numbered=False))
    ids = np.asarray(render_overlay(loaded.scan.luma, loaded.instances, numbered=True))
    assert (pixels == plain).all() and (pixels != ids).any()


LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n"
    for p, n in zip("abcde", "bcdef", strict=True)
)  # 1,000,000 strings once expanded, from a 300-byte file


def test_an_alias_bomb_sidecar_is_refused_by_the_runs_own_loader(scans: Path) -> None:
    (scans / "street_1910.jpg.yaml").write_text("version: 1\n" + LAUGHS + "instances: []\n")
    client = lenient(make_client(scans)[1])
    r = client.get("/api/scan", params={"path": STREET}, headers=H)
    assert r.status_code == 200 and len(r.content) < 100_000, len(r.content)  # nothing was expanded
    data = r.json()
    assert "alias" in data["doc_error"] and "\n" not in data["doc_error"]
    assert data["problems"] and "alias" in data["problems"][0]["message"]
    listing = client.get("/api/scans", headers=H).json()["scans"]
    assert {s["path"]: s["problems"] for s in listing}[STREET] == 1
    saved = save(client, data, {"instances": [hint(box=[0, 0, 5, 5], color="red")]})
    assert saved.status_code == 422 and "alias" in saved.json()["problems"][0]["message"]


def _listing_within(client: TestClient, seconds: float) -> dict | None:
    """GET /api/scans in a daemon thread: None when it hangs (a FIFO opened for reading blocks)."""
    import threading

    out: dict = {}
    thread = threading.Thread(target=lambda: out.update(r=client.get("/api/scans", headers=H)), daemon=True)
    thread.start()
    thread.join(seconds)
    return None if thread.is_alive() else out


@pytest.mark.slow
def test_a_hostile_sidecar_or_scan_fails_alone_in_the_listing(scans: Path, tmp_path: Path) -> None:
    """A FIFO sidecar hung /api/scans; a directory sidecar or a decompression-bomb scan with a
    sidecar made it a 500 for every scan. Now each counts as that scan's problem."""
    import os

    for name in ("fifo.png", "dir.png", "bomb.png"):
        Image.fromarray(np.full((40, 50), 90, np.uint8)).save(scans / name)
    os.mkfifo(scans / "fifo.png.yaml")
    (scans / "dir.png.yaml").mkdir()
    Image.new("1", (20000, 20000)).save(scans / "bomb.png")  # 400 MP declared, 50 KB on disk
    (scans / "bomb.png.yaml").write_text("version: 1\ninstances:\n  - box: [0, 0, 5, 5]\n    color: red\n")
    client = lenient(make_client(scans)[1])
    got = _listing_within(client, 20)
    assert got is not None, "the listing hung on the FIFO sidecar"
    assert got["r"].status_code == 200, got["r"].text[:300]
    problems = {s["path"]: s["problems"] for s in got["r"].json()["scans"]}
    assert problems["fifo.png"] == problems["dir.png"] == problems["bomb.png"] == 1
    assert problems[STREET] == 0  # the others are listed as before
    fifo = client.get("/api/scan", params={"path": "fifo.png"}, headers=H)
    assert "FIFO" in one_line_400(fifo)


@pytest.mark.slow
def test_a_600_deep_sidecar_is_one_line_not_a_500(scans: Path) -> None:
    (scans / "street_1910.jpg.yaml").write_text("instances:\n  - " + "[" * 600 + "]" * 600 + "\n")
    client = lenient(make_client(scans)[1])
    r = client.get("/api/scan", params={"path": STREET}, headers=H)
    assert r.status_code == 200, r.text[:300]  # the scan opens, showing the problem, like a syntax error
    assert "nesting deeper than" in r.json()["doc_error"] and "\n" not in r.json()["doc_error"]
    assert client.get("/api/scans", headers=H).status_code == 200
    check = client.post("/api/check", json={"path": STREET, "doc": {"instances": []}}, headers=H)
    assert check.status_code == 200 and "nesting deeper than" in check.json()["problems"][0]["message"]
