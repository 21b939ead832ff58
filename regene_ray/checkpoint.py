"""Saving and loading models: config JSON beside the weights, atomic writes, safe loading."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from regene_ray.storage import atomic_write, atomic_write_bytes

MODEL_CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.pt"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt or does not fit the model it is loaded into."""


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary name, then rename, so a crash never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """torch.load with weights_only=True and an error that says what to do."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist; train it with jobs/train.py or point --run at a "
            "complete run folder"
        )
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and size errors all mean the same thing to a user
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a regene-ray checkpoint ({type(e).__name__}); "
            "delete it and retrain with jobs/train.py, or point --run at an intact run folder"
        ) from e


def save_model(model: torch.nn.Module, config: dict, directory: str | Path) -> None:
    """Write `directory/config.json` and `directory/weights.pt`."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(state, directory / WEIGHTS_FILE)
    atomic_write_bytes(directory / MODEL_CONFIG_FILE, json.dumps(config, indent=2, sort_keys=True) + "\n")


def read_config(directory: str | Path) -> dict:
    path = Path(directory) / MODEL_CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{path} is missing: {directory} is not a saved model folder; train one with "
            "jobs/train.py"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is corrupt ({e}); retrain with jobs/train.py") from e


def load_weights(model: torch.nn.Module, directory: str | Path) -> torch.nn.Module:
    """Load `directory/weights.pt` into `model`, strictly."""
    path = Path(directory) / WEIGHTS_FILE
    state = safe_torch_load(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {path} does not match its config.json ({str(e).splitlines()[0]}); "
            "the folder was mixed from two runs: retrain with jobs/train.py"
        ) from e
    return model


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
