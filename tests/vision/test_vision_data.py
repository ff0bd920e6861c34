"""Image rows: chat messages with image parts and multiple-choice rows with an image are read with
their images' bytes; every mistake is one error naming the file and line."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image
from vision_cases import QUESTION, vision_config

from raylsl.config import DataSettings, TaskSettings
from raylsl.data import GenExample, MCExample, example_from_record, example_record, load_task, read_examples
from raylsl.errors import ConfigError, DataError
from raylsl.plan import build_plan
from raylsl.selectors.runner import examples_fingerprint

MC = {"context_field": "question", "label_field": "answer"}


def _rows(path, *rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _chat(image: dict) -> dict:
    return {"messages": [{"role": "user", "content": [image, {"type": "text", "text": QUESTION}]},
                         {"role": "assistant", "content": "red"}]}


def test_chat_and_multiple_choice_rows_carry_their_images_bytes(colours):
    chat, mc = colours
    first = (chat.parent / "img" / "0.png").read_bytes()
    example = read_examples(TaskSettings(name=str(chat)))[0]
    assert isinstance(example, GenExample) and example.format == "chat" and example.images == (first,)
    assert example.messages[0] == ("user", (0, QUESTION))  # the image's place among the parts
    question = read_examples(TaskSettings(name=str(mc), **MC))[0]
    assert isinstance(question, MCExample) and question.images == (first,) and len(question.choices) == 4
    for row in (example, question):  # a sweep stores its examples as JSON
        assert example_from_record(json.loads(json.dumps(example_record(row)))) == row


def test_an_image_part_without_a_path_takes_the_rows_image_field(colours, tmp_path):
    image = str(colours[0].parent / "img" / "1.png")
    data = _rows(tmp_path / "hf_shape.jsonl", {**_chat({"type": "image"}), "images": [image]})
    example = read_examples(TaskSettings(name=str(data), image_field="images"))[0]
    assert example.images == ((colours[0].parent / "img" / "1.png").read_bytes(),)


def test_an_hf_datasets_image_column_is_read(colours, tmp_path):
    datasets = pytest.importorskip("datasets")
    image = str(colours[0].parent / "img" / "2.png")
    rows = datasets.Dataset.from_dict({"question": [QUESTION], "choices": [["red", "blue"]], "answer": [0],
                                       "image": [image]}).cast_column("image", datasets.Image())
    rows.to_parquet(str(tmp_path / "rows.parquet"))
    (example,) = read_examples(TaskSettings(name=str(tmp_path / "rows.parquet"), **MC))  # decoded: a PIL image
    assert Image.open(io.BytesIO(example.images[0])).convert("RGB").getpixel((3, 3)) == \
        Image.open(image).convert("RGB").getpixel((3, 3))


@pytest.mark.parametrize("row, message", [
    (_chat({"type": "image", "path": "missing.png"}), r"rows\.jsonl:2: image .*missing\.png does not exist"),
    (_chat({"type": "image", "path": "broken.png"}), r"rows\.jsonl:2: image .*broken\.png cannot be read as an image"),
    (_chat({"type": "image"}), r"rows\.jsonl:2: messages\[0\] has an image part without a 'path'"),
    ({**_chat({"type": "text", "text": "hi"}), "image": "ok.png"}, r"rows\.jsonl:2: the row's 'image' has more images"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": [
        {"type": "image", "path": "ok.png"}]}]}, r"rows\.jsonl:2: messages\[1\] is an assistant turn with an image"),
    ({"question": "q", "choices": ["a", "b"], "answer": 0, "image": "missing.png"},
     r"rows\.jsonl:2: image .*missing\.png does not exist"),
])
def test_a_missing_or_unreadable_image_is_one_error_naming_file_and_line(colours, tmp_path, row, message):
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "ok.png").write_bytes((colours[0].parent / "img" / "0.png").read_bytes())
    first = _chat({"type": "image", "path": "ok.png"}) if "messages" in row else \
        {"question": "q", "choices": ["a", "b"], "answer": 0, "image": "ok.png"}
    data = _rows(tmp_path / "rows.jsonl", first, row)
    with pytest.raises(DataError, match=message) as caught:
        load_task(TaskSettings(name=str(data), **MC), DataSettings(test_size=1, val_size=0))
    assert "\n" not in str(caught.value)


def test_the_calibration_fingerprint_reads_the_images_content(colours):
    examples = read_examples(TaskSettings(name=str(colours[0])))[:4]
    repainted = [examples[0].__class__(**{**examples[0].__dict__, "images": (examples[1].images[0],)}), *examples[1:]]
    assert examples_fingerprint(examples) == examples_fingerprint(list(examples))
    assert examples_fingerprint(repainted) != examples_fingerprint(examples)


def test_a_text_model_refuses_a_task_with_images(colours, tmp_path):
    with pytest.raises(ConfigError, match=r"has images, and model tiny-llama reads text only .*model.kind=vlm"):
        build_plan(vision_config(colours[0], tmp_path, model="tiny-llama"), "x", "", fit=False)
