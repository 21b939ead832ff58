"""Shared fixtures: tiny seeded models and a tiny trained run folder on the embedded digits."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def run_job(name: str, *args, check: bool = True, timeout: float = 600
            ) -> subprocess.CompletedProcess:
    """`python jobs/<name>.py ARGS` as a user runs it, from the repository root; with `check`,
    a non-zero exit fails the test with the job's stderr."""
    p = subprocess.run([sys.executable, str(REPO / "jobs" / f"{name}.py"), *map(str, args)],
                       capture_output=True, text=True, cwd=REPO, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr[-3000:])
    return p


def load_job(name: str):
    """jobs/<name>.py as a module, to call its parser, config builder or main() in this
    process."""
    spec = importlib.util.spec_from_file_location(f"{name}_job", REPO / "jobs" / f"{name}.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    return job


def tiny_run_config(**overrides):
    """A digits run that trains in seconds on 2 CPU cores."""
    from regene_ray.run import smoke_run_config

    cfg = smoke_run_config()
    for k, v in overrides.items():
        setattr(cfg, k, v)
    return cfg


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A complete run folder (classifier, decoder, bank, thresholds) trained on digits."""
    from regene_ray.run import train_run

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("runs") / "tiny"
    train_run(tiny_run_config(), out, device="cpu")
    return out


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The MNIST data root ($REGENE_DATA_ROOT or ../shared/data); skips when absent."""
    root = Path(os.environ.get("REGENE_DATA_ROOT", SHARED_DATA))
    if not (root / "MNIST" / "raw" / "train-images-idx3-ubyte").is_file():
        pytest.skip(f"MNIST files not under {root}; set REGENE_DATA_ROOT")
    return root


# What a skipped test needed, told by its reason. CI names what it provides in REGENE_REQUIRE
# (.ci/run: MNIST, Chromium, root for tmpfs mounts, user namespaces); a test skipped for
# want of one of those fails the run instead of passing quietly.
CAPABILITIES = {
    "mnist": re.compile(r"MNIST files not under"),
    "chromium": re.compile(r"chromium not installed"),
    "tmpfs": re.compile(r"mount a tmpfs"),
    "namespaces": re.compile(r"namespaces \(unshare"),
    "ray-cli": re.compile(r"ray CLI is not installed"),
    "gpu": re.compile(r"CUDA GPU"),
}
_SKIPPED: list[tuple[str, str, str]] = []  # (capability or "", test id, reason)


def pytest_runtest_logreport(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        reason = report.longrepr[2].removeprefix("Skipped: ")
        cap = next((c for c, pattern in CAPABILITIES.items() if pattern.search(reason)), "")
        _SKIPPED.append((cap, report.nodeid, reason))


def _required() -> set[str]:
    return {c.strip() for c in os.environ.get("REGENE_REQUIRE", "").split(",") if c.strip()}


def pytest_terminal_summary(terminalreporter):
    if not _SKIPPED:
        return
    terminalreporter.section("skipped tests, by what they need")
    for cap, nodeid, reason in sorted(_SKIPPED):
        mark = "  <- required here (REGENE_REQUIRE)" if cap in _required() else ""
        terminalreporter.write_line(f"[{cap or 'other'}] {nodeid}: {reason}{mark}")


def pytest_sessionfinish(session, exitstatus):
    missing = sorted({cap for cap, _, _ in _SKIPPED if cap in _required()})
    if missing and exitstatus == 0:
        session.exitstatus = 1  # tests this machine is set up to run were skipped
        print(f"\nFAILED: tests skipped for want of {', '.join(missing)}, which "
              "REGENE_REQUIRE says this machine provides")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def ray_cluster():
    """A private local Ray (2 CPUs, no dashboard) for one test module."""
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=200 * 1024**2, include_dashboard=False,
             log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
