"""Image+text tasks for vision-language models: chat rows whose user turns show images, and
multiple-choice rows with images (ScienceQA's shape), trained and scored as a decoder's are.

The text is rendered as for a text model, with the processor's chat template, and every segment
that holds image placeholders is tokenized by the processor with its images, which expands each
placeholder into that image's tokens. A batch is the padded token rows plus the image processor's
tensors for the batch's images in order (`raylsl.models.vision.IMAGE_INPUTS`); the model puts each
image's features, through its projector, in its tokens' places. Images are decoded and processed
when a batch is built, not kept (a LLaVA-1.5 image is 1.3 MB of pixels).

Targets are those of text: every assistant turn of a chat; a multiple-choice row's correct choice,
after its context rendered as the user's turn (images, then text) and the generation prompt.
Choices are scored by their summed log-likelihood, each (context, choice) as one sequence with
the context's images, the head run only at the choice's tokens.

Rows are padded, not packed (packing would need each family's image-position bookkeeping: LLaVA's
token order, Qwen2-VL's 3-D positions); the head still runs only at the target positions once the
first loss has checked that against full logits, on the first examples of the first batch. A
sequence whose image tokens do not all fit in ``data.max_length`` is an error naming the length it
needs: cut image tokens would leave image features with nowhere to go.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from raylsl.data import GenExample, MCExample
from raylsl.errors import DataError
from raylsl.images import decode
from raylsl.models.vision import IMAGE_INPUTS, text_tokenizer
from raylsl.objective.base import to_device
from raylsl.objective.causal import VERIFY_EXAMPLES, CausalTargets, Tokens, choose_layout, padded, target_nll
from raylsl.objective.generative import DecoderLM, chat_message, render_chat
from raylsl.objective.multiple_choice import DecoderMC


class VisionTargets(CausalTargets):
    """A causal LM's targets with images: image-aware tokenization, batches with the image
    processor's tensors, padded rows."""

    processor = None
    chat_template: str | None = None
    _sample: list | None = None
    """The first examples of the first batch: the layout check's sample."""

    def _render(self, messages: list[dict], generation_prompt: bool) -> str:
        return render_chat(self.processor, self.chat_template, messages, generation_prompt)

    def encode(self, parts: Sequence[tuple[str, bool]], images: Sequence[bytes]) -> list[tuple[list[int], bool]]:
        """Token ids of each (text, is_target) segment; a segment's image placeholders are expanded
        by the processor with the example's next images, in order.

        Raises:
            DataError: the rendered text places a different number of images than the example has.
        """
        placeholder = self.processor.image_token
        out, used = [], 0
        for text, target in parts:
            count = text.count(placeholder)
            if count:
                shown = [decode(image) for image in images[used:used + count]]
                ids = self.processor(text=[text], images=[shown], add_special_tokens=False,
                                     return_tensors="pt")["input_ids"][0].tolist()
                used += count
            else:
                ids = self._ids(text)
            out.append((ids, target))
        if used != len(images):
            raise DataError(f"an example has {len(images)} image(s) and its rendered text places {used}: each image "
                            f"needs an {{'type': 'image'}} part in a user turn, and the chat template must write it")
        return out

    def fit(self, parts: Sequence[tuple[list[int], bool]]) -> Tokens:
        tokens = super().fit(parts)
        image = self.tokenizer.convert_tokens_to_ids(self.processor.image_token)
        needed = sum(part.count(image) for part, _ in parts)
        if tokens.ids.count(image) != needed:
            length = sum(len(part) for part, _ in parts)
            raise DataError(f"an example needs {length} tokens, {needed} of them for its image(s), and "
                            f"data.max_length={self.max_length} would cut its image tokens: raise data.max_length "
                            f"to {length} or more")
        return tokens

    def pixels(self, images: Sequence[Sequence[bytes]]) -> dict[str, torch.Tensor]:
        """The image processor's tensors for each sequence's images, in order: concatenated along
        the first dimension, each padded with zeros to the largest in the others (Idefics3 holds a
        sequence's images in its second dimension; a zero image is padding to it)."""
        outs = [self.processor.image_processor(images=[[decode(image) for image in shown]], return_tensors="pt")
                for shown in images if shown]
        return {key: _stack([out[key] for out in outs]) for key in IMAGE_INPUTS if outs and key in outs[0]}

    def batch(self, examples: list) -> dict[str, torch.Tensor]:
        """The examples' sequences as right-padded rows, with their images."""
        if self.layout is None and self._sample is None:
            self._sample = list(examples[:VERIFY_EXAMPLES])
        return {**padded([self.tokens(ex) for ex in examples], self.tokenizer.pad_token_id),
                **self.pixels([ex.images for ex in examples])}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], normalizer: float | None = None) -> torch.Tensor:
        if self.layout is None:
            sample = to_device(self.batch(self._sample), batch["input_ids"].device) if self._sample else batch
            self.layout, self.loss_chunk = choose_layout(model, sample, self.loss_chunk, candidates=("padded",))
        return target_nll(model, batch, self.layout, self.loss_chunk) / (normalizer or self.target_count(batch))

    def target_nll_per_example(self, model: nn.Module, examples: list) -> list[tuple[float, int]]:
        seqs = [self.tokens(ex) for ex in examples]
        return self.sequence_nll(model, seqs, self.pixels([ex.images for ex in examples]))


def _stack(tensors: list[torch.Tensor]) -> torch.Tensor:
    shape = [max(t.shape[d] for t in tensors) for d in range(1, tensors[0].dim())]
    out = tensors[0].new_zeros((sum(len(t) for t in tensors), *shape))
    at = 0
    for tensor in tensors:
        out[(slice(at, at + len(tensor)), *(slice(0, size) for size in tensor.shape[1:]))] = tensor
        at += len(tensor)
    return out


class VisionLM(VisionTargets, DecoderLM):
    """Chat (and completion, alpaca, text) rows for a vision-language model (`DecoderLM`'s metrics:
    held-out loss, perplexity, exact match with the images in the prompt)."""

    def __init__(self, processor, max_length: int, chat_template: str | None = None, **generation):
        super().__init__(text_tokenizer(processor), max_length, chat_template, **generation)
        self.processor = processor

    def token_parts(self, example: GenExample) -> list[tuple[list[int], bool]]:
        return self.encode(self.segments(example), example.images)

    def prompt_inputs(self, examples: list[GenExample]) -> dict[str, torch.Tensor]:
        return self.pixels([ex.images for ex in examples])


class VisionMC(VisionTargets, DecoderMC):
    """Multiple-choice rows with images (`DecoderMC`'s metrics: acc, acc_norm, loss)."""

    def __init__(self, processor, max_length: int, chat_template: str | None = None):
        super().__init__(text_tokenizer(processor), max_length)
        self.processor, self.chat_template = processor, chat_template
        self.cached_scoring = False  # each (context, choice) is its own sequence, with the context's images
        self._contexts: dict[MCExample, tuple[str, list[int]]] = {}

    def context(self, example: MCExample) -> tuple[str, list[int]]:
        """The context as the user's turn (its images, then its text) with the generation prompt,
        rendered and tokenized."""
        if example not in self._contexts:
            content = (*range(len(example.images)), example.context) if example.images else example.context
            text = self._render([chat_message("user", content)], generation_prompt=True)
            self._contexts[example] = text, self.encode([(text, False)], example.images)[0][0]
        return self._contexts[example]

    def pair(self, example: MCExample, choice: str) -> Tokens:
        """Context and choice as one sequence, the choice's tokens its targets."""
        text, ids = self.context(example)
        continuation = choice if text[-1:].isspace() or choice[:1].isspace() else " " + choice
        return self.fit([(ids, False), (self._ids(continuation), True)])

    def tokens(self, example: MCExample) -> Tokens:
        return self.pair(example, example.choices[example.label])

    def length(self, example: MCExample) -> int:
        return len(self.context(example)[1])

    def choice_logprobs(self, model: nn.Module, examples: list[MCExample],
                        use_cache: bool = False) -> list[list[float]]:
        """Summed log-probability of every choice of every example, each with its context's images
        (``use_cache`` is ignored: every (context, choice) is one sequence)."""
        seqs = [self.pair(ex, choice) for ex in examples for choice in ex.choices]
        nll = self.sequence_nll(model, seqs, self.pixels([ex.images for ex in examples for _ in ex.choices]))
        scores, at = [], 0
        for ex in examples:
            scores.append([-total for total, _ in nll[at: at + len(ex.choices)]])
            at += len(ex.choices)
        return scores
