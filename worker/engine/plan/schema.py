"""The prune-plan schema: `PrunePlan` and its `PlanTargets`, `PlanMessage` / `PlanError` (what
validation says) and `ImportanceScores` (what filling ranks). The one schema the CLI, the backend and
the dashboard use; pydantic + numpy only.

Index conventions (all indices refer to the UNPRUNED model):
- `drop_layers`: decoder layers removed whole.
- `remove_heads[l]`: query heads removed from layer l. A KV group whose query heads are all removed is
  removed with them (so for multi-head attention, where every group has one query head, removing a
  head removes its key/value head too).
- `remove_kv_groups[l]`: KV groups removed whole, i.e. key/value head g and its query heads
  g*q .. g*q+q-1 (q = query heads per group).
- `remove_neurons[l]`: MLP intermediate channels removed from layer l.
- `remove_hidden`: hidden (embedding) channels removed from every layer, embeddings and LM head.
- `remove_experts[l]`: experts removed from mixture-of-experts layer l, with their router rows. Tokens
  are then routed among the kept experts (the router's softmax and top-k over those only), so at least
  top-k experts must stay in every layer.
- `remove_expert_neurons[l][e]`: FFN channels removed from expert e of MoE layer l (e and the channel
  indices refer to the unpruned layer). The experts of a layer are stored as fused [experts, ...]
  tensors, so every kept expert of a layer must keep the same width; WHICH channels each expert keeps
  is its own. For MoE layers `targets.intermediate_size` is that per-expert width.
- `targets`: sizes to reach instead of explicit indices; `fill_plan` turns them into explicit
  removals by ranking importance scores (lowest scores go first). A filled plan has `targets=None`.

Every kept KV group of a layer must keep the same number of query heads: transformers maps query
head i to key/value head i // (heads / kv_heads). head_dim is always kept.

JSON: dict keys are layer indices; JSON writes them as strings and pydantic reads them back as ints.
Example: drop layer 3, cut one head per KV group of layer 0 (8 heads in 4 groups), KV group 2 of
layer 1, and keep an MLP size of 2048 in every layer, chosen by importance:
    {"drop_layers": [3],
     "remove_heads": {"0": [1, 3, 5, 7]},
     "remove_kv_groups": {"1": [2]},
     "remove_neurons": {},
     "remove_hidden": [],
     "targets": {"intermediate_size": 2048}}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


def _not_a_boolean(value):
    # pydantic's lax mode reads JSON true/false as 1/0: {"drop_layers": [true]} dropped layer 1.
    if isinstance(value, bool):
        raise ValueError("true/false is not a number")
    return value


Index = Annotated[int, BeforeValidator(_not_a_boolean)]  # a layer, head, neuron... of the unpruned model
Count = Annotated[int | None, BeforeValidator(_not_a_boolean)]  # a size to reach


class PlanTargets(BaseModel):
    """Sizes to reach; filled into explicit removals by `fill_plan` from importance scores."""

    model_config = ConfigDict(extra="forbid")

    num_layers: Count = Field(None, ge=1, description="decoder layers kept")
    layer_method: Literal["block", "bi", "drop", "angular"] = Field(
        "block",
        description="block: drop the contiguous block whose removal raised the LM loss least; "
        "bi: drop the lowest Block-Importance layers; drop: drop the layers whose single removal "
        "raised the LM loss least; angular: drop the contiguous block whose input and output are "
        "closest in angular distance (Gromov et al.)",
    )
    heads_per_layer: Count = Field(None, ge=1, description="query heads kept in every layer")
    head_mode: Literal["within_groups", "whole_groups"] = Field(
        "within_groups",
        description="within_groups: keep the best heads of every KV group (same count per group); "
        "whole_groups: keep the best KV groups with all their query heads",
    )
    intermediate_size: Count = Field(
        None, ge=1, description="MLP neurons kept in every layer (mixture of experts: in every expert)"
    )
    experts_per_layer: Count = Field(
        None, ge=1, description="experts kept in every mixture-of-experts layer (at least top-k)"
    )
    hidden_size: Count = Field(None, ge=1, description="hidden channels kept")
    param_budget: Count = Field(
        None, ge=1, description="total parameters at most; shrinks MLP, then MLP and hidden together"
    )
    active_param_budget: Count = Field(
        None,
        ge=1,
        description="active parameters (what one token runs: top-k experts) at most; shrinks like "
        "param_budget",
    )

    def is_empty(self) -> bool:
        return all(
            v is None
            for v in (
                self.num_layers,
                self.heads_per_layer,
                self.intermediate_size,
                self.experts_per_layer,
                self.hidden_size,
                self.param_budget,
                self.active_param_budget,
            )
        )


class PrunePlan(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drop_layers: list[Index] = Field(default_factory=list)
    remove_heads: dict[int, list[Index]] = Field(default_factory=dict)
    remove_kv_groups: dict[int, list[Index]] = Field(default_factory=dict)
    remove_neurons: dict[int, list[Index]] = Field(default_factory=dict)
    remove_hidden: list[Index] = Field(default_factory=list)
    remove_experts: dict[int, list[Index]] = Field(default_factory=dict)
    remove_expert_neurons: dict[int, dict[int, list[Index]]] = Field(default_factory=dict)
    targets: PlanTargets | None = None

    @model_validator(mode="after")
    def _normalise(self) -> PrunePlan:
        # Sorted and de-duplicated so equal plans compare and serialise equally; empty entries dropped.
        self.drop_layers = sorted(set(self.drop_layers))
        self.remove_hidden = sorted(set(self.remove_hidden))
        for name in ("remove_heads", "remove_kv_groups", "remove_neurons", "remove_experts"):
            mapping = getattr(self, name)
            setattr(self, name, {k: sorted(set(v)) for k, v in sorted(mapping.items()) if v})
        nested = {
            layer: {e: sorted(set(v)) for e, v in sorted(per_expert.items()) if v}
            for layer, per_expert in sorted(self.remove_expert_neurons.items())
        }
        self.remove_expert_neurons = {layer: v for layer, v in nested.items() if v}
        return self

    def needs_filling(self) -> bool:
        return self.targets is not None and not self.targets.is_empty()

    def is_empty(self) -> bool:
        return not (
            self.drop_layers
            or self.remove_heads
            or self.remove_kv_groups
            or self.remove_neurons
            or self.remove_hidden
            or self.remove_experts
            or self.remove_expert_neurons
            or self.needs_filling()
        )


class PlanMessage(BaseModel):
    level: Literal["error", "warning"]
    field: str = Field(description='dotted path in the plan, e.g. "remove_heads.3"')
    text: str
    nearby: list[int] = Field(default_factory=list, description="valid values close to the one given")


class PlanError(ValueError):
    """A plan that cannot be applied; `messages` holds every reason."""

    def __init__(self, messages: list[PlanMessage]):
        self.messages = messages
        super().__init__("; ".join(f"{m.field}: {m.text}" for m in messages))


@dataclass
class ImportanceScores:
    """Per-unit importance, higher = more important (for loss arrays: a larger loss increase)."""

    heads: np.ndarray  # [L, H]
    neurons: np.ndarray  # [L, F]
    hidden: np.ndarray  # [D]
    layers: dict[str, np.ndarray] = field(
        default_factory=dict
    )  # block_importance, drop_loss, block_loss_k{k}, block_angular_k{k}
    experts: np.ndarray | None = None  # [L, E] mixture of experts only
    expert_neurons: np.ndarray | None = None  # [L, E, F] each expert's FFN channels
