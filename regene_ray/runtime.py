"""The runtime that fixes a generation's bytes besides its inputs: the device kind and the torch
version (CPU and CUDA convs round differently), and on CUDA the GPU model and the cuDNN version
(kernels differ between GPU generations and cuDNN releases). A mass generation job records the
runtime its workers report (regene_ray.cluster.start_probe), so a resume on another kind is
refused instead of mixing bytes.

Torch is imported only where a GPU is asked about. For any other device the torch version is
read from the `torch/version.py` that torch's build generates, which `torch.__version__` itself
comes from: a probe worker then answers in a fraction of a second instead of spending a second of
CPU importing torch beside the job's actors (BENCHMARKS.md section 12). Package metadata is no
substitute: it drops the build's local tag ("2.14.1" for "2.14.1+cu130"), and the recorded
string is part of every existing job's identity.
"""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path


def torch_version() -> str:
    """torch.__version__, without importing torch where it is not loaded yet (see above)."""
    loaded = getattr(sys.modules.get("torch"), "__version__", None)  # None while it loads
    if loaded is not None:
        return str(loaded)
    try:
        spec = importlib.util.find_spec("torch")
    except ValueError:  # a module in sys.modules without a spec
        spec = None
    if spec is not None and spec.origin:
        try:
            tree = ast.parse(Path(spec.origin).with_name("version.py").read_text())
        except (OSError, SyntaxError, ValueError):
            tree = None
        for node in tree.body if tree else ():
            if (isinstance(node, ast.Assign) and [getattr(t, "id", None) for t in node.targets]
                    == ["__version__"] and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)):
                return node.value.value
    import torch  # an unusual install: ask torch itself

    return str(torch.__version__)


def runtime_identity(device_kind: str) -> dict:
    """What besides the spec and checkpoints changes output bytes, as this process sees it."""
    if device_kind != "cuda":
        return {"device": device_kind, "torch": torch_version()}
    import torch

    runtime = {"device": device_kind, "torch": str(torch.__version__)}
    if torch.cuda.is_available():
        runtime |= {"gpu": torch.cuda.get_device_name(0),
                    "cudnn": torch.backends.cudnn.version()}
    return runtime


def runtime_here(device: str) -> dict:
    """This process's runtime identity for `device` ('cpu', 'cuda', 'cuda:1' ...); what a
    worker asked for CUDA reports when its torch sees no GPU says so."""
    kind = str(device).split(":")[0]
    if kind == "cuda":
        import torch

        if not torch.cuda.is_available():
            return {"device": "cuda requested, but this torch sees no GPU",
                    "torch": str(torch.__version__)}
    return runtime_identity(kind)
