"""The template sidecar ``hints init`` writes: what was detected, as commented-out hints to fill in."""

from __future__ import annotations

from mtcolor_batch.core.types import Box, Instance


def fmt_box(box: Box) -> str:
    """``[x0, y0, x1, y1]``: the sidecar's box notation."""
    return "[" + ", ".join(str(int(v)) for v in box) + "]"


def template_text(scan_name: str, size: tuple[int, int], instances: list[Instance], note: str | None) -> str:
    """The template sidecar: valid as written (no active hints), one commented block per instance.

    Each block becomes an active hint by removing the leading ``# `` of its lines and filling in
    ``color:``; the box is the detected one, so the hint is the same region the run would find.
    """
    h, w = size
    lines = [
        f"# Hints for {scan_name} ({w}x{h} px), written by `mtcolor-batch hints init`.",
        "# To pin a colour: uncomment an instance below (remove '# ' from its lines) and fill in color:",
        '#   a colour name (navy, brick red), "#rrggbb" in quotes, rgb(r, g, b) or lab(L, a, b).',
        "# Add regions of your own with box: [x0, y0, x1, y1], points: [[x, y]], polygon: or mask:.",
        "# Then run `mtcolor-batch hints check` on this folder.",
        "version: 1",
        '# prompt: "a street in 1910, overcast"',
        "# seed: 1234",
        "instances:",
    ]
    if note:
        lines.append(f"  # ({note})")
    for inst in instances:
        lines += [
            f"  # [{inst.id}] {inst.label}: box {fmt_box(inst.box)}, {inst.area} px, score {inst.score:.2f}",
            f"  # - label: {inst.label}",
            f"  #   box: {fmt_box(inst.box)}",
            "  #   color: ",
        ]
    lines.append("# exclude: [sky]   # detected labels not to treat as instances")
    return "\n".join(lines) + "\n"


def folder_template_text(
    folder_name: str, rows: list[tuple[str, int, int]], scans: int, top: int = 20
) -> str:
    """The template ``mtcolor-folder.yaml`` ``hints survey`` writes: valid as written (no active rule),
    the ``top`` most frequent labels as commented rules, ready to be given a colour once.

    ``rows`` are (label, scans it was found in, instances), most frequent first.
    """
    lines = [
        f"# Folder rules for {folder_name}/ and every folder below it,",
        f"# written by `mtcolor-batch hints survey` from {scans} scan(s).",
        "# A rule colours its label in every scan it covers:",
        "#   uncomment a rule (remove '# ' from its lines) and fill in color: and/or text:",
        '#   (a colour name such as navy or brick red, "#rrggbb" in quotes, rgb(r, g, b) or lab(L, a, b)).',
        "# A mtcolor-folder.yaml in a subfolder wins over this one for the labels it names, and a",
        "# scan's own sidecar (photo.jpg.yaml) wins over both. Regions (box, points, polygon, mask)",
        "# belong in a scan's sidecar, where a region with only label: takes the rule's colour.",
        "# Then run `mtcolor-batch hints check` on this folder.",
        "version: 1",
        '# prompt: "a street in 1910, overcast"',
        '# negative_prompt: "sepia, monochrome"',
        "# exclude: [sky]   # detected labels not to treat as instances",
        "instances:",
    ]
    if not rows:
        lines.append("  # (nothing was detected; add rules by label: - label: tram)")
    for label, in_scans, instances in rows[:top]:
        lines += [
            f"  # {label}: found in {in_scans} of {scans} scan(s), {instances} time(s)",
            f"  # - label: {label}",
            "  #   color: ",
        ]
    if len(rows) > top:
        lines.append(f"  # ({len(rows) - top} rarer label(s) left out: see the survey's table)")
    return "\n".join(lines) + "\n"
