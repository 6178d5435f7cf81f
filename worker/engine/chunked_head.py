"""Final hidden states -> logits through the LM head, a chunk of tokens at a time.

The one definition of "apply the LM head" for everything that turns logits into a loss: the
distillation losses (`distill/losses.py`), perplexity, the teacher's block NLL (also the what-if
preview) and the importance loss scans. It applies the family's logit post-processing too (Gemma's
final soft-cap, Granite's logits scaling) as the model's own forward does, in float32 (the forward
does it in the model's dtype: the same numbers in float32). Full [tokens, vocab] logits never exist:
at most `chunk_tokens` x V float32 logits at a time (a 128k vocabulary at batch 8 x 2048 would
otherwise hold 8 GiB of float32 logits).

Models are run up to their final norm (`final_hidden_states`, the base model's output), so hooks on
the final norm (masking, importance) still see it; only the head is applied here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from worker.engine.adapters import adapter_for
from worker.engine.spec import text_config

IGNORE_INDEX = -100
# The automatic chunk size is the memory planner's (torch-free), so estimate and engine cannot drift.
from worker.engine.memplan import CHUNK_LOGITS, auto_chunk_tokens  # noqa: E402


@dataclass(frozen=True)
class OutputHead:
    """The LM head and what the family does to its logits after the projection, in transformers' order:
    Granite divides them by `logits_scaling`; Gemma soft-caps them, cap * tanh(logits / cap)."""

    linear: nn.Linear
    softcap: float | None = None
    divisor: float | None = None

    @property
    def weight(self) -> torch.Tensor:
        return self.linear.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.linear.bias

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """float32 logits [n, V] of one chunk of hidden states [n, D]."""
        return self.finish(chunk_logits(hidden, self.weight, self.bias))

    def finish(self, z: torch.Tensor) -> torch.Tensor:
        """The post-processing of raw float32 logits (identity for most families)."""
        if self.divisor is not None:
            z = z / self.divisor
        if self.softcap is not None:
            z = torch.tanh(z / self.softcap) * self.softcap
        return z

    def raw_gradient(self, finished: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        """d loss / d raw logits from d loss / d finished logits, given the finished logits."""
        if self.softcap is not None:  # d/dx c tanh(x / c) = 1 - tanh^2 = 1 - (finished / c)^2
            grad = grad * (1 - (finished / self.softcap) ** 2)
        if self.divisor is not None:
            grad = grad / self.divisor
        return grad


def as_output_head(head: OutputHead | nn.Linear) -> OutputHead:
    """A bare Linear is a head without post-processing."""
    return head if isinstance(head, OutputHead) else OutputHead(head)


def output_head(model: nn.Module) -> OutputHead:
    """The family's LM head (a plain Linear) with the logit post-processing its forward applies (the
    adapter names the config fields; a field the family's forward ignores is ignored here too)."""
    adapter = adapter_for(model)
    head = adapter.lm_head(model)
    if not isinstance(head, nn.Linear):
        raise ValueError(f"{type(model).__name__}: the LM head is not an nn.Linear; it cannot be chunked")
    config = text_config(model.config)

    def field(name: str | None) -> float | None:
        return getattr(config, name, None) if name else None

    return OutputHead(
        head, softcap=field(adapter.logits_softcap_field), divisor=field(adapter.logits_divisor_field)
    )


def final_hidden_states(model: nn.Module, input_ids: torch.Tensor, attention_mask=None) -> torch.Tensor:
    """[B, S, D] hidden states after the final norm: the LM head's input (no logits computed)."""
    return model.base_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]


def chunk_logits(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """float32 logits [n, V] of one chunk of hidden states [n, D]."""
    return F.linear(hidden, weight, bias).float()


def chunk_spans(n: int, chunk_tokens: int) -> Iterator[tuple[int, int]]:
    if chunk_tokens < 1:
        raise ValueError("chunk_tokens must be >= 1")
    for start in range(0, n, chunk_tokens):
        yield start, min(start + chunk_tokens, n)


def token_nll(
    hidden: torch.Tensor, head: OutputHead | nn.Linear, targets: torch.Tensor, chunk_tokens: int | None = None
) -> torch.Tensor:
    """float32 NLL of `targets` [...] under `head(hidden)`, hidden [..., D]; 0 where IGNORE_INDEX."""
    head = as_output_head(head)
    if chunk_tokens is None:
        chunk_tokens = auto_chunk_tokens(head.weight.shape[0], hidden.device.type)
    flat_hidden, flat_targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    out = torch.empty(flat_targets.shape[0], dtype=torch.float32, device=hidden.device)
    for start, end in chunk_spans(flat_targets.shape[0], chunk_tokens):
        z = head.logits(flat_hidden[start:end])
        out[start:end] = F.cross_entropy(
            z, flat_targets[start:end], ignore_index=IGNORE_INDEX, reduction="none"
        )
    return out.view(targets.shape)


def next_token_targets(input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """[B, S] target of each position: the next token; IGNORE_INDEX at the last position and wherever
    the target or the token predicting it is padding (attention_mask 0)."""
    targets = F.pad(input_ids[:, 1:], (0, 1), value=IGNORE_INDEX)
    if attention_mask is not None:
        valid = F.pad(attention_mask[:, 1:] * attention_mask[:, :-1], (0, 1), value=0)
        targets = targets.masked_fill(valid == 0, IGNORE_INDEX)
    return targets


__all__ = [
    "CHUNK_LOGITS",
    "IGNORE_INDEX",
    "OutputHead",
    "as_output_head",
    "auto_chunk_tokens",
    "chunk_logits",
    "chunk_spans",
    "final_hidden_states",
    "next_token_targets",
    "output_head",
    "token_nll",
]
