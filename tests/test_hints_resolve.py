"""Hint resolution: each form gives the right region; unsafe mask paths and bad files fail alone."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.draw import polygon as draw_polygon

from mtcolor_batch.core.errors import HintError, UserError
from mtcolor_batch.core.types import Box, Instance, Scan
from mtcolor_batch.hints.colors import parse_color
from mtcolor_batch.hints.mask_files import resolve_mask_path
from mtcolor_batch.hints.resolve import PromptSegmenter, ResolvedHints, resolve_hints
from mtcolor_batch.hints.schema import load_sidecar

H, W = 60, 80
MAX = 64 * 1024


def make_scan(root: Path, name: str = "photo.png") -> Scan:
    source = root / name
    luma = np.linspace(0.0, 1.0, H * W, dtype=np.float32).reshape(H, W)
    Image.fromarray((luma * 255).astype(np.uint8)).save(source)
    return Scan(source=source, relpath=name, luma=luma, format="PNG", mode="L", bit_depth=8, sha256="0" * 64)


def box_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def auto(iid: int, label: str, box: Box) -> Instance:
    x0, y0, x1, y1 = box
    mask = np.ones((y1 - y0, x1 - x0), dtype=bool)
    return Instance(id=iid, label=label, text=f"a {label}", mask=mask, box=box, source="auto", score=0.5)


class FakeSegmenter:
    """Deterministic stand-in with Segmenter's prompt API: box -> box shrunk by 1 px; clicks -> 5x5."""

    def __init__(self, empty: bool = False) -> None:
        self.empty = empty
        self.box_calls: list[list[Box]] = []
        self.point_calls: list[list[tuple[float, float]]] = []

    def segment_boxes(self, luma: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        self.box_calls.append(list(boxes))
        if self.empty:
            return [np.zeros(luma.shape, dtype=bool) for _ in boxes]
        return [box_mask(x0 + 1, y0 + 1, x1 - 1, y1 - 1) for x0, y0, x1, y1 in boxes]

    def segment_points(
        self, luma: np.ndarray, points: Sequence[tuple[float, float]], labels: Sequence[int] | None = None
    ) -> tuple[np.ndarray, float]:
        self.point_calls.append(list(points))
        if self.empty:
            return np.zeros(luma.shape, dtype=bool), 0.1
        x, y = (int(v) for v in points[0])
        return box_mask(x - 2, y - 2, x + 3, y + 3), 0.9


def resolve(
    tmp_path: Path,
    text: str,
    autos: Sequence[Instance] = (),
    segmenter: object = None,
    scan: Scan | None = None,
) -> ResolvedHints:
    scan = scan or make_scan(tmp_path)
    path = tmp_path / (scan.source.name + ".yaml")
    path.write_text(text, encoding="utf-8")
    sidecar = load_sidecar(path, max_bytes=MAX, scan_size=scan.size)
    return resolve_hints(sidecar, path, scan, list(autos), segmenter, tmp_path, None)  # type: ignore[arg-type]


def sidecar_instances(result: ResolvedHints) -> list[Instance]:
    return [i for i in result.instances if i.source == "sidecar"]


def test_fake_and_real_segmenters_satisfy_the_protocol() -> None:
    from mtcolor_batch.perception.segmenter import Segmenter

    assert isinstance(FakeSegmenter(), PromptSegmenter)
    assert hasattr(Segmenter, "segment_boxes") and hasattr(Segmenter, "segment_points")


def test_no_sidecar_passes_autos_through(tmp_path: Path) -> None:
    autos = [auto(1, "tram", (0, 0, 10, 10))]
    result = resolve_hints(None, None, make_scan(tmp_path), autos, None, tmp_path, None)
    assert result.instances == autos and result.warnings == [] and result.prompt is None


def test_label_binds_every_detection_and_builds_text(tmp_path: Path) -> None:
    autos = [
        auto(1, "tram", (40, 0, 50, 10)),
        auto(2, "Tram", (0, 0, 10, 10)),
        auto(3, "person", (20, 20, 30, 30)),
    ]
    result = resolve(
        tmp_path, "prompt: a street\nseed: 7\ninstances:\n  - label: tram\n    color: dark green\n", autos
    )
    assert result.prompt == "a street" and result.seed == 7 and result.warnings == []
    by_id = {i.id: i for i in result.instances}
    assert set(by_id) == {1, 2, 3}
    for iid in (1, 2):
        assert by_id[iid].source == "sidecar"
        assert by_id[iid].color == parse_color("dark green")
        np.testing.assert_array_equal(
            by_id[iid].full((H, W)), autos[iid - 1].full((H, W))
        )  # region kept as detected
    assert by_id[1].text == "a dark green tram" and by_id[2].text == "a dark green Tram"
    assert by_id[3].source == "auto" and by_id[3].color is None


def test_label_index_counts_from_the_left(tmp_path: Path) -> None:
    autos = [
        auto(1, "tram", (40, 0, 50, 10)),
        auto(2, "tram", (0, 0, 10, 10)),
        auto(3, "tram", (20, 0, 30, 10)),
    ]
    result = resolve(tmp_path, "instances:\n  - label: tram\n    index: 2\n    color: red\n", autos)
    hinted = sidecar_instances(result)
    assert [i.id for i in hinted] == [3]  # x0=20 is the second from the left
    assert hinted[0].text == "a red tram"


def test_label_with_own_text_and_no_colour(tmp_path: Path) -> None:
    autos = [auto(1, "person", (0, 0, 10, 10))]
    result = resolve(
        tmp_path, 'instances:\n  - label: person\n    text: "a woman in a field grey coat"\n', autos
    )
    (hinted,) = sidecar_instances(result)
    assert hinted.text == "a woman in a field grey coat" and hinted.color is None


def test_unmatched_hints_are_warnings_not_silent(tmp_path: Path) -> None:
    autos = [auto(1, "tram", (0, 0, 10, 10)), auto(2, "person", (20, 20, 30, 30))]
    text = (
        "instances:\n"
        "  - label: bus\n"  # 2
        "    color: red\n"
        "  - label: tram\n"  # 4
        "    index: 3\n"
        "    color: red\n"
    )
    result = resolve(tmp_path, text, autos)
    assert sidecar_instances(result) == []
    assert len(result.warnings) == 2
    assert result.warnings[0].startswith(
        "photo.png.yaml:2 (instance 1): no 'bus' was detected (detected: person, tram)"
    )
    assert (
        result.warnings[1] == "photo.png.yaml:4 (instance 2): index 3 but 1 'tram' detected; hint not applied"
    )


def test_exclude_removes_autos_by_label(tmp_path: Path) -> None:
    autos = [
        auto(1, "sky", (0, 0, 80, 10)),
        auto(2, "Sky", (0, 10, 80, 20)),
        auto(3, "tram", (0, 30, 10, 40)),
    ]
    result = resolve(tmp_path, "exclude: [sky]\ninstances:\n  - label: sky\n    color: blue\n", autos)
    assert [i.id for i in result.instances] == [3]
    assert "label 'sky' is also listed under exclude" in result.warnings[0]
    assert result.exclude == ["sky"]


def test_box_without_segmenter_is_the_box_with_a_warning(tmp_path: Path) -> None:
    result = resolve(tmp_path, "instances:\n  - box: [10, 5, 30, 25]\n    label: coat\n    color: navy\n")
    (inst,) = result.instances
    np.testing.assert_array_equal(inst.full((H, W)), box_mask(10, 5, 30, 25))
    assert inst.box == (10, 5, 30, 25) and inst.label == "coat" and inst.text == "a navy coat"
    assert result.warnings == [
        "photo.png.yaml:2 (instance 1): no segmentation model, so the whole box is used as the region"
    ]


def test_box_with_segmenter_uses_its_mask(tmp_path: Path) -> None:
    seg = FakeSegmenter()
    result = resolve(
        tmp_path, 'instances:\n  - box: [10.5, 5, 30, 25]\n    color: "#8b0000"\n', segmenter=seg
    )
    (inst,) = result.instances
    assert seg.box_calls == [[(10, 5, 30, 25)]]
    np.testing.assert_array_equal(inst.full((H, W)), box_mask(11, 6, 29, 24))
    assert inst.box == (11, 6, 29, 24) and inst.text == "a dark red object" and result.warnings == []


def test_box_where_segmenter_finds_nothing_falls_back(tmp_path: Path) -> None:
    result = resolve(
        tmp_path,
        "instances:\n  - box: [10, 5, 30, 25]\n    color: red\n",
        segmenter=FakeSegmenter(empty=True),
    )
    np.testing.assert_array_equal(result.instances[0].full((H, W)), box_mask(10, 5, 30, 25))
    assert "found nothing in the box" in result.warnings[0]


def test_points_go_to_the_segmenter(tmp_path: Path) -> None:
    seg = FakeSegmenter()
    result = resolve(
        tmp_path, "instances:\n  - points: [[40, 30], [42, 31]]\n    color: navy\n", segmenter=seg
    )
    (inst,) = result.instances
    assert seg.point_calls == [[(40.0, 30.0), (42.0, 31.0)]]
    np.testing.assert_array_equal(inst.full((H, W)), box_mask(38, 28, 43, 33))
    assert inst.score == pytest.approx(0.9)


def test_points_without_segmenter_warn(tmp_path: Path) -> None:
    result = resolve(tmp_path, "instances:\n  - points: [[40, 30]]\n    color: navy\n")
    assert result.instances == []
    assert "points need the segmentation model" in result.warnings[0]
    result = resolve(
        tmp_path, "instances:\n  - points: [[40, 30]]\n    color: navy\n", segmenter=FakeSegmenter(True)
    )
    assert result.instances == [] and "found nothing at the clicked points" in result.warnings[0]


def test_polygon_is_exact(tmp_path: Path) -> None:
    corners = [[10, 10], [50, 12], [45, 40], [12, 35]]
    result = resolve(tmp_path, f"instances:\n  - polygon: {corners}\n    color: lab(60, 10, 40)\n")
    (inst,) = result.instances
    expected = np.zeros((H, W), dtype=bool)
    rr, cc = draw_polygon([p[1] for p in corners], [p[0] for p in corners], shape=(H, W))
    expected[rr, cc] = True
    np.testing.assert_array_equal(inst.full((H, W)), expected)
    assert inst.color is not None and inst.color.lab == (60.0, 10.0, 40.0)
    assert inst.text == "a camel object"  # notations get the nearest colour name in the text


def test_mask_file_is_exact(tmp_path: Path) -> None:
    (tmp_path / "masks").mkdir()
    want = box_mask(5, 5, 25, 15) | box_mask(50, 40, 70, 55)
    Image.fromarray(want.astype(np.uint8) * 255).save(tmp_path / "masks" / "coat.png")
    result = resolve(tmp_path, "instances:\n  - mask: masks/coat.png\n    color: brown\n")
    np.testing.assert_array_equal(result.instances[0].full((H, W)), want)
    assert result.instances[0].box == (5, 5, 70, 55)


def test_mask_file_alpha_channel(tmp_path: Path) -> None:
    want = box_mask(5, 5, 25, 15)
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., :3] = 255  # white everywhere: only alpha says where the region is
    rgba[..., 3] = want * 255
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "coat.png")
    result = resolve(tmp_path, "instances:\n  - mask: coat.png\n    color: brown\n")
    np.testing.assert_array_equal(result.instances[0].full((H, W)), want)


def test_mask_file_size_must_match(tmp_path: Path) -> None:
    Image.new("L", (W // 2, H // 2), 255).save(tmp_path / "small.png")
    with pytest.raises(HintError) as info:
        resolve(tmp_path, "version: 1\ninstances:\n  - mask: small.png\n    color: brown\n")
    assert info.value.line == 3
    assert f"is 40x30 px but the scan is {W}x{H}" in info.value.message


def test_empty_mask_file_warns(tmp_path: Path) -> None:
    Image.new("L", (W, H), 0).save(tmp_path / "blank.png")
    result = resolve(tmp_path, "instances:\n  - mask: blank.png\n    color: brown\n")
    assert result.instances == [] and "is empty" in result.warnings[0]


# -- unsafe mask paths --------------------------------------------------------------------------------------


@pytest.fixture
def tree(tmp_path: Path) -> tuple[Path, Path]:
    """scan_root = tmp/scans (with a sub folder); a mask outside it at tmp/secret.png."""
    root = tmp_path / "scans"
    (root / "sub").mkdir(parents=True)
    Image.new("L", (W, H), 255).save(tmp_path / "secret.png")
    Image.new("L", (W, H), 255).save(root / "inside.png")
    return root, tmp_path / "secret.png"


def resolve_in(root: Path, mask_line: str) -> ResolvedHints:
    scan = make_scan(root / "sub")
    path = root / "sub" / "photo.png.yaml"
    path.write_text(f"version: 1\ninstances:\n  - mask: {mask_line}\n    color: brown\n", encoding="utf-8")
    sidecar = load_sidecar(path, max_bytes=MAX, scan_size=scan.size)
    return resolve_hints(sidecar, path, scan, [], None, root, None)


def test_dotdot_inside_the_tree_is_fine(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    assert resolve_in(root, "../inside.png").instances[0].mask.all()


def test_dotdot_escape_rejected(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(HintError) as info:
        resolve_in(root, "../../secret.png")
    assert info.value.line == 3
    assert "mask path '../../secret.png' uses '..' to leave the scan folder" in info.value.message
    # the mask value (column 11), where `hints check` points too, not the item's first key
    assert str(info.value).startswith(f"{root / 'sub' / 'photo.png.yaml'}:3:11: instance 1:")


def test_absolute_path_rejected(tree: tuple[Path, Path]) -> None:
    root, secret = tree
    with pytest.raises(HintError, match="is absolute") as info:
        resolve_in(root, str(secret))
    assert info.value.line == 3
    with pytest.raises(HintError, match="is absolute"):
        resolve_mask_path(str(secret), root / "sub" / "photo.png.yaml", root)
    with pytest.raises(HintError, match="is absolute"):
        resolve_mask_path("C:\\masks\\coat.png", root / "sub" / "photo.png.yaml", root)


def test_symlink_out_rejected_and_inside_allowed(tree: tuple[Path, Path]) -> None:
    root, secret = tree
    os.symlink(secret, root / "sub" / "link_out.png")
    os.symlink(root / "inside.png", root / "sub" / "link_in.png")
    os.symlink(secret.parent, root / "sub" / "dir_out")
    with pytest.raises(HintError, match="is a symlink to .*secret.png, outside the scan folder"):
        resolve_in(root, "link_out.png")
    with pytest.raises(HintError, match="outside the scan folder"):
        resolve_in(root, "dir_out/secret.png")
    assert resolve_in(root, "link_in.png").instances[0].mask.all()


def test_check_sidecar_applies_mask_rules_with_scan_root(tree: tuple[Path, Path]) -> None:
    """`hints check` can report unsafe or wrong mask files with line:column before a run."""
    from mtcolor_batch.hints.schema import check_sidecar

    root, _ = tree
    Image.new("L", (10, 10), 255).save(root / "sub" / "tiny.png")
    path = root / "sub" / "photo.png.yaml"
    path.write_text(
        "instances:\n"
        "  - mask: ../../secret.png\n"  # 2
        "    color: red\n"
        "  - mask:   tiny.png\n"  # 4
        "    color: red\n"
        "  - mask: nope.png\n"  # 6
        "    color: red\n"
        "  - mask: ../inside.png\n"  # 8: fine
        "    color: red\n"
    )
    assert check_sidecar(path, max_bytes=MAX) == []  # without scan_root: syntax and schema only
    found = check_sidecar(path, max_bytes=MAX, scan_size=(H, W), scan_root=root)
    assert [(e.line, e.column) for e in found] == [(2, 11), (4, 13), (6, 11)]
    assert "uses '..' to leave the scan folder" in found[0].message
    assert f"is 10x10 px but the scan is {W}x{H}" in found[1].message
    assert "not found" in found[2].message


def test_missing_mask_file(tree: tuple[Path, Path]) -> None:
    root, _ = tree
    with pytest.raises(HintError, match="mask file 'nope.png' not found"):
        resolve_in(root, "nope.png")


# -- coordinates, duplicates, and the batch going on --------------------------------------------------------


def test_out_of_image_box_at_resolve_time(tmp_path: Path) -> None:
    """load_sidecar without scan_size accepts it; resolve knows the scan and refuses it with the line."""
    scan = make_scan(tmp_path)
    path = tmp_path / "photo.png.yaml"
    path.write_text("version: 1\ninstances:\n  - box: [10, 10, 200, 20]\n    color: red\n")
    sidecar = load_sidecar(path, max_bytes=MAX)
    with pytest.raises(HintError) as info:
        resolve_hints(sidecar, path, scan, [], None, tmp_path, None)
    assert info.value.line == 3 and "goes outside the 80x60 scan" in info.value.message


def test_both_sidecars_warning_reaches_the_result(tmp_path: Path) -> None:
    scan = make_scan(tmp_path)
    (tmp_path / "photo.yaml").write_text("version: 1\n")
    result = resolve(tmp_path, "version: 1\n", scan=scan)
    assert result.warnings == [
        "both photo.png.yaml and photo.yaml exist; using photo.png.yaml (photo.yaml is ignored)"
    ]


def test_bad_sidecars_fail_alone(tmp_path: Path) -> None:
    """Traversal, alias bombs and bad colours fail their own file; the other files still resolve."""
    root = tmp_path / "scans"
    root.mkdir()
    (tmp_path / "secret.png").write_bytes(b"")
    sidecars = {
        "a.png": "instances:\n  - box: [0, 0, 10, 10]\n    color: red\n",
        "b.png": "instances:\n  - mask: ../secret.png\n    color: red\n",
        "c.png": 'a: &a ["x","x"]\nb: &b [*a,*a]\n',
        "d.png": "instances:\n  - label: tram\n    color: navvy\n",
        "e.png": "instances:\n  - polygon: [[0,0],[10,0],[10,10]]\n    color: navy\n",
    }
    done, failed = [], {}
    for name, text in sidecars.items():
        scan = make_scan(root, name)
        path = root / f"{name}.yaml"
        path.write_text(text)
        try:
            sidecar = load_sidecar(path, max_bytes=MAX, scan_size=scan.size)
            resolve_hints(sidecar, path, scan, [], None, root, None)
            done.append(name)
        except UserError as exc:
            failed[name] = str(exc)
    assert done == ["a.png", "e.png"]
    assert "uses '..' to leave the scan folder" in failed["b.png"]
    assert "c.png.yaml:2:8: YAML alias '*a' is not allowed" in failed["c.png"]
    assert "d.png.yaml:3:12: instance 1: unknown colour 'navvy'" in failed["d.png"]


# -- the real SAM port (tiny random weights): the API fits, masks come back at scan size --------------------


@pytest.fixture(scope="module")
def tiny_segmenter(tmp_path_factory: pytest.TempPathFactory) -> object:
    torch = pytest.importorskip("torch")
    from mtcolor_batch.perception.models import load_sam
    from mtcolor_batch.testing.tiny_perception import write_tiny_sam

    folder = write_tiny_sam(tmp_path_factory.mktemp("sam") / "sam")
    return load_sam(folder, torch.device("cpu"), long_side=64)


def test_real_segmenter_box_and_points(tmp_path: Path, tiny_segmenter: object) -> None:
    result = resolve(
        tmp_path,
        "instances:\n  - box: [10, 5, 30, 25]\n    color: red\n  - points: [[40, 30]]\n    color: navy\n",
        segmenter=tiny_segmenter,
    )
    # Random weights: the masks' content is arbitrary, but every hint is either an instance with a
    # bool mask over its box inside the scan or a warning (never silently dropped).
    assert len(result.instances) + len(result.warnings) >= 2
    for inst in result.instances:
        x0, y0, x1, y1 = inst.box
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        assert inst.mask.shape == (y1 - y0, x1 - x0) and inst.mask.dtype == bool and inst.mask.any()


class SpillingSegmenter(FakeSegmenter):
    """SAM as it behaves on real scans: the mask for a box reaches past it (shadows, the kerb)."""

    def segment_boxes(self, luma: np.ndarray, boxes: Sequence[Box]) -> list[np.ndarray]:
        return [box_mask(max(0, x0 - 6), max(0, y0 - 3), x1 + 5, y1 + 4) for x0, y0, x1, y1 in boxes]


def test_box_hint_mask_is_clipped_to_the_drawn_box(tmp_path: Path) -> None:
    result = resolve(
        tmp_path, "instances:\n  - box: [20, 10, 40, 30]\n    color: navy\n", segmenter=SpillingSegmenter()
    )
    (inst,) = result.instances
    assert inst.box == (20, 10, 40, 30)
    np.testing.assert_array_equal(inst.full((H, W)), box_mask(20, 10, 40, 30))


@pytest.mark.parametrize(
    ("label", "text"),
    [
        ("man", "a man in navy"),  # a person's colour is what they wear: never "a navy man"
        ("old woman", "an old woman in navy"),
        ("people", "people in navy"),
        ("coat", "a navy coat"),  # things keep the paper's 'a {color} {label}'
        ("tram", "a navy tram"),
    ],
)
def test_default_text_reads_like_english_for_people(label: str, text: str) -> None:
    from mtcolor_batch.hints.resolve import default_text
    from mtcolor_batch.hints.schema import parse_sidecar_text

    sidecar, problems = parse_sidecar_text(
        f"version: 1\ninstances:\n  - label: {label}\n    color: navy\n", Path("x.yaml")
    )
    assert sidecar is not None and not problems
    assert default_text(sidecar.instances[0], label) == text
