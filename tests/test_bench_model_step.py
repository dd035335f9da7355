"""``bench/model_step.py`` composes one-call figures the way the sampler runs its steps."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from model_step import Row, parse_row  # noqa: E402


def _row(refresh: int) -> Row:
    phases = {
        "setup": (0.0, 1.0, 0),
        "first": (0.0, 100.0, 2),
        "branch": (0.0, 1000.0, 3),
        "fused": (0.0, 10.0, 1),
    }
    return Row("mt", "mt", 0, 0, 0, float("nan"), phases, instances=4, refresh=refresh)


@pytest.mark.parametrize(
    ("refresh", "cpu"),
    [
        (1, 1 + 100 + 3 * 1000 + 16 * 10),  # K = 4: the branches run at every branch step
        (2, 1 + 100 + 1 * 1000 + 18 * 10),  # at steps 0 and 2; 1 and 3 are global-only steps
        (3, 1 + 100 + 1 * 1000 + 18 * 10),  # at steps 0 and 3
        (4, 1 + 100 + 19 * 10),  # once
    ],
)
def test_refresh_runs_the_branches_at_every_nth_branch_step(refresh: int, cpu: float) -> None:
    assert _row(refresh).at(20, 0.2).cpu == cpu  # alpha 0.2 of 20 steps: K = 4


def test_rows_take_refresh_as_a_fifth_field() -> None:
    assert parse_row("trained:4:64", 2) == ("trained", 4, 64, "own", 2)
    assert parse_row("trained:4:64:global:1", 2) == ("trained", 4, 64, "global", 1)
    with pytest.raises(SystemExit):
        parse_row("trained:4:64:mine", 2)
