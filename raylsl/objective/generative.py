"""Generative tasks (instruction, chat, completion, plain text) for decoders.

Training minimises the NLL of the target tokens only, as for multiple choice: a completion (with
the tokenizer's end-of-sequence token after it, so the model learns to stop), every assistant turn
of a chat, or every token of a text. Evaluation reports the held-out ``loss`` (mean NLL per target
token) and its ``perplexity``, and, over the examples that have a reference answer, ``exact_match``:
the model continues the example's prompt (the text before its last target) greedily (batched,
left-padded, KV cache, up to ``task.max_new_tokens``, until end of sequence or a ``task.stop``
string), the answer is extracted from what it wrote (`extract_answer`), normalised (`normalize`)
and compared with the reference. A reference is a row's ``answer``, else the ``task.answer_pattern``
match (default GSM8K's ``#### 42``) in its completion or last assistant turn.

Chat rows are rendered with the tokenizer's chat template (or ``task.chat_template``); an assistant
turn's tokens are what the template adds between the conversation up to that turn with the
generation prompt and the conversation including the turn, so the template's end-of-turn marker
is learned too. A template that does not render a conversation as a prefix of its continuation
cannot mark turns this way, and is refused with that message.
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from raylsl.data import GenExample
from raylsl.errors import DataError
from raylsl.models import DECODER
from raylsl.objective.base import loss_metrics
from raylsl.objective.causal import CausalTargets, Tokens, unwrap

GSM8K_ANSWER = r"####\s*([^\n]+)"
NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def extract_answer(text: str, pattern: str | None = None, last_number: bool = True) -> str | None:
    """The answer in ``text``: ``pattern``'s first group (or whole match) when a pattern is given;
    else GSM8K's ``#### X``, else (with ``last_number``) the last number in the text. None when
    there is none."""
    found = re.search(pattern or GSM8K_ANSWER, text)
    if found:
        return (found.group(1) if found.groups() else found.group(0)).strip()
    numbers = NUMBER.findall(text) if last_number and not pattern else []
    return numbers[-1] if numbers else None


def normalize(answer: str) -> str:
    """Case, surrounding whitespace and punctuation, inner whitespace runs, thousands separators
    and currency signs do not matter, and neither does a number's form (``42.0`` is ``42``)."""
    text = " ".join(answer.strip().lower().split()).strip(" .")
    number = text.replace(",", "").replace("$", "")
    try:
        value = float(number)
    except ValueError:
        return text
    if not math.isfinite(value):
        return text
    return str(int(value)) if value == int(value) else repr(value)


def matches(answer: str | None, reference: str) -> bool:
    """Whether an extracted answer is the reference, both normalised (no answer never matches)."""
    return answer is not None and normalize(answer) == normalize(reference)


def reference_answer(example: GenExample, pattern: str | None = None) -> str | None:
    """An example's reference answer: its ``answer``, else ``pattern``'s (default: GSM8K's ``####``)
    match in its completion or last assistant turn; None for plain text and examples without one."""
    if example.answer is not None:
        return example.answer
    if example.format == "text":
        return None
    if example.format == "chat":
        target = next(content for role, content in reversed(example.messages) if role == "assistant")
    else:
        target = example.completion
    return extract_answer(target, pattern, last_number=False) if target else None


def chat_message(role: str, content: str | tuple[str | int, ...]) -> dict:
    """A message as chat templates take it: content parts (a `GenExample`'s images as indices) as
    ``{"type": "image"}`` and ``{"type": "text", "text": ...}``."""
    if isinstance(content, str):
        return {"role": role, "content": content}
    return {"role": role, "content": [{"type": "image"} if isinstance(part, int) else {"type": "text", "text": part}
                                      for part in content]}


def render_chat(owner, chat_template: str | None, messages: list[dict], generation_prompt: bool) -> str:
    """``messages`` as text, by ``owner``'s (a tokenizer's or processor's) chat template or
    ``chat_template`` (``task.chat_template``), with the generation prompt after them if asked.

    Raises:
        DataError: neither template exists.
    """
    if chat_template is None and not getattr(owner, "chat_template", None):
        what = "processor" if hasattr(owner, "image_processor") else "tokenizer"
        raise DataError(f"chat data needs a chat template: this model's {what} has none; give one with "
                        f"task.chat_template= (a Jinja template), or use completion rows (prompt/completion)")
    if not messages:
        return ""
    return owner.apply_chat_template(messages, chat_template=chat_template, tokenize=False,
                                     add_generation_prompt=generation_prompt)


def task_metric(examples: list, pattern: str | None = None) -> str:
    """The metric a sweep ranks a task's runs by: ``acc`` for multiple choice; for generative tasks
    ``exact_match`` when any example has a reference answer, else the held-out ``loss``."""
    if not examples or not isinstance(examples[0], GenExample):
        return "acc"
    return "exact_match" if any(reference_answer(ex, pattern) is not None for ex in examples) else "loss"


class DecoderLM(CausalTargets):
    kind = DECODER
    generative = True
    sums = ("nll", "tokens", "n", "em", "em_n")

    def __init__(self, tokenizer, max_length: int, chat_template: str | None = None, answer_pattern: str | None = None,
                 max_new_tokens: int = 128, stop: tuple[str, ...] = ()):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.chat_template = chat_template
        self.answer_pattern = answer_pattern
        self.max_new_tokens = max_new_tokens
        self.stop = tuple(stop)
        self.layout = None
        self._tokens: dict[GenExample, Tokens] = {}

    def segments(self, example: GenExample) -> list[tuple[str, bool]]:
        """The example's text as (segment, is_target) pairs, in order."""
        if example.format == "text":
            return [(example.text, True)]
        if example.format != "chat":
            return [(example.prompt, False), (example.completion, True)]
        messages = [chat_message(role, content) for role, content in example.messages]
        parts: list[tuple[str, bool]] = []
        done = ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prompt = self._render(messages[:i], generation_prompt=True)
            with_turn = self._render(messages[:i + 1], generation_prompt=False)
            if not (prompt.startswith(done) and with_turn.startswith(prompt)):
                raise DataError("the chat template does not render a conversation as a prefix of its continuation, "
                                "so assistant turns cannot be marked as targets; give task.chat_template= one that does")
            parts += [(prompt[len(done):], False), (with_turn[len(prompt):], True)]
            done = with_turn
        return parts

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return render_chat(self.tokenizer, self.chat_template, messages, generation_prompt)

    def token_parts(self, example: GenExample) -> list[tuple[list[int], bool]]:
        """The example's segments (`segments`) as token ids."""
        return [(self._ids(text), target) for text, target in self.segments(example)]

    def tokens(self, example: GenExample) -> Tokens:
        if example not in self._tokens:
            parts = self.token_parts(example)
            if example.format in ("completion", "alpaca") and self.tokenizer.eos_token_id is not None:
                parts.append(([self.tokenizer.eos_token_id], True))
            self._tokens[example] = self.fit(parts)
        return self._tokens[example]

    def length(self, example: GenExample) -> int:
        return len(self.tokens(example).ids)

    def reference(self, example: GenExample) -> str | None:
        """The answer generation is scored against (None: the example has none)."""
        return reference_answer(example, self.answer_pattern)

    def prompt_ids(self, example: GenExample) -> list[int]:
        """What the model continues: the example's tokens before its last target segment."""
        parts = self.token_parts(example)
        last = max(i for i, (_, target) in enumerate(parts) if target)
        ids = [i for part, _ in parts[:last] for i in part]
        return ids[-(self.max_length - 1):] if ids else ids

    def prompt_inputs(self, examples: list[GenExample]) -> dict[str, torch.Tensor]:
        """What the model reads beside the prompts' ids (a vision-language model: their images)."""
        return {}

    @torch.no_grad()
    def generate(self, model: nn.Module, prompts: list[list[int]], inputs: dict | None = None) -> list[str]:
        """Greedy continuations of ``prompts`` (left-padded into one batch, KV cache), cut at end of
        sequence or the first stop string; ``inputs`` go to the model too (`prompt_inputs`)."""
        from transformers import GenerationConfig

        import torch.distributed as dist

        module = unwrap(model)
        device = next(module.parameters()).device
        pad = self.tokenizer.pad_token_id
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for row, prompt in enumerate(prompts):
            ids[row, width - len(prompt):] = torch.tensor(prompt, dtype=torch.long)
            mask[row, width - len(prompt):] = 1
        config = GenerationConfig(max_new_tokens=self.max_new_tokens, do_sample=False, pad_token_id=pad,
                                  eos_token_id=self.tokenizer.eos_token_id)
        synced = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1  # ZeRO-3: lockstep
        out = module.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config,
                              synced_gpus=synced, **{k: v.to(device) for k, v in (inputs or {}).items()})
        texts = []
        for row in out[:, width:].tolist():
            if self.tokenizer.eos_token_id in row:
                row = row[: row.index(self.tokenizer.eos_token_id)]
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            cut = min((text.find(s) for s in self.stop if s in text), default=len(text))
            texts.append(text[:cut])
        return texts

    @torch.no_grad()
    def evaluate_batch(self, model: nn.Module, examples: list[GenExample]) -> list[dict[str, float]]:
        results = [{"nll": nll, "tokens": float(count), "n": 1.0, "em": 0.0, "em_n": 0.0}
                   for nll, count in self.target_nll_per_example(model, examples)]
        scored = [(i, ref) for i, ex in enumerate(examples)
                  if ex.format != "text" and (ref := self.reference(ex)) is not None]
        if scored:
            prompted = [examples[i] for i, _ in scored]
            texts = self.generate(model, [self.prompt_ids(ex) for ex in prompted], self.prompt_inputs(prompted))
            for (i, ref), text in zip(scored, texts):
                answer = extract_answer(text, self.answer_pattern)
                results[i].update(em=float(matches(answer, ref)), em_n=1.0)
        return results

    @torch.no_grad()
    def samples(self, model: nn.Module, examples: list[GenExample], batch_size: int = 8) -> list[dict]:
        """What the model writes for each example's prompt (greedy, as exact match scores it), with
        the answer extracted from it, the reference, and whether they match (None: no reference)."""
        was_training = model.training
        model.eval()
        rows = []
        try:
            for start in range(0, len(examples), batch_size):
                chunk = [ex for ex in examples[start:start + batch_size] if ex.format != "text"]
                if not chunk:
                    continue
                prompts = [self.prompt_ids(ex) for ex in chunk]
                texts = self.generate(model, prompts, self.prompt_inputs(chunk))
                for example, prompt, text in zip(chunk, prompts, texts):
                    reference, answer = self.reference(example), extract_answer(text, self.answer_pattern)
                    rows.append({"prompt": self.tokenizer.decode(prompt), "generated": text, "answer": answer,
                                 "reference": reference,
                                 "correct": None if reference is None else matches(answer, reference)})
        finally:
            model.train(was_training)
        return rows

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out = loss_metrics(sums)
        if sums.get("em_n", 0) > 0:
            out["exact_match"] = sums["em"] / sums["em_n"]
        return out
