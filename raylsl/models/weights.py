"""A checkpoint's tensors read one at a time: what scoring a model block by block needs.

A model directory holds its weights as one ``model.safetensors`` or as shards named by
``model.safetensors.index.json``. `CheckpointWeights` reads any tensor by its model parameter name
(memory-mapped for that read only: only that tensor's bytes are read, and kept while it is used),
so one block's weights load without the rest.
Checkpoint keys are the parameter names, or the same without (or with) the base model's prefix
(a ``BertModel`` checkpoint loaded into ``BertForMultipleChoice``: ``encoder.layer.0...`` for
``bert.encoder.layer.0...``), as ``from_pretrained`` matches them.

`checkpoint_fingerprint` names a checkpoint's content without reading all of it: every tensor's
name, dtype and shape and a few of its rows (a score cache key, computed on any node in seconds,
even for a 70B checkpoint).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from raylsl.errors import ModelError

SINGLE = "model.safetensors"
INDEX = "model.safetensors.index.json"
SAMPLED_ROWS = 8
"""Rows of each tensor the fingerprint reads (evenly spaced, first and last included)."""


class CheckpointWeights:
    """The safetensors tensors of a model directory, by parameter name."""

    def __init__(self, directory: str | Path, prefix: str = ""):
        """
        Args:
            directory: the model directory.
            prefix: the base model's attribute name (``model``, ``bert``), which checkpoints of
                the bare base model leave out of their keys.

        Raises:
            ModelError: the directory holds no safetensors weights.
        """
        self.directory = Path(directory)
        self.prefix = prefix
        self.files = _tensor_files(self.directory)

    def key(self, name: str) -> str:
        """The checkpoint key of parameter ``name``.

        Raises:
            ModelError: the checkpoint has no tensor for it.
        """
        candidates = [name]
        if self.prefix and name.startswith(self.prefix + "."):
            candidates.append(name[len(self.prefix) + 1:])
        elif self.prefix:
            candidates.append(f"{self.prefix}.{name}")
        for key in candidates:
            if key in self.files:
                return key
        raise ModelError(f"the checkpoint in {self.directory} has no tensor for {name} (looked for "
                         f"{' or '.join(candidates)}): it cannot be read one block at a time; set calibration.stream=off")

    def read(self, name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """Parameter ``name`` at ``dtype`` on ``device``, reading only its bytes. The file is mapped
        for this one read: a mapping kept open would keep every page read so far resident."""
        from safetensors import safe_open

        key = self.key(name)
        with safe_open(str(self.directory / self.files[key]), framework="pt", device="cpu") as handle:
            return handle.get_tensor(key).to(device=device, dtype=dtype)


def _tensor_files(directory: Path) -> dict[str, str]:
    """Checkpoint key -> the safetensors file that holds it."""
    if (directory / INDEX).is_file():
        return dict(json.loads((directory / INDEX).read_text())["weight_map"])
    if (directory / SINGLE).is_file():
        from safetensors import safe_open

        with safe_open(str(directory / SINGLE), framework="pt") as handle:
            return {key: SINGLE for key in handle.keys()}
    raise ModelError(f"{directory} holds no {SINGLE} or {INDEX}: only safetensors checkpoints can be read one block "
                     f"at a time; set calibration.stream=off")


def has_safetensors(directory: str | Path) -> bool:
    return (Path(directory) / INDEX).is_file() or (Path(directory) / SINGLE).is_file()


def checkpoint_fingerprint(directory: str | Path) -> str:
    """A hash of the checkpoint's content: the config (less where and by which transformers it was
    saved) and every tensor's key, dtype, shape and `SAMPLED_ROWS` rows (a checkpoint in another
    format: the bytes of its weight files)."""
    from safetensors import safe_open

    directory = Path(directory)
    digest = hashlib.sha256()
    config = json.loads((directory / "config.json").read_text()) if (directory / "config.json").is_file() else {}
    fields = {k: v for k, v in config.items() if k not in ("_name_or_path", "transformers_version")}
    digest.update(json.dumps(fields, sort_keys=True).encode())
    if not has_safetensors(directory):
        for path in sorted(p for p in directory.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".gguf")):
            digest.update(path.name.encode())
            digest.update(file_sha256(path))
        return digest.hexdigest()[:16]
    files = _tensor_files(directory)
    for file in sorted(set(files.values())):
        with safe_open(str(directory / file), framework="pt") as handle:
            for key in sorted(handle.keys()):
                part = handle.get_slice(key)
                shape = part.get_shape()
                digest.update(f"{key}:{part.get_dtype()}:{shape}".encode())
                samples = [handle.get_tensor(key).reshape(1)] if not shape else [
                    part[row:row + 1] for row in sorted({i * (shape[0] - 1) // (SAMPLED_ROWS - 1)
                                                         for i in range(SAMPLED_ROWS)})]
                for sample in samples:
                    digest.update(sample.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def file_sha256(path: Path, chunk: int = 1 << 24) -> bytes:
    """The SHA-256 of a file, read in chunks (model shards are GBs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.digest()
