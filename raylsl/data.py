"""Tasks: loading, validation and deterministic train/validation/test splits.

A multiple-choice task becomes a list of `MCExample` (context, choices, label); a generative one
(instruction, chat or completion data, or plain text) a list of `GenExample`. A file's format is
found from its first row's fields (or forced with ``task.format``):

    mc          {"context": ..., "choices": [...], "label": 0}   (field names: task.*_field)
    completion  {"prompt": ..., "completion": ...}
    alpaca      {"instruction": ..., "input": ..., "output": ...}  (Stanford Alpaca's prompt)
    chat        {"messages": [{"role": ..., "content": ...}, ...]}  (the tokenizer's chat template)
    text        {"text": ...}   (language modelling: every token is a target)

Chat and multiple-choice rows may carry images, for vision-language models: image parts in a
user turn's content, or the row's ``task.image_field`` (`raylsl.images`).

Every generative row may carry ``answer``, a reference answer. Sources:
    catalog: ``sarcasm`` (28.6k headlines, 2-way), ``quartz`` (3.9k, 2-way), ``socialiqa``
        (2.2k, 3-way), read straight from the ``evals==3.0.1.post1`` wheel's zip;
    generated math (``reasoning-gym``, offline, deterministic): ``arithmetic`` (sums of 2-3
        numbers of 1-2 digits, worked step by step) and ``gsm_symbolic`` (GSM8K-style word
        problems with their step-by-step solutions), both ending in GSM8K's ``#### N``;
    files: ``.jsonl`` read here line by line (errors name file and line), ``.json``/``.csv``/
        ``.parquet`` through HF ``datasets``;
    ``hf:NAME[:CONFIG]``: an HF hub dataset, where the hub is reachable.
"""

from __future__ import annotations

import base64
import json
import random
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch

from raylsl.config import DataSettings, TaskSettings, TrainSettings
from raylsl.errors import DataError
from raylsl.fetch import fetch_wheel
from raylsl.images import chat_content, row_images


@dataclass(frozen=True)
class MCExample:
    context: str
    choices: tuple[str, ...]
    label: int
    images: tuple[bytes, ...] = ()
    """Encoded images the context shows (before its text), for vision-language models."""


@dataclass(frozen=True)
class GenExample:
    """A generative example: what the model reads and what it learns to write.

    ``completion`` rows (and ``alpaca`` rows, rendered with Alpaca's prompt) hold ``prompt`` and
    ``completion``; ``chat`` rows hold ``messages`` as (role, content) pairs, every assistant turn a
    target; ``text`` rows hold ``text``, every token a target. A message with images has parts as
    its content: text strings, and for each image its index in ``images``."""

    format: str
    prompt: str = ""
    completion: str = ""
    messages: tuple[tuple[str, str | tuple[str | int, ...]], ...] = ()
    text: str = ""
    answer: str | None = None
    images: tuple[bytes, ...] = ()
    """Encoded images the messages show, in order."""


GENERATIVE_FORMATS = ("completion", "alpaca", "chat", "text")
ALPACA_PROMPT = ("Below is an instruction that describes a task{with_input}. Write a response that appropriately "
                 "completes the request.\n\n### Instruction:\n{instruction}\n\n{input_block}### Response:\n")
"""Stanford Alpaca's prompt (with and without an input), as LLaMA-Factory's and axolotl's
``alpaca`` templates render it for base models."""


@dataclass(frozen=True)
class TaskSplits:
    """Disjoint splits of one task. Selection and tuning may read train and validation only."""

    name: str
    train: list
    validation: list
    test: list

    @property
    def generative(self) -> bool:
        """Instruction, chat, completion or text data (`GenExample`), not multiple choice."""
        return bool(self.train) and isinstance(self.train[0], GenExample)

    @property
    def has_images(self) -> bool:
        """Some example shows an image (the task needs a vision-language model)."""
        return any(ex.images for split in (self.train, self.validation, self.test) for ex in split)


def load_task(task: TaskSettings, data: DataSettings) -> TaskSplits:
    """Loads a task and splits it with ``data.seed``.

    Raises:
        DataError: unknown name, missing file, malformed row, or too few examples for the split.
    """
    examples = read_examples(task, data)
    return split_examples(task.name, examples, data)


def example_record(example) -> dict[str, Any]:
    """An example as plain JSON values (a sweep stores its task's examples in its storage), its
    images base64-encoded."""
    images = [base64.b64encode(image).decode("ascii") for image in example.images]
    if isinstance(example, GenExample):
        return {"kind": "gen", "format": example.format, "prompt": example.prompt, "completion": example.completion,
                "messages": [list(m) for m in example.messages], "text": example.text, "answer": example.answer,
                "images": images}
    return {"kind": "mc", "context": example.context, "choices": list(example.choices), "label": example.label,
            "images": images}


def example_from_record(record: dict[str, Any]):
    images = tuple(base64.b64decode(image) for image in record.get("images", ()))
    if record.get("kind") == "gen":
        messages = tuple((role, content if isinstance(content, str) else tuple(content))
                         for role, content in record["messages"])
        return GenExample(record["format"], record["prompt"], record["completion"], messages, record["text"],
                          record["answer"], images)
    return MCExample(record["context"], tuple(record["choices"]), record["label"], images)


def read_examples(task: TaskSettings, data: DataSettings | None = None) -> list:
    """Every example of a task, in a fixed order (``data`` sizes a generated task)."""
    name = task.name
    if name in CATALOG:
        return _read_catalog(name)
    if name in GENERATED:
        return generate_math(name, task, data or DataSettings())
    if name.startswith("hf:"):
        return _read_hf(name[3:], task)
    path = Path(name).expanduser()
    if path.suffix in (".jsonl", ".json", ".csv", ".parquet") or path.exists():
        if not path.is_file():
            raise DataError(f"data file {path} does not exist; check the path in task.name")
        if path.suffix == ".jsonl":
            return _read_jsonl(path, task)
        return _read_with_datasets(path, task)
    raise DataError(f"unknown task '{name}'. Use one of {', '.join(sorted({**CATALOG, **GENERATED}))}, a path to a "
                    f".jsonl/.json/.csv/.parquet file, or hf:DATASET_NAME.")


def split_examples(name: str, examples: list[MCExample], data: DataSettings) -> TaskSplits:
    need = data.test_size + data.val_size + 1
    if len(examples) < need:
        raise DataError(f"task '{name}' has {len(examples)} examples but data.test_size + data.val_size "
                        f"+ 1 = {need}; lower data.test_size or data.val_size")
    order = list(range(len(examples)))
    random.Random(data.seed).shuffle(order)
    test = [examples[i] for i in order[:data.test_size]]
    val = [examples[i] for i in order[data.test_size:need - 1]]
    train = [examples[i] for i in order[need - 1:]]
    if data.train_size is not None:
        train = train[:data.train_size]
    return TaskSplits(name, train, val, test)


def row_format(row: dict, task: TaskSettings) -> str | None:
    """The format a row's fields say it is in (None: none fits)."""
    if task.context_field in row and task.choices_field in row:
        return "mc"
    if "messages" in row:
        return "chat"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "completion"
    if "text" in row:
        return "text"
    return None


def make_example(row: Any, task: TaskSettings, where: str, fmt: str | None = None, base: Path | None = None):
    """Validates one row (a mapping) into an `MCExample` or a `GenExample`, in format ``fmt``
    (default: ``task.format``, or the row's own when that is auto); errors name ``where`` (file:line).
    Image paths are relative to ``base`` (the data file's directory)."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    fmt = fmt or (task.format if task.format != "auto" else row_format(row, task))
    if fmt is None:
        raise DataError(f"{where}: cannot tell the row's format from its fields {sorted(row)}; rows need "
                        f"'{task.context_field}'/'{task.choices_field}'/'{task.label_field}' (multiple choice), "
                        f"'prompt'/'completion', 'instruction'/'input'/'output', 'messages' or 'text' "
                        f"(or set task.format=)")
    if fmt in GENERATIVE_FORMATS:
        return _generative(row, fmt, where, task, base)
    missing = [f for f in (task.context_field, task.choices_field, task.label_field) if f not in row]
    if missing:
        raise DataError(f"{where}: missing field(s) {', '.join(missing)}; each row needs "
                        f"'{task.context_field}', '{task.choices_field}' and '{task.label_field}' "
                        f"(rename with task.context_field= / task.choices_field= / task.label_field=)")
    context, choices, label = row[task.context_field], row[task.choices_field], row[task.label_field]
    if not isinstance(context, str):
        raise DataError(f"{where}: '{task.context_field}' must be a string")
    if not isinstance(choices, (list, tuple)) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{where}: '{task.choices_field}' must be a list of at least 2 strings")
    if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(choices):
        raise DataError(f"{where}: '{task.label_field}' must be an integer index into "
                        f"'{task.choices_field}' (0..{len(choices) - 1}), got {label!r}")
    return MCExample(context, tuple(choices), label, tuple(row_images(row, task.image_field, where, base)))


def _text(row: dict, key: str, where: str, fmt: str, empty_ok: bool = False) -> str:
    if key not in row:
        raise DataError(f"{where}: missing field '{key}' of a {fmt} row (all rows of a task have one format: "
                        f"task.format, or else the first row's)")
    value = row.get(key)
    if not isinstance(value, str) or (not empty_ok and not value.strip()):
        raise DataError(f"{where}: '{key}' must be a non-empty string in a {fmt} row" if not empty_ok
                        else f"{where}: '{key}' must be a string in a {fmt} row")
    return value


def _generative(row: dict, fmt: str, where: str, task: TaskSettings, base: Path | None) -> GenExample:
    answer = row.get("answer")
    if answer is not None and not isinstance(answer, (str, int, float)):
        raise DataError(f"{where}: 'answer' must be a string or a number")
    answer = None if answer is None else str(answer)
    if fmt == "completion":
        return GenExample(fmt, prompt=_text(row, "prompt", where, fmt, empty_ok=True),
                          completion=_text(row, "completion", where, fmt), answer=answer)
    if fmt == "alpaca":
        instruction = _text(row, "instruction", where, fmt)
        extra = row.get("input") or ""
        if not isinstance(extra, str):
            raise DataError(f"{where}: 'input' must be a string in an alpaca row")
        prompt = ALPACA_PROMPT.format(with_input=", paired with an input that provides further context" if extra else "",
                                      instruction=instruction, input_block=f"### Input:\n{extra}\n\n" if extra else "")
        return GenExample(fmt, prompt=prompt, completion=_text(row, "output", where, fmt), answer=answer)
    if fmt == "text":
        return GenExample(fmt, text=_text(row, "text", where, fmt), answer=answer)
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: 'messages' must be a non-empty list of {{'role': ..., 'content': ...}}")
    pairs, images = [], []
    spare = iter(row_images(row, task.image_field, where, base))
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str) \
                or not isinstance(message.get("content"), (str, list)):
            raise DataError(f"{where}: messages[{i}] must be {{'role': <string>, 'content': <string or parts>}}")
        content = chat_content(message["content"], i, message["role"], where, base, spare, images)
        pairs.append((message["role"], content))
    if not any(role == "assistant" for role, _ in pairs):
        raise DataError(f"{where}: a chat row needs at least one 'assistant' message (the turns the model learns)")
    if next(spare, None) is not None:
        raise DataError(f"{where}: the row's '{task.image_field}' has more images than its messages have image parts "
                        f"({{'type': 'image'}}) to place them")
    return GenExample(fmt, messages=tuple(pairs), answer=answer, images=tuple(images))


def _read_jsonl(path: Path, task: TaskSettings) -> list:
    examples = []
    fmt = None if task.format == "auto" else task.format
    with path.open("rb") as fh:  # decoded line by line, so a bad byte is reported where it is
        for lineno, raw in enumerate(fh, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {raw[exc.start]:#04x} at column "
                                f"{exc.start + 1}); save the file as UTF-8") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{lineno}: malformed JSON ({exc.msg}); fix or remove that line") from None
            if fmt is None and isinstance(row, dict):  # the first row decides; every row is then held to it
                fmt = row_format(row, task)
            examples.append(make_example(row, task, f"{path}:{lineno}", fmt, path.parent))
    if not examples:
        raise DataError(f"{path} holds no examples")
    return examples


def _read_with_datasets(path: Path, task: TaskSettings) -> list[MCExample]:
    builder = {".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(path.suffix, "json")
    return _rows_from_datasets(str(path), task, path.parent, builder=builder, data_files=str(path))


def _read_hf(spec: str, task: TaskSettings) -> list[MCExample]:
    name, _, config = spec.partition(":")
    return _rows_from_datasets(f"hf:{spec}", task, None, builder=name, name=config or None)


def _rows_from_datasets(where: str, task: TaskSettings, base: Path | None, builder: str, **kwargs) -> list[MCExample]:
    try:
        import datasets
    except ImportError:
        raise DataError(f"reading {where} needs the `datasets` package: pip install datasets") from None
    try:
        ds = datasets.load_dataset(builder, split=task.split, **kwargs)
    except Exception as exc:  # datasets raises many types for unreachable hubs and bad files
        raise DataError(f"cannot load {where} (split '{task.split}'): {exc}") from None
    fmt = None if task.format == "auto" or not len(ds) else task.format
    fmt = fmt or (row_format(ds[0], task) if len(ds) else None)
    return [make_example(row, task, f"{where} row {i}", fmt, base) for i, row in enumerate(ds)]


# --- offline catalog from the evals wheel ---------------------------------------------------------

_EVALS = ("evals", "3.0.1.post1")


def _sarcasm(row: dict) -> MCExample:
    headline = row["input"][-1]["content"].strip()
    return MCExample(f"Headline: {headline}\nIs this headline sarcastic? Answer:", ("no", "yes"),
                     int(row["ideal"]))


_QUARTZ_RE = re.compile(r"^(?P<q>.*?)\s*\n\s*A:\s*(?P<a>.*?)\s*\n\s*B:\s*(?P<b>.*?)\s*$", re.S)
_SIQA_RE = re.compile(r"^(?P<q>.*?)\s+A:\s*(?P<a>.*?);\s*B:\s*(?P<b>.*?);\s*C:\s*(?P<c>.*?)\.?\s*$", re.S)


def _lettered(regex: re.Pattern, letters: str) -> Callable[[dict], MCExample]:
    def convert(row: dict) -> MCExample:
        match = regex.match(row["input"][-1]["content"])
        if match is None:
            raise ValueError("question text does not list its options as expected")
        choices = tuple(match.group(letter.lower()) for letter in letters)
        return MCExample(f"Question: {match.group('q').strip()}\nAnswer:", choices,
                         letters.index(row["ideal"].strip()))
    return convert


CATALOG: dict[str, tuple[str, Callable[[dict], MCExample]]] = {
    "sarcasm": ("evals/registry/data/sarcasm/samples.jsonl", _sarcasm),
    "quartz": ("evals/registry/data/quartz/samples.jsonl", _lettered(_QUARTZ_RE, "AB")),
    "socialiqa": ("evals/registry/data/theory_of_mind/socialiqa/test.jsonl", _lettered(_SIQA_RE, "ABC")),
}


def _read_catalog(name: str) -> list[MCExample]:
    member, convert = CATALOG[name]
    wheel = fetch_wheel(*_EVALS)
    with zipfile.ZipFile(wheel) as zf:
        lines = zf.read(member).decode().splitlines()
    return list(_convert_lines(lines, convert, f"{wheel.name}!{member}"))


def _convert_lines(lines: Iterable[str], convert: Callable[[dict], MCExample], where: str):
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield convert(json.loads(line))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise DataError(f"{where}:{lineno}: malformed row ({exc})") from None


# --- generated math (reasoning-gym) ---------------------------------------------------------------

GENERATED_SIZE = 5000
"""Examples a generated task has (more when data.* asks for more), so that its test split does not
change with ``data.train_size``."""
GENERATED_SEED = 0
"""The generator's seed: every run sees the same problems; ``data.seed`` splits them."""


def _chain_steps(entry: dict) -> str:
    """``12 + 7 - 5`` worked left to right: ``12 + 7 = 19, 19 - 5 = 14.``"""
    terms = entry["metadata"]["expression"].split()
    total, steps = int(terms[0]), []
    for op, number in zip(terms[1::2], terms[2::2]):
        result = total + int(number) if op == "+" else total - int(number)
        steps.append(f"{total} {op} {number} = {result}")
        total = result
    if str(total) != str(entry["answer"]).strip():
        raise ValueError(f"worked steps give {total}, the generator says {entry['answer']}")
    return ", ".join(steps) + f".\n#### {total}"


GENERATED: dict[str, tuple[str, dict, Callable[[dict], str]]] = {
    "arithmetic": ("chain_sum", {"min_terms": 2, "max_terms": 3, "min_digits": 1, "max_digits": 2}, _chain_steps),
    "gsm_symbolic": ("gsm_symbolic", {}, lambda entry: entry["metadata"]["answer_cot"].strip()),
}
"""Generated tasks: reasoning-gym's dataset, its settings, and the worked solution (ending in
``#### N``) the model learns to write."""


def generate_math(name: str, task: TaskSettings, data: DataSettings) -> list[GenExample]:
    """A generated math task: distinct questions from reasoning-gym (seed `GENERATED_SEED`) as chat
    rows (the question from the user, the worked solution from the assistant; ``task.format=
    completion`` gives ``Question: ...\nAnswer:`` prompts instead, for models without a chat
    template), each with its reference answer."""
    try:
        import reasoning_gym
    except ImportError:
        raise DataError(f"task '{name}' is generated by reasoning-gym, which is not installed: "
                        f"pip install 'raylsl[math]'") from None
    fmt = "chat" if task.format == "auto" else task.format
    if fmt not in ("chat", "completion"):
        raise DataError(f"task '{name}' comes as chat or completion rows; task.format={task.format} does not apply")
    dataset, settings, solution = GENERATED[name]
    want = max(GENERATED_SIZE, data.test_size + data.val_size + 1 + (data.train_size or 0))
    for size in (2 * want, 8 * want):  # repeats are dropped (a test question must not be in train)
        entries = reasoning_gym.create_dataset(dataset, size=size, seed=GENERATED_SEED, **settings)
        examples, seen = [], set()
        for entry in entries:
            question = entry["question"].strip()
            if question in seen:
                continue
            seen.add(question)
            answer = str(entry["answer"]).strip()
            if fmt == "chat":
                examples.append(GenExample("chat", messages=(("user", question), ("assistant", solution(entry))),
                                           answer=answer))
            else:
                examples.append(GenExample("completion", prompt=f"Question: {question}\nAnswer:",
                                           completion=" " + solution(entry), answer=answer))
            if len(examples) == want:
                return examples
    raise DataError(f"task '{name}' has only {len(examples)} distinct problems; lower data.train_size")


# --- data order -----------------------------------------------------------------------------------

def micro_batches(n_examples: int, step: int, settings: TrainSettings, rank: int = 0, world: int = 1) -> list[list[int]]:
    """Example indices of this rank's micro-batches at ``step``.

    The global batch of a step is ``batch_size x grad_accum x world`` examples from a seeded
    permutation per epoch; micro-batch m of the step is its m-th slice of ``batch_size x world``,
    of which rank r takes the r-th ``batch_size``. One worker with batch 8 and two with batch 4
    therefore see the same examples in each step.
    """
    per_micro = settings.batch_size * world
    per_step = per_micro * settings.grad_accum
    start = step * per_step
    indices: list[int] = []
    while len(indices) < per_step:
        epoch, offset = divmod(start + len(indices), n_examples)
        perm = torch.randperm(n_examples, generator=torch.Generator().manual_seed(settings.seed * 100_003 + epoch))
        indices += perm[offset: offset + per_step - len(indices)].tolist()
    return [indices[m + rank * settings.batch_size: m + (rank + 1) * settings.batch_size]
            for m in range(0, per_step, per_micro)]
