"""``bench/scan_cost.py --smoke``: the whole-scan benchmark's code path on the tiny bundle (one
measured profile, one composed), ending in the line the issue fixes. Figures are not checked."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"


@pytest.mark.slow
def test_smoke_prints_the_table_and_the_cpu_line(
    tiny_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import scan_cost
    finally:
        sys.path.remove(str(BENCH))
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    scan_cost.main(
        ["--smoke", "--profiles", "cpu,default", "--bundle", str(bundle), "--workdir", str(tmp_path)]
    )
    lines = capsys.readouterr().out.strip().splitlines()
    table = [line.split() for line in lines if line.split()[:1] in (["cpu"], ["default"], ["unit"])]
    rows = {cells[0]: cells for cells in table if cells[1] != "profile:"}
    assert rows["cpu"][1:6] == ["measured", "lcm", "4", "1.0", "lcm"]
    assert rows["default"][1:6] == ["composed", "ddim", "20", "7.5", "none"]
    assert rows["unit"][1:3] == ["measured", "ddim"]
    assert re.fullmatch(r"cpu profile: \d+\.\d\dx one plain 20-step 512² SD\+ControlNet image", lines[-1])
