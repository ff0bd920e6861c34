"""``raylsl upload-model DIR URI``: a local model directory into storage, content-addressed.

The directory goes to ``URI/<digest>/``, where the digest hashes every file's path and content:
the same weights always land in the same place, so uploading them again transfers nothing. The
manifest (`raylsl.models.registry.MANIFEST`: each file's size and SHA-256) is written last, so a
model directory in storage without it is an upload that did not finish, and the next upload of
the same directory completes it. Runs name the model by the URI this returns
(``model=s3://bucket/models/<digest>``); each node copies it into its cache once
(`raylsl.models.registry.stored_directory`), and the driver reads only its ``config.json``.
"""

from __future__ import annotations

from pathlib import Path

from raylsl.errors import ConfigError, ModelError
from raylsl.models.registry import MANIFEST, directory_manifest
from raylsl.storage import Storage


def upload_model(directory: str | Path, uri: str) -> tuple[str, int]:
    """Uploads ``directory`` to ``URI/<digest>/`` unless it is there already.

    Returns:
        The model's URI, and the bytes uploaded (0 when the same content was there).

    Raises:
        ConfigError: ``directory`` is not a model directory.
        StorageError: the storage cannot be reached or written.
    """
    directory = Path(directory).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"{directory} is not a directory: give the model directory (config.json, weights, tokenizer)")
    if not (directory / "config.json").is_file():
        raise ModelError(f"{directory} has no config.json: give a model directory as save_pretrained writes it")
    manifest = directory_manifest(directory)
    target = Storage(uri).child(manifest["digest"])
    if target.is_file(MANIFEST):
        return target.uri, 0
    Storage(uri).check_writable()
    for rel in manifest["files"]:
        target.upload(directory / rel, rel)
    target.write_json(MANIFEST, manifest)
    return target.uri, sum(entry["size"] for entry in manifest["files"].values())
