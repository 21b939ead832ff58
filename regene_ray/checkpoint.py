"""Saving and loading models: config JSON beside the weights, atomic writes, safe loading."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import torch

from regene_ray.config import (  # the torch-free half of a saved model folder
    MODEL_CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    from_dict,
    parse_config,
)
from regene_ray.storage import atomic_write, atomic_write_bytes


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary name, then rename, so a crash never leaves half a file."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def safe_torch_load(source: str | Path | bytes, map_location: Any = "cpu", *,
                    name: str | None = None) -> Any:
    """torch.load with weights_only=True, of a file or of its bytes (a run read from object
    storage), and an error that names `name` (default: the path) and says what to do."""
    name = name or str(source)
    if not isinstance(source, bytes) and not Path(source).is_file():
        raise CheckpointError(
            f"checkpoint {name} does not exist; train it with jobs/train.py or point --run at a "
            "complete run folder"
        )
    try:
        return torch.load(io.BytesIO(source) if isinstance(source, bytes) else Path(source),
                          map_location=map_location, weights_only=True)
    except Exception as e:  # pickle, zip and size errors all mean the same thing to a user
        raise CheckpointError(
            f"checkpoint {name} is corrupt or not a regene-ray checkpoint ({type(e).__name__}); "
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
    return parse_config(path.read_bytes(), str(path))


def load_state(model: torch.nn.Module, source: str | Path | bytes, name: str) -> torch.nn.Module:
    """Load a state dict (a weights.pt file or its bytes) into `model`, strictly."""
    state = safe_torch_load(source, name=name)
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {name} holds {type(state).__name__}, not a state dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise CheckpointError(
            f"checkpoint {name} does not match its config.json ({str(e).splitlines()[0]}); "
            "the folder was mixed from two runs: retrain with jobs/train.py"
        ) from e
    return model


def load_weights(model: torch.nn.Module, directory: str | Path) -> torch.nn.Module:
    """Load `directory/weights.pt` into `model`, strictly."""
    path = Path(directory) / WEIGHTS_FILE
    return load_state(model, path, str(path))


def model_from_files(model_cls: type, config_cls: type, config: dict,
                     weights: str | Path | bytes, where: str,
                     map_location: Any = "cpu") -> torch.nn.Module:
    """Rebuild a saved model from its config dict and its weights (a file or its bytes);
    `where` is the model's folder as the user named it, for messages."""
    cfg = from_dict(config_cls, config, source=f"{where}/{MODEL_CONFIG_FILE}")
    return load_state(model_cls(cfg), weights, f"{where}/{WEIGHTS_FILE}").to(map_location).eval()


def load_model(model_cls: type, config_cls: type, directory: str | Path,
               map_location: Any = "cpu") -> torch.nn.Module:
    """Rebuild a model saved with save_model from `directory` (config.json + weights.pt)."""
    return model_from_files(model_cls, config_cls, read_config(directory),
                            Path(directory) / WEIGHTS_FILE, str(directory), map_location)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
