"""What a job reads before its actors start needs no torch: the run's files (read, hashed and
decoded while torch loads in another thread) and a CPU worker's runtime identity (a probe task
that answers without a second of torch import). The version read from torch's own version.py is
the very string torch reports, so job identities recorded before stay the same."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from regene_ray.run_files import RunFiles
from regene_ray.runtime import runtime_here, runtime_identity, torch_version

REPO = Path(__file__).resolve().parents[1]

READ_IN_A_FRESH_PROCESS = """
import json, sys
from regene_ray.run_files import RunFiles
from regene_ray.runtime import runtime_here
files = RunFiles.read(sys.argv[1])
print(json.dumps({"torch_loaded": "torch" in sys.modules, "runtime": runtime_here("cpu"),
                  "hashes": files.hashes, "codes": files.bank.latents.shape[0]}))
"""


def test_a_run_is_read_and_a_cpu_runtime_reported_without_importing_torch(tiny_run):
    out = subprocess.run([sys.executable, "-c", READ_IN_A_FRESH_PROCESS, str(tiny_run)],
                         cwd=REPO, capture_output=True, text=True, check=True, timeout=120)
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    here = RunFiles.read(tiny_run)
    assert seen["torch_loaded"] is False
    assert seen["runtime"] == {"device": "cpu", "torch": str(torch.__version__)}
    assert seen["hashes"] == here.hashes and seen["codes"] == len(here.bank.ids)


def test_the_runtime_is_the_one_torch_reports():
    assert torch_version() == torch.__version__
    assert runtime_identity("cpu") == runtime_here("cpu") == {"device": "cpu",
                                                              "torch": torch.__version__}
    cuda = runtime_here("cuda:0")
    if torch.cuda.is_available():
        assert cuda["device"] == "cuda" and {"gpu", "cudnn"} <= set(cuda)
    else:
        assert cuda["device"] == "cuda requested, but this torch sees no GPU"


def test_the_version_of_a_torch_still_loading_is_read_from_its_file(monkeypatch):
    """Another thread may be importing torch (jobs/mass_generate.py reads the run meanwhile):
    sys.modules then holds a torch module without __version__ yet."""
    import types

    loading = types.ModuleType("torch")
    loading.__spec__ = torch.__spec__
    monkeypatch.setitem(sys.modules, "torch", loading)
    assert torch_version() == str(torch.__version__)
