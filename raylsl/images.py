"""Images in task rows: read once when the task loads, checked, and carried as their files' bytes.

An example holds its images as encoded bytes (PNG, JPEG, ...), so the images travel wherever the
example does (a Ray Train worker's plan, a sweep's stored examples) and the selectors' score cache
keys on their content. A chat row places them in its messages; a multiple-choice row has one (or a
list) in its image field:

    {"messages": [{"role": "user", "content": [{"type": "image", "path": "img/1.png"},
                                               {"type": "text", "text": "What colour is this?"}]},
                  {"role": "assistant", "content": "red"}]}
    {"question": "...", "choices": [...], "answer": 1, "image": "img/2.png"}   (ScienceQA's shape)

Paths are relative to the data file. An image part without a path takes the row's next image from
its image field (``task.image_field``): how HF datasets with an image column (a decoded image, or
``{"bytes": ..., "path": ...}``) pair images with messages.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Iterator

from raylsl.errors import DataError

IMAGE = "image"
"""A chat part's type for an image; text parts are ``{"type": "text", "text": ...}``."""


def read_image(value: Any, where: str, base: Path | None) -> bytes:
    """One image's encoded bytes, checked to decode.

    Args:
        value: a path (relative to ``base``), an HF dataset's image (a PIL image, or a mapping with
            ``bytes`` or ``path``), or bytes.
        where: what errors name (``file:line``).
        base: the directory relative paths start from (the data file's); None: the working directory.

    Raises:
        DataError: the file is missing or is not an image, naming ``where`` and the image.
    """
    if isinstance(value, dict):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, str):
        path = (base / value) if base is not None and not Path(value).is_absolute() else Path(value)
        if not path.is_file():
            raise DataError(f"{where}: image {path} does not exist; image paths are relative to the data file")
        data, name = path.read_bytes(), str(path)
    elif isinstance(value, (bytes, bytearray)):
        data, name = bytes(value), "in the row"
    elif hasattr(value, "save"):  # a decoded PIL image (HF datasets' Image feature)
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    else:
        raise DataError(f"{where}: an image must be a path, got {type(value).__name__}")
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as image:
            image.verify()
    except Exception as exc:  # PIL raises many types for files that are not images
        raise DataError(f"{where}: image {name} cannot be read as an image ({exc})") from None
    return data


def row_images(row: dict, field: str, where: str, base: Path | None) -> list[bytes]:
    """The images in a row's image field (one, a list, or none)."""
    value = row.get(field)
    values = value if isinstance(value, (list, tuple)) else [] if value is None else [value]
    return [read_image(v, where, base) for v in values]


def chat_content(content: Any, index: int, role: str, where: str, base: Path | None,
                 spare: Iterator[bytes], images: list[bytes]) -> str | tuple[str | int, ...]:
    """A message's content: its string, or its parts with each image replaced by its index in
    ``images`` (where it is appended; a part without a path takes the next of ``spare``). Parts
    that hold no image are joined into one string, with newlines between them.

    Raises:
        DataError: a malformed part, an image outside a user (or system) turn, or an image part
            without a path when the row's image field has no image left.
    """
    if isinstance(content, str):
        return content
    bad = f"{where}: messages[{index}].content must be a string or a list of {{'type': 'text', 'text': ...}} and " \
          f"{{'type': 'image', 'path': ...}} parts"
    if not isinstance(content, list) or not content:
        raise DataError(bad)
    parts: list[str | int] = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            parts.append(part["text"])
        elif kind == IMAGE:
            if role == "assistant":
                raise DataError(f"{where}: messages[{index}] is an assistant turn with an image; images go in the "
                                f"user's turns (the model reads them, it does not write them)")
            if part.get("path") is not None:
                images.append(read_image(part["path"], where, base))
            else:
                found = next(spare, None)
                if found is None:
                    raise DataError(f"{where}: messages[{index}] has an image part without a 'path', and the row's "
                                    f"image field has no image left for it (set task.image_field=)")
                images.append(found)
            parts.append(len(images) - 1)
        else:
            raise DataError(bad)
    return tuple(parts) if any(isinstance(p, int) for p in parts) else "\n".join(parts)


def decode(data: bytes):
    """An example's image as an RGB PIL image (what image processors take)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")
