"""Forward hooks that turn one inference pass into width and Block-Importance scores.

Where each score is read (through the family adapter, so every supported architecture works alike):
- heads:   input of the attention output projection (`attn_out`), split per head, L2 over head_dim;
- neurons: input of the down projection (`mlp_out`): post-activation, gated where the MLP is gated; |x|;
- hidden:  |output| of every norm (each layer's `adapter.norms` and the final norm), one row per norm;
           every listed norm acts on the residual stream's width: pre-norms (Llama...), post-norms that
           normalise a sublayer's output before it joins the residual (OLMo 2), or both (Gemma: four);
- mixture-of-experts layers (no single down projection; `neurons` is then empty), per expert:
  routed share (1 where the router's top-k picked the expert, else 0), router probability (softmax over
  all experts), contribution (|routing weight x expert output|, 0 where not routed) and its FFN channels
  (|input of its down projection| over the tokens routed to it). The experts' forward hook re-runs
  each expert on its routed tokens to read these (about one more MoE-MLP forward per batch);
- block importance: 1 - cos(layer input, layer output) per token;
- angular distance of each block of k consecutive layers (Gromov et al., arXiv 2403.17887):
  arccos(cos(input of layer i, output of layer i + k - 1)) / pi per token, read in the same pass.
The same layer hooks can also keep each layer's input and call arguments for the layer scans
(`layer_scan.py`), so the scans need no extra pass to build their prefixes.
"""

from __future__ import annotations

import math
from collections import deque

import torch
from torch import nn

from worker.engine.adapters import Adapter
from worker.engine.importance.accumulators import BatchContext, RunningSums, TokenSubsetSums


class LayerCall:
    """One decoder layer's call as the model made it: its hidden-state input and the other arguments
    (causal mask, rotary position embeddings, position ids...), so the layer can be re-run alone."""

    def __init__(self, args: tuple, kwargs: dict):
        if args:
            self.hidden, self.args, self.kwargs = args[0], args[1:], dict(kwargs)
        else:
            kwargs = dict(kwargs)
            self.hidden, self.args, self.kwargs = kwargs.pop("hidden_states"), (), kwargs

    def run(self, layer: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return layer_output(layer(hidden, *self.args, **self.kwargs))


def layer_output(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


class ImportanceHooks:
    """Registers the hooks on enter and removes them on exit (also on errors).

    `record_calls=True` keeps every layer's `LayerCall` of the current batch in `self.calls`
    (memory: num_layers x batch x seq x hidden in the model's dtype, released at the next batch).
    `angular_block=k` scores every block of k consecutive layers by the angular distance between the
    block's input and output without any extra layer forward: the layer hook keeps references to the
    last k layer inputs (memory: k x batch x seq x hidden in the model's dtype, no copies; released at
    the end of the batch) and, when layer i + k - 1 returns, measures |input_i - output_{i+k-1}|.
    """

    def __init__(
        self,
        model: nn.Module,
        adapter: Adapter,
        *,
        block_importance: bool,
        record_calls: bool,
        angular_block: int | None = None,
        device: torch.device | None = None,
    ):
        self.model, self.adapter = model, adapter
        self.layers = adapter.layers(model)
        self.norms = [n for layer in self.layers for n in adapter.norms(layer)] + [adapter.final_norm(model)]
        self.head_dim = adapter.head_dim(model)
        self.block_importance, self.record_calls = block_importance, record_calls
        device = device or next(model.parameters()).device  # given when the model is on "meta"
        num_layers = len(self.layers)
        self.moe = adapter.is_moe_layer(self.layers[0])
        # Per-layer widths: a pruned (non-uniform) model's layers differ. The sums are padded to the
        # widest layer; columns past a layer's width stay 0 and `heads_valid` / `neurons_valid` say
        # how many are real (`result.py` turns the padding into NaN scores).
        self.layer_heads = [adapter.layer_num_heads(layer, self.head_dim) for layer in self.layers]
        self.layer_neurons = [
            0 if self.moe else adapter.layer_intermediate_size(layer) for layer in self.layers
        ]
        heads, neurons = max(self.layer_heads), max(self.layer_neurons)
        self.uniform = len(set(self.layer_heads)) == 1 and len(set(self.layer_neurons)) == 1
        hidden = adapter.embed(model).weight.shape[1]
        self.heads = RunningSums(num_layers, heads, device)
        self.neurons = RunningSums(num_layers, neurons, device)
        self.hidden = RunningSums(len(self.norms), hidden, device)
        self.bi = RunningSums(num_layers, 1, device)
        self.axes = (self.heads, self.neurons, self.hidden, self.bi)
        self.experts: dict[str, RunningSums] = {}  # EXPERT_AXES, [layers, experts] each
        if self.moe:
            if not all(adapter.is_moe_layer(layer) for layer in self.layers):
                raise ValueError("importance of mixture-of-experts models needs experts in every layer")
            E = adapter.layer_num_experts(self.layers[0])
            widths = {
                (adapter.layer_num_experts(layer), adapter.layer_intermediate_size(layer))
                for layer in self.layers
            }
            if len(widths) > 1:
                raise ValueError(
                    "importance of a mixture-of-experts model whose layers differ in experts or expert "
                    "width is not supported yet (only its attention heads may differ per layer)"
                )
            self.expert_width = adapter.layer_intermediate_size(self.layers[0])
            self.experts = {name: RunningSums(num_layers, E, device) for name in EXPERT_AXES}
            self.expert_neurons = TokenSubsetSums(num_layers, E * self.expert_width, device)
            self.axes += (*self.experts.values(), self.expert_neurons)
        self.angular_block = angular_block
        self.angular = None
        if angular_block:
            self.angular = RunningSums(num_layers - angular_block + 1, 1, device)  # one row per block start
            self.axes += (self.angular,)
        self.ctx: BatchContext | None = None
        self.layer0 = 0  # first layer of the batch's window (begin_batch)
        self._recent_inputs: deque | None = None
        self.calls: list[LayerCall | None] = [None] * num_layers
        self.enabled = True  # off while the layer scans re-run layers
        self._handles: list = []

    # ---- registration ---------------------------------------------------------------------
    def __enter__(self) -> ImportanceHooks:
        for i, layer in enumerate(self.layers):
            self._handles.append(self.adapter.attn_out(layer).register_forward_pre_hook(self._heads_hook(i)))
            if self.moe:
                self._handles.append(self.adapter.router(layer).register_forward_hook(self._router_hook(i)))
                self._handles.append(self.adapter.experts(layer).register_forward_hook(self._experts_hook(i)))
            else:
                self._handles.append(
                    self.adapter.mlp_out(layer).register_forward_pre_hook(self._neurons_hook(i))
                )
            if self.block_importance or self.record_calls or self.angular_block:
                self._handles.append(layer.register_forward_hook(self._layer_hook(i), with_kwargs=True))
        for j, norm in enumerate(self.norms):
            self._handles.append(norm.register_forward_hook(self._hidden_hook(j)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self.calls = [None] * len(self.layers)
        self._recent_inputs = None  # an interrupted batch must not keep activations alive

    def begin_batch(self, ctx: BatchContext, layers: range | None = None, final_norm: bool = True) -> None:
        """Start a batch that will run `layers` (default: all) and, with `final_norm`, the final norm.

        A layer-streamed pass runs one layer over every batch at a time (`streamed.py`): each call
        then covers `range(i, i + 1)` without the final norm, and a last one only the final norm
        (`range(L, L)`); the sums of the layers outside the window are left untouched.
        """
        self.ctx = ctx
        self.calls = [None] * len(self.layers)  # drop the previous batch's cache before this one runs
        num_layers, heads = self.heads.rows, self.heads.units
        layers = range(num_layers) if layers is None else layers
        if self.angular_block and len(layers) != num_layers:
            raise ValueError("the hooks measure the angular distance only when one pass runs every layer")
        self.layer0 = layers.start
        per_layer = (len(self.norms) - 1) // num_layers
        for axis in (self.heads, self.neurons, self.bi, *self.experts.values()):
            axis.begin_batch(ctx, layers)
        if self.moe:
            self.expert_neurons.begin_batch(ctx, layers)
        self.hidden.begin_batch(ctx, range(layers.start * per_layer, layers.stop * per_layer + final_norm))
        if self.angular_block:
            self.angular.begin_batch(ctx)
        # Small per-token values, reduced for all layers at once in end_batch (fewer kernel launches).
        batch, seq = ctx.mask.shape
        device = self.heads.sums.device
        self.head_norms = torch.zeros((len(layers), batch, seq, heads), dtype=torch.float32, device=device)
        # |layer input|, |layer output|, |input - output| per token, for 1 - cos (rows 0 and 1 are
        # also the angular distance's block input and output norms)
        self.bi_norms = torch.ones((3, len(layers), batch, seq), dtype=torch.float32, device=device)
        self._last_output = None  # (tensor, row): layer i's output is layer i + 1's input
        if self.angular_block:
            # |input of layer i - output of layer i + k - 1| per token, one row per block start i
            self.angular_diff = torch.ones(
                (self.angular.rows, batch, seq), dtype=torch.float32, device=device
            )
            self._recent_inputs = deque(maxlen=self.angular_block)  # (layer, input): the last k layers

    def end_batch(self) -> None:
        self.heads.add_all_rows(self.head_norms, self.ctx)
        if self.block_importance:
            n_in, n_out, n_diff = self.bi_norms
            self.bi.add_all_rows(one_minus_cosine_from_norms(n_in, n_out, n_diff).unsqueeze(-1), self.ctx)
        if self.angular_block:
            blocks = self.angular.rows  # block i: input of layer i, output of layer i + k - 1
            n_in, n_out = self.bi_norms[0, :blocks], self.bi_norms[1, self.angular_block - 1 :]
            distance = angular_distance_from_norms(n_in, n_out, self.angular_diff)
            self.angular.add_all_rows(distance.unsqueeze(-1), self.ctx)
            self.angular_diff = self._recent_inputs = None
        for axis in self.axes:
            axis.end_batch(self.ctx)
        self.head_norms = self.bi_norms = self._last_output = None

    # ---- the hooks ------------------------------------------------------------------------
    def _heads_hook(self, i: int):
        def hook(module, args):
            if self.enabled:
                x = args[0]
                per_head = x.reshape(*x.shape[:-1], -1, self.head_dim)  # a view when x is contiguous
                out = self.head_norms[i - self.layer0]
                if per_head.shape[-2] == out.shape[-1]:
                    torch.linalg.vector_norm(per_head, dim=-1, dtype=torch.float32, out=out)
                else:  # a narrower layer of a non-uniform model: its heads fill the first columns
                    out[..., : per_head.shape[-2]] = torch.linalg.vector_norm(
                        per_head, dim=-1, dtype=torch.float32
                    )

        return hook

    def _neurons_hook(self, i: int):
        def hook(module, args):
            if self.enabled:
                self.neurons.add(i, args[0], self.ctx)  # the reductions take |x| themselves

        return hook

    def _router_hook(self, i: int):
        def hook(module, args, output):
            if not self.enabled:
                return
            logits, _weights, chosen = output
            batch, seq = self.ctx.mask.shape
            probs = torch.softmax(logits.float(), dim=-1)
            routed = torch.zeros_like(probs).scatter_(1, chosen, 1.0)
            self.experts["experts_prob"].add(i, probs.view(batch, seq, -1), self.ctx)
            self.experts["experts_routed"].add(i, routed.view(batch, seq, -1), self.ctx)

        return hook

    def _experts_hook(self, i: int):
        def hook(module, args, output):
            if not self.enabled:
                return
            hidden, chosen, weights = args[:3]
            batch, seq = self.ctx.mask.shape
            real = self.ctx.mask.reshape(-1) != 0
            width = self.expert_width
            contribution = torch.zeros(chosen.shape[0], module.gate_up_proj.shape[0], device=hidden.device)
            for e in torch.unique(chosen).tolist():
                token, slot = torch.where(chosen == e)
                gate, up = nn.functional.linear(hidden[token], module.gate_up_proj[e]).chunk(2, dim=-1)
                h = module.act_fn(gate) * up
                y = nn.functional.linear(h, module.down_proj[e]) * weights[token, slot, None]
                contribution[token, e] = torch.linalg.vector_norm(y, dim=-1, dtype=torch.float32)
                keep = real[token]
                self.expert_neurons.add_tokens(
                    i, slice(e * width, (e + 1) * width), token[keep] // seq, h[keep]
                )
            self.experts["experts_contribution"].add(i, contribution.view(batch, seq, -1), self.ctx)

        return hook

    def _hidden_hook(self, j: int):
        def hook(module, args, output):
            if self.enabled:
                self.hidden.add(j, layer_output(output), self.ctx)

        return hook

    def _layer_hook(self, i: int):
        def hook(module, args, kwargs, output):
            if not self.enabled:
                return
            call = LayerCall(args, kwargs)
            if self.record_calls:
                self.calls[i] = call
            if self.block_importance or self.angular_block:
                x_in, x_out = call.hidden, layer_output(output)
                row = i - self.layer0
                n_in, n_out = self.bi_norms[0, row], self.bi_norms[1, row]
                last = self._last_output
                if last is not None and last[0] is x_in:
                    n_in.copy_(self.bi_norms[1, last[1]])  # already measured as the previous layer's output
                else:
                    torch.linalg.vector_norm(x_in, dim=-1, dtype=torch.float32, out=n_in)
                torch.linalg.vector_norm(x_out, dim=-1, dtype=torch.float32, out=n_out)
                if self.block_importance:
                    torch.linalg.vector_norm(
                        x_in - x_out, dim=-1, dtype=torch.float32, out=self.bi_norms[2, row]
                    )
                if self.angular_block:
                    self._angular_step(i, x_in, x_out)
                self._last_output = (x_out, row)

        return hook

    def _angular_step(self, i: int, x_in: torch.Tensor, x_out: torch.Tensor) -> None:
        """Keep layer i's input; when layer i closes a block (starting at i - k + 1), measure its diff."""
        self._recent_inputs.append((i, x_in))  # a reference, not a copy
        start = i - self.angular_block + 1
        if start < 0:
            return
        first, block_in = self._recent_inputs[0]
        if first != start:  # layers ran out of order: no consistent block input to compare with
            raise RuntimeError(
                f"angular distance: expected layer {start}'s input, the cache holds layer {first}'s"
            )
        torch.linalg.vector_norm(block_in - x_out, dim=-1, dtype=torch.float32, out=self.angular_diff[start])


# Per-expert axes of mixture-of-experts layers (artifact arrays of the same names).
EXPERT_AXES = ("experts_routed", "experts_prob", "experts_contribution")


def one_minus_cosine_from_norms(n_a: torch.Tensor, n_b: torch.Tensor, n_diff: torch.Tensor) -> torch.Tensor:
    """1 - cos(a, b) from |a|, |b| and |a - b| (float32), since |a - b|^2 = |a|^2 + |b|^2 - 2 a.b:

        1 - cos = (|a - b|^2 - (|a| - |b|)^2) / (2 |a| |b|)

    Three norms whose float32 accumulation is fused into the reduction (no float32 copies of a and b
    for bf16 models) and no 1 - (cos ~ 1) cancellation.
    """
    return ((n_diff * n_diff - (n_a - n_b) ** 2) / (2 * n_a * n_b).clamp_min(1e-30)).clamp(0.0, 2.0)


def angular_distance_from_norms(n_a: torch.Tensor, n_b: torch.Tensor, n_diff: torch.Tensor) -> torch.Tensor:
    """arccos(cos(a, b)) / pi in [0, 1] from |a|, |b| and |a - b| (float32).

    Taken as 2 asin(sqrt((1 - cos) / 2)) / pi (the half-angle identity 1 - cos t = 2 sin^2(t / 2)),
    with 1 - cos from `one_minus_cosine_from_norms`: arccos of a float32 cos near 1 would lose half
    its digits (its slope is infinite there), asin of the small half-angle sine does not.
    """
    u = one_minus_cosine_from_norms(n_a, n_b, n_diff)  # in [0, 2]
    return torch.asin(torch.sqrt(u * 0.5).clamp_max(1.0)) * (2.0 / math.pi)
