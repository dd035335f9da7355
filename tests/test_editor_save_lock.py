"""Two ``hints edit`` servers on one folder: a save's etag check and its write are one step across
processes, so two saves of the same version never both report "saved" (one edit would be lost)."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from mtcolor_batch.core.config import load_profile
from mtcolor_batch.editor.session import ConflictError, EditorSession
from mtcolor_batch.scan.discover import discover

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "scans"
STREET = "street_1910.jpg"


@pytest.mark.slow
def test_two_servers_never_both_save_the_same_version(tmp_path: Path) -> None:
    root = tmp_path / "scans"
    shutil.copytree(EXAMPLES, root)
    files = [f.path for f in discover(root)]
    # Two sessions, as two servers: each has its own thread lock; flock locks of two open files
    # exclude each other even within one process, as they do between processes.
    first, second = (EditorSession(root, files, load_profile(None), None, f"t{i}") for i in (1, 2))
    page = first.load(STREET)
    doc_a = {**page["doc"], "prompt": "from the first server"}
    doc_b = {**page["doc"], "prompt": "from the second server"}
    results: dict[str, object] = {}

    def second_saves() -> None:
        try:
            results["second"] = second.save(STREET, page["etag"], doc_b, {})
        except ConflictError as exc:
            results["second"] = exc

    real_validate = first._validate
    other = threading.Thread(target=second_saves)

    def validate_while_the_other_saves(*args, **kwargs):  # the other server's save lands mid-save
        if not other.is_alive() and "second" not in results:
            other.start()
            other.join(1.0)  # it finishes within the second unless a lock holds it back
        return real_validate(*args, **kwargs)

    first._validate = validate_while_the_other_saves  # type: ignore[method-assign]
    try:
        results["first"] = first.save(STREET, page["etag"], doc_a, {})
    except ConflictError as exc:
        results["first"] = exc
    other.join(10.0)
    saved = [k for k, v in results.items() if isinstance(v, dict) and v.get("saved")]
    assert len(saved) == 1, results
    loser = "second" if saved == ["first"] else "first"
    assert isinstance(results[loser], ConflictError)
    winner = "from the first server" if saved == ["first"] else "from the second server"
    assert winner in (root / f"{STREET}.yaml").read_text()
