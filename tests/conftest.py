"""Shared fixtures: tiny models built locally, never the network."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Tiny models: torch's intra-op threads only add contention on a 2-core runner (measured 20-50x
# slower under load). One thread for this process and every CLI subprocess a test starts; it also
# keeps outputs byte-comparable between the local runner and Ray workers (which use one thread each).
# MTC_TORCH_THREADS overrides the count, to re-run a test (the learning test) at another float
# summation order.
TORCH_THREADS = int(os.environ.get("MTC_TORCH_THREADS", "1"))
os.environ.setdefault("OMP_NUM_THREADS", str(TORCH_THREADS))
os.environ.setdefault("MKL_NUM_THREADS", str(TORCH_THREADS))
# Content Credentials: the generated local signing certificate goes to $XDG_CONFIG_HOME, never
# into the user's own config folder (CLI subprocesses inherit it).
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["XDG_CONFIG_HOME"] = tempfile.mkdtemp(prefix="mtcolor-test-config-")
atexit.register(shutil.rmtree, os.environ["XDG_CONFIG_HOME"], True)

import torch  # noqa: E402

torch.set_num_threads(TORCH_THREADS)


import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _denormals_back_to_default():
    """Loading models flushes denormals for the whole process (core/device.flush_cpu_denormals), as a
    `run` process wants; in this one process every test starts from torch's default again."""
    yield
    torch.set_flush_denormal(False)


# -- perception (engineer "perception") ---------------------------------------------------------


@pytest.fixture(scope="session")
def tiny_perception_dir(tmp_path_factory: pytest.TempPathFactory):
    """A folder with only the tiny random sam/ and detector/ components (seconds to build)."""
    from mtcolor_batch.testing.tiny_perception import write_tiny_perception

    folder = tmp_path_factory.mktemp("tiny-perception")
    write_tiny_perception(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_perception(tiny_perception_dir):
    """The tiny perception models loaded once on CPU (shared: tests must not mutate settings on it)."""
    from mtcolor_batch.perception.models import load_perception

    return load_perception(tiny_perception_dir, "cpu")


# -- model bundle (engineer "engine") -----------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A complete tiny random bundle (real layout, perception included), built once per session.

    Treat it as read-only: tests that tamper with files must copy it first.
    """
    from mtcolor_batch.testing.tiny_sd15 import write_tiny_bundle

    return write_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


@pytest.fixture(scope="module")
def engine(tiny_bundle, request: pytest.FixtureRequest):
    """The engine on the session's tiny bundle (CPU, float32), loaded once per test module.

    A module that sets ``TRAINED_LIKE_SEED = n`` gets its MT-Color modules filled with trained-looking
    weights (``testing.trained_like``, seed n), so PMAM and instance guidance act as in a trained bundle.
    """
    from mtcolor_batch.model.engine import MTColorEngine

    eng = MTColorEngine.load(tiny_bundle, device="cpu")
    seed = getattr(request.module, "TRAINED_LIKE_SEED", None)
    if seed is not None:
        from mtcolor_batch.testing.trained_like import trained_like

        assert trained_like(eng.modules, seed=seed) > 0
    return eng


# -- eval / report (engineer "report") -----------------------------------------------------------
@pytest.fixture(scope="session")
def eval_bundle(tmp_path_factory: pytest.TempPathFactory):
    """A folder holding only a tiny random clip/ component: what eval needs for CLIP scores."""
    from mtcolor_batch.testing.tiny_clip import write_tiny_clip

    bundle = tmp_path_factory.mktemp("eval-bundle")
    write_tiny_clip(bundle / "clip")
    return bundle


@pytest.fixture(scope="session")
def eval_out(tmp_path_factory: pytest.TempPathFactory, eval_bundle):
    """A run's output folder (4 outputs, 2 failed rows) written with the runner's own writers."""
    from eval_fixture import build_out_dir

    return build_out_dir(tmp_path_factory.mktemp("eval-out"), eval_bundle)


# -- Ray executor (engineer "cluster") -----------------------------------------------------------
@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance with 2 CPUs for the whole session (starting Ray costs seconds).

    Ray is an optional extra: without it these tests skip on a developer machine but FAIL in CI
    (CI=true), so a CI image that lost the extra cannot pass silently.
    """
    import importlib.util
    import logging

    if importlib.util.find_spec("ray") is None:
        message = "ray is not installed: pip install -e '.[ray]' (Ray executor tests)"
        if os.environ.get("CI", "").lower() in ("true", "1", "yes"):
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # test Ray on loopback only
    import ray

    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level=logging.WARNING)
    yield ray
    ray.shutdown()
