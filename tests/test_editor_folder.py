"""The editor's "Folder rules" panel: the nearest mtcolor-folder.yaml is loaded, checked with the run's
validator, grown by "Add rule" with comments kept, saved only on the version it loaded, and the
canvas data marks which instances a folder rule coloured."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient
from test_editor_api import BASE, EXAMPLES, PORT, TOKEN, H, hint, load

from mtcolor_batch.core.config import load_profile
from mtcolor_batch.core.types import Instance
from mtcolor_batch.editor.app import allowed_hosts, create_app
from mtcolor_batch.editor.folder_panel import add_rule_text
from mtcolor_batch.editor.session import EditorSession
from mtcolor_batch.scan.discover import discover

NEAR = "version: 1\ninstances:\n  # trams of the 1910 line\n  - label: tram\n    color: dark green\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    import shutil

    root = tmp_path / "scans"
    shutil.copytree(EXAMPLES, root)
    (root / "harbour" / "mtcolor-folder.yaml").write_text(NEAR, encoding="utf-8")
    return root


def client_for(root: Path, perception: object | None = None) -> TestClient:
    session = EditorSession(root, [f.path for f in discover(root)], load_profile(None), perception, TOKEN)
    return TestClient(create_app(session, allowed_hosts(PORT)), base_url=BASE)


def folder(client: TestClient, path: str) -> dict:
    r = client.get("/api/folder", params={"path": path}, headers=H)
    assert r.status_code == 200, r.text
    return r.json()


def test_the_nearest_rules_file_is_loaded_or_offered(tree: Path) -> None:
    client = client_for(tree)
    near = folder(client, "harbour/harbour_16bit.tif")
    assert near["path"] == "harbour/mtcolor-folder.yaml" and near["exists"] and near["text"] == NEAR
    assert near["etag"] == hashlib.sha256(NEAR.encode()).hexdigest()
    assert near["covers"] == 1 and near["applying"] == ["harbour/mtcolor-folder.yaml"]
    assert near["problems"] == [] and near["rules"][0]["label"] == "tram" and near["rules"][0]["line"] == 4
    assert near["rules"][0]["swatch"].startswith("#")
    top = folder(client, "portrait.png")
    assert top["path"] == "mtcolor-folder.yaml" and not top["exists"] and top["etag"] == "none"
    assert top["covers"] == 3  # the root's file would cover every scan


def test_check_and_add_rule_keep_comments_and_report_locations(tree: Path) -> None:
    client = client_for(tree)
    r = client.post(
        "/api/folder/check",
        json={"path": "harbour/harbour_16bit.tif", "text": NEAR, "add": {"label": "coat", "color": "navy"}},
        headers=H,
    ).json()
    assert r["problems"] == [] and [x["label"] for x in r["rules"]] == ["tram", "coat"]
    assert "# trams of the 1910 line" in r["text"] and r["text"].endswith(
        '  - label: "coat"\n    color: "navy"\n'
    )
    bad = client.post(
        "/api/folder/check",
        json={"path": "harbour/harbour_16bit.tif", "text": NEAR + "    box: [0, 0, 4, 4]\n"},
        headers=H,
    ).json()
    assert [(p["line"], p["column"]) for p in bad["problems"]] == [(6, 5)]
    assert "box is not allowed in a folder rules file" in bad["problems"][0]["message"]


def test_add_rule_text_goes_at_the_end_of_the_instances_block() -> None:
    text = "version: 1\ninstances: []\nprompt: a town\n"
    assert (
        add_rule_text(text, "tram", "red")
        == 'version: 1\ninstances:\n  - label: "tram"\n    color: "red"\nprompt: a town\n'
    )
    assert (
        add_rule_text("", "tram", "", "a tram")
        == 'version: 1\ninstances:\n  - label: "tram"\n    text: "a tram"\n'
    )


def test_save_checks_the_version_and_the_rules_and_recolours_the_canvas(tree: Path) -> None:
    client = client_for(tree)
    rel = "harbour/harbour_16bit.tif"
    data = folder(client, rel)
    target = tree / "harbour" / "mtcolor-folder.yaml"
    stale = client.post("/api/folder/save", json={"path": rel, "etag": "0" * 64, "text": NEAR}, headers=H)
    assert stale.status_code == 409 and target.read_text(encoding="utf-8") == NEAR
    refused = client.post(
        "/api/folder/save",
        json={"path": rel, "etag": data["etag"], "text": "instances:\n  - colour: red\n"},
        headers=H,
    )
    assert refused.status_code == 422 and refused.json()["problems"][0]["line"] == 2
    assert target.read_text(encoding="utf-8") == NEAR
    text = NEAR.replace("dark green", "maroon")
    ok = client.post("/api/folder/save", json={"path": rel, "etag": data["etag"], "text": text}, headers=H)
    assert ok.status_code == 200 and ok.json()["saved"] and target.read_text(encoding="utf-8") == text
    assert ok.json()["etag"] == hashlib.sha256(text.encode()).hexdigest()
    # a new file at the root: created on save, from the "none" ETag
    top = folder(client, "portrait.png")
    new = client.post(
        "/api/folder/save",
        json={"path": "portrait.png", "etag": top["etag"], "text": "exclude: [sky]\n"},
        headers=H,
    )
    assert (
        new.status_code == 200
        and (tree / "mtcolor-folder.yaml").read_text(encoding="utf-8") == "exclude: [sky]\n"
    )


def test_the_canvas_says_which_instances_a_folder_rule_coloured(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mtcolor_batch.stages.instances as stage

    def one_tram(scan, perception, settings, exclude=(), extra=(), room=None):  # type: ignore[no-untyped-def]
        mask = np.ones((60, 60), dtype=bool)
        return [Instance(1, "tram", "a tram", mask, (2, 3, 62, 63), source="auto", score=0.9)]

    monkeypatch.setattr(stage, "perceive", one_tram)
    client = client_for(tree)
    harbour = load(client, "harbour/harbour_16bit.tif")
    (tram,) = [i for i in harbour["instances"] if i["label"] == "tram"]
    assert tram["hint_from"] == "harbour/mtcolor-folder.yaml:4" and tram["hint_color"] == "dark green"
    portrait = load(client, "portrait.png")
    assert [i["hint_from"] for i in portrait["instances"] if i["label"] == "tram"] == [None]


def test_a_label_only_region_needs_a_rule_in_the_sidecar_editor(tree: Path) -> None:
    client = client_for(tree)
    data = load(client, "harbour/harbour_16bit.tif")
    doc = data["doc"]
    doc["instances"].append(hint(box=[1, 1, 9, 9], label="tram"))
    ok = client.post("/api/check", json={"path": data["path"], "doc": doc}, headers=H).json()
    assert ok["problems"] == []
    doc["instances"][-1]["label"] = "bus"
    bad = client.post("/api/check", json={"path": data["path"], "doc": doc}, headers=H).json()
    assert any("no folder rule colours 'bus'" in p["message"] for p in bad["problems"])
