"""Memory a training run needs, measured on the meta device: nothing allocated, nothing but the
model's config read.

Two parts (`raylsl.fit` puts them together per device, with how ZeRO partitions them):

- **Model state**, arithmetic over the parameters of the model built on the meta device: base
  weights at their dtype or quantized as bitsandbytes stores them (`weight_bytes`).
- **One training step** (`trace_step`): the model, with LoRA on the planned blocks and
  checkpointing from the lowest one when it is on, runs forward, head and loss, and backward on
  meta tensors under `LiveBytes`, a dispatch mode that tracks every tensor storage created and
  freed. Its peak is what the step adds to the model state: activations kept for backward, the
  working memory of forward and backward, the LM head's logits, the gradients. The same mode
  around a real step measures the same quantity (on a CPU, where no allocator reports a peak).

The meta step stands in for the device's step: the autocast a GPU run uses is emulated by running
in the compute dtype, and scaled-dot-product attention, whose fused kernels have no meta version,
is replaced by one that keeps what they keep for backward (query, key, value, output and the
log-sum-exp) wherever the device would run one: always on a GPU (flash, or memory-efficient with
a mask or dropout), on a CPU only without a mask or dropout (else PyTorch's CPU math path, which
the meta step then runs too). Eager attention runs as it is (it keeps the attention matrix).
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from raylsl.models.heads import chunked_nll, hidden_at, output_head



def nf4_bytes(numel: int) -> int:
    """What bitsandbytes holds for one NF4 weight with double quantization: 4 bits per weight, an
    8-bit scale per block of 64, an fp32 constant per 256 scales, and its two code tables."""
    blocks = -(-numel // 64)
    return -(-numel // 2) + blocks + -(-blocks // 256) * 4 + 16 * 4 + 256 * 4 + 4


def int8_bytes(linear: nn.Linear) -> int:
    """LLM.int8: a byte per weight and an fp32 scale per output row."""
    return linear.weight.numel() + linear.out_features * 4


class LiveBytes(TorchDispatchMode):
    """Inside the ``with`` body: the bytes of tensor storages created there and still alive
    (``live``), and their maximum (``peak``). Only ops that allocate count: views and in-place
    results share an input's storage (the weights' transposes are not new memory), and a storage is
    counted once however many tensors use it."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._seen: set[int] = set()

    def _freed(self, key: int, size: int) -> None:
        self.live -= size
        self._seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if any(r.alias_info is not None for r in func._schema.returns):
            return out  # a view or an in-place result: an input's storage, not a new one
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                storage = tensor.untyped_storage()
                key = storage._cdata
                if key not in self._seen:
                    size = storage.nbytes()
                    self._seen.add(key)
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, key, size)
        return out


class _KeepsWhatFusedAttentionKeeps(torch.autograd.Function):
    """Attention that saves for backward what flash / memory-efficient attention save: query,
    key, value, output and an fp32 log-sum-exp per query position and head."""

    @staticmethod
    def forward(ctx, query, key, value):
        out = query.new_empty(query.shape[:-1] + (value.shape[-1],))
        lse = query.new_empty(query.shape[:-1], dtype=torch.float32)
        ctx.save_for_backward(query, key, value, out, lse)
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, _, _ = ctx.saved_tensors
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


SDPA_KERNELS = ("cuda", "cpu", "none")
"""How a meta step runs scaled-dot-product attention: as a GPU would, as a CPU would, or as the
meta device does (the math path; what a real step on any device needs no stand-in for)."""


def _fused_attention(device: str):
    plain = F.scaled_dot_product_attention

    def attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        if device == "cpu" and (attn_mask is not None or dropout_p > 0):  # PyTorch's CPU math path
            return plain(query, key, value, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                         scale=scale, enable_gqa=enable_gqa)
        return _KeepsWhatFusedAttentionKeeps.apply(query, key, value)

    return attention


@contextmanager
def meta_forward_patches(sdpa: str = "cuda") -> Iterator[None]:
    """What a forward on meta tensors needs: no checks that read values (packed-sequence detection,
    GPT-2's padding warning), and the memory of the fused attention kernel ``sdpa`` (a
    `SDPA_KERNELS` device) would run."""
    import transformers.masking_utils as masking
    from transformers import PreTrainedModel

    saved = (masking.find_packed_sequence_indices, F.scaled_dot_product_attention,
             PreTrainedModel.warn_if_padding_and_no_attention_mask)
    masking.find_packed_sequence_indices = lambda *args, **kwargs: None
    PreTrainedModel.warn_if_padding_and_no_attention_mask = lambda *args, **kwargs: None
    if sdpa != "none":
        F.scaled_dot_product_attention = _fused_attention(sdpa)
    try:
        yield
    finally:
        (masking.find_packed_sequence_indices, F.scaled_dot_product_attention,
         PreTrainedModel.warn_if_padding_and_no_attention_mask) = saved


def trace_step(model: nn.Module, batch: int, sequence: int, targets: int, encoder: bool = False,
               choices: int = 2, loss_chunk: int = 0, sdpa: str = "cuda") -> int:
    """Peak live bytes of one training step of ``model`` (built on the meta device, trainable
    parameters marked) on a micro-batch of ``batch`` sequences of ``sequence`` tokens.

    Args:
        targets: positions the LM head and loss run on (decoders; 0 skips the head); encoders run
            their multiple-choice head over ``choices`` sequences per example.
        loss_chunk: the head and loss in chunks of this many positions (`raylsl.models.heads`).
        sdpa: the device whose scaled-dot-product attention kernels to stand in for on meta tensors
            (`SDPA_KERNELS`; ``none`` for a step on a real device).
    """
    device = next(model.parameters()).device
    model.train()
    with meta_forward_patches(sdpa), LiveBytes() as live:
        if encoder:
            ids = torch.zeros(batch, choices, sequence, dtype=torch.long, device=device)
            logits = model(input_ids=ids).logits  # no padding mask: its all-ones check reads values
            loss = F.cross_entropy(logits.float(), torch.zeros(batch, dtype=torch.long, device=device))
        else:
            loss = _decoder_loss(model, batch, sequence, targets, loss_chunk, device)
        loss.backward()
    for param in model.parameters():
        param.grad = None
    return live.peak


def _decoder_loss(model: nn.Module, batch: int, sequence: int, targets: int, loss_chunk: int,
                  device: torch.device) -> torch.Tensor:
    ids = torch.zeros(batch, sequence, dtype=torch.long, device=device)
    positions = torch.arange(sequence, device=device).expand(batch, sequence)
    inputs = {"input_ids": ids, "position_ids": positions, "use_cache": False}
    labels = torch.zeros(targets, dtype=torch.long, device=device)
    first = lambda hidden: hidden.reshape(-1, hidden.shape[-1])[:targets]  # noqa: E731 (shape only: meta-safe)
    if loss_chunk and targets > loss_chunk:
        with hidden_at(model, first) as captured:
            model(**inputs)
        return chunked_nll(model, captured[0], labels, loss_chunk).sum()
    head = output_head(model)
    handle = head.register_forward_pre_hook(lambda module, args: (first(args[0]), *args[1:]))
    try:
        logits = model(**inputs).logits
    finally:
        handle.remove()
    if targets == 0:  # no head rows: backward from the hidden states the head would have read
        return logits.float().sum() * 0
    return F.cross_entropy(logits.float(), labels, reduction="sum")


def quantizable_linears(model: nn.Module) -> list[nn.Linear]:
    """The linear layers bitsandbytes quantizes: every frozen one but the output head."""
    head = output_head(model)
    return [m for m in model.modules()
            if isinstance(m, nn.Linear) and m is not head and not m.weight.requires_grad]


def weight_bytes(model: nn.Module, dtype: torch.dtype, quantization: str = "none") -> int:
    """Bytes of the frozen base's weights: every frozen parameter at ``dtype``, or with 4/8-bit
    quantization the `quantizable_linears` as bitsandbytes stores them. Tied weights count once."""
    quantized: set[int] = set()
    total = 0
    if quantization != "none":
        for module in quantizable_linears(model):
            quantized.add(id(module.weight))
            total += nf4_bytes(module.weight.numel()) if quantization == "4bit" else int8_bytes(module)
    size = torch.empty(0, dtype=dtype).element_size()
    frozen = {id(p): p for p in model.parameters() if not p.requires_grad and id(p) not in quantized}
    return total + sum(p.numel() for p in frozen.values()) * size


def dequantized_bytes(model: nn.Module, dtype: torch.dtype) -> int:
    """The largest quantized layer's weight at ``dtype``: what it dequantizes while it runs."""
    size = torch.empty(0, dtype=dtype).element_size()
    return max((m.weight.numel() * size for m in quantizable_linears(model)), default=0)
