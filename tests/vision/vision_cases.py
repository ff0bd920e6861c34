"""The vision tests' cases. Image+text data written by the tests: coloured squares (each a little
off its colour, so no two are alike), asked about as chat rows ("What colour is this?" -> "red")
and as multiple-choice rows in ScienceQA's shape (question, choices, answer, image)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from PIL import Image

from raylsl.config import load_config

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}
QUESTION = "What colour is this?"


def write_colours(root: Path, n: int = 96, seed: int = 0) -> tuple[Path, Path]:
    """``root/chat.jsonl`` and ``root/mc.jsonl`` over the same ``n`` squares in ``root/img/``."""
    rng = random.Random(seed)
    (root / "img").mkdir(parents=True, exist_ok=True)
    chat, mc = root / "chat.jsonl", root / "mc.jsonl"
    with chat.open("w") as chat_rows, mc.open("w") as mc_rows:
        for i in range(n):
            name = rng.choice(list(COLOURS))
            rgb = tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in COLOURS[name])
            Image.new("RGB", (20 + rng.randint(0, 20), 28), rgb).save(root / "img" / f"{i}.png")
            image = f"img/{i}.png"
            chat_rows.write(json.dumps({"messages": [
                {"role": "user", "content": [{"type": "image", "path": image}, {"type": "text", "text": QUESTION}]},
                {"role": "assistant", "content": name}], "answer": name}) + "\n")
            mc_rows.write(json.dumps({"question": QUESTION, "choices": list(COLOURS),
                                      "answer": list(COLOURS).index(name), "image": image}) + "\n")
    return chat, mc


def vision_config(task: Path, output_dir: Path, **overrides):
    """A tiny-llava run on ``task`` (multiple-choice rows read with ScienceQA's field names)."""
    base = {"model": "tiny-llava", "task.name": str(task), "task.context_field": "question",
            "task.label_field": "answer", "output_dir": str(output_dir), "data.test_size": 16, "data.val_size": 8,
            "train.steps": 24, "train.batch_size": 8, "train.warmup_steps": 2, "train.lr": 1e-2,
            "train.checkpoint_every": 0, "train.eval_batch_size": 16, "lora.dropout": 0.0, "task.max_new_tokens": 6}
    return load_config(None, {**base, **overrides})
