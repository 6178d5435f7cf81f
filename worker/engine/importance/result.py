"""`ImportanceResult`: the running sums of one importance run, and every score derived from them.

Torch-free (numpy, scipy, safetensors), so the backend can load an artifact and rank from it.

Stored arrays (names in the artifact; halves = calibration samples i % 2, see `stats.py`):
    heads             [2, 4, L, H]   sums of per-token head L2 norms (input of the attention out proj)
    neurons           [2, 4, L, F]   sums of per-token |down-proj input|
    hidden            [2, 4, N, D]   sums of per-token |norm output|, one row per norm (2 per layer + final)
    block_importance  [2, 4, L, 1]   sums of per-token 1 - cos(layer input, layer output)
  mixture of experts only (`neurons` is then [2, 4, L, 0]):
    experts_routed    [2, 4, L, E]   sums of per-token "routed to expert e" (1 / 0): the routed share
    experts_prob      [2, 4, L, E]   sums of per-token router probabilities (softmax over all experts)
    experts_contribution [2, 4, L, E] sums of per-token |routing weight x expert output| (0: not routed)
    expert_neurons    [2, 4, L, E*F] sums of per-token |input of expert e's down projection| (routed
                                     tokens; expert-major: expert e's channels are e*F .. e*F + F - 1)
    block_angular_k{k} [2, 4, L - k + 1, 1]  sums of per-token arccos(cos(input of layer i, output of
                                     layer i + k - 1)) / pi (scan "angular"; Gromov et al. 2403.17887)
  non-uniform models only (a pruned model whose layers differ in width; H, F = the widest layer's):
    heads_valid       [L]            heads of layer l: columns >= heads_valid[l] of `heads` are padding
    neurons_valid     [L]            the same for `neurons` (padding sums are 0, their scores NaN)
    samples           [2]            samples per half
    loss_base         [2]            summed next-token CE of the full model, per half
    loss_drop         [2, L]         the same with layer i removed               (scan "drop")
    loss_block_k{k}   [2, L - k + 1] the same with layers i .. i + k - 1 removed  (scan "block")
    loss_tokens       [2]            target tokens per half (the loss sums' denominator)
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field

import numpy as np

from worker.engine.importance.artifact import read_artifact, write_artifact
from worker.engine.importance.stats import check_reductions, reduce_axis
from worker.engine.plan import ImportanceScores

WIDTH_AXES = ("heads", "neurons", "hidden")
EXPERT_METRICS = {  # the names plans and the API use -> artifact arrays
    "routed": "experts_routed",
    "prob": "experts_prob",
    "contribution": "experts_contribution",
}
SCANS = ("bi", "drop", "block", "angular")
DEFAULT_SCANS = ("bi", "drop", "block")  # what the CLI and API run unless told otherwise


@dataclass
class ImportanceResult:
    arrays: dict[str, np.ndarray]
    manifest: dict = field(default_factory=dict)

    # ---- derived scores -------------------------------------------------------------------
    @property
    def block_size(self) -> int | None:
        scans = self.manifest.get("scans", [])
        return self.manifest.get("block_size") if "block" in scans or "angular" in scans else None

    @property
    def samples(self) -> int:
        return int(self.arrays["samples"].sum())

    def _width(self, axis: str, batch: str, seq: str, half: int | None) -> np.ndarray:
        scores = reduce_axis(self.arrays[axis], self.arrays["samples"], batch, seq, half)
        valid = self.arrays.get(f"{axis}_valid")
        if valid is not None:  # a non-uniform model: padding columns are no unit, so no score
            padding = np.arange(scores.shape[-1])[None, :] >= np.asarray(valid)[:, None]
            scores = np.where(padding, np.nan, scores)
        return scores

    def _loss_increase(self, name: str, half: int | None) -> np.ndarray:
        """Mean next-token loss with the cut minus the full model's (higher = the cut layers matter more)."""
        sums, base, tokens = self.arrays[name], self.arrays["loss_base"], self.arrays["loss_tokens"]
        if half is None:
            sums, base, tokens = sums.sum(axis=0), base.sum(), tokens.sum()
        else:
            sums, base, tokens = sums[half], base[half], tokens[half]
        tokens = max(float(tokens), 1.0)
        return sums.astype(np.float64) / tokens - float(base) / tokens

    def base_loss(self) -> float:
        return float(self.arrays["loss_base"].sum() / max(float(self.arrays["loss_tokens"].sum()), 1.0))

    def layer_scores(self, batch: str = "l2", seq: str = "mean", half: int | None = None) -> dict:
        layers: dict[str, np.ndarray] = {}
        if "block_importance" in self.arrays:
            layers["block_importance"] = self._width("block_importance", batch, seq, half)[:, 0]
        if "loss_drop" in self.arrays:
            layers["drop_loss"] = self._loss_increase("loss_drop", half)
        for name in sorted(self.arrays):
            if name.startswith("loss_block_k"):  # -> "block_loss_k{k}"
                layers["block_loss_" + name.removeprefix("loss_block_")] = self._loss_increase(name, half)
        for name in sorted(self.arrays):
            if name.startswith("block_angular_k"):  # one value per block start, aggregated like BI
                layers[name] = self._width(name, batch, seq, half)[:, 0]
        return layers

    @property
    def is_moe(self) -> bool:
        return "experts_routed" in self.arrays

    def expert_scores(self, batch: str = "l2", seq: str = "mean", half: int | None = None) -> dict:
        """{metric: [L, E]} for every metric of EXPERT_METRICS (empty for dense models)."""
        if not self.is_moe:
            return {}
        return {metric: self._width(name, batch, seq, half) for metric, name in EXPERT_METRICS.items()}

    def expert_neuron_scores(self, batch: str = "l2", seq: str = "mean", half: int | None = None):
        """[L, E, F]: each expert's FFN channels (None for dense models)."""
        if not self.is_moe:
            return None
        flat = self._width("expert_neurons", batch, seq, half)
        L, E = self.arrays["experts_routed"].shape[2:]
        return flat.reshape(L, E, -1)

    def scores(
        self,
        batch: str = "l2",
        seq: str = "mean",
        half: int | None = None,
        expert_metric: str = "contribution",
    ) -> ImportanceScores:
        """Scores for one aggregation (default: the papers' best, L2 over batch of per-sample seq means).

        Higher = more important on every axis. Hidden channels: each norm's scores, summed over norms.
        `half` (0 or 1) restricts to one half of the calibration samples. Mixture of experts: experts
        are ranked by `expert_metric` (routed | prob | contribution).
        """
        check_reductions(batch, seq)
        if expert_metric not in EXPERT_METRICS:
            raise ValueError(
                f"unknown expert metric {expert_metric!r}; choose from {', '.join(EXPERT_METRICS)}"
            )
        experts = self.expert_scores(batch, seq, half)
        return ImportanceScores(
            heads=self._width("heads", batch, seq, half),
            neurons=self._width("neurons", batch, seq, half),
            hidden=self._width("hidden", batch, seq, half).sum(axis=0),
            layers=self.layer_scores(batch, seq, half),
            experts=experts.get(expert_metric),
            expert_neurons=self.expert_neuron_scores(batch, seq, half),
        )

    def rank_stability(self, batch: str = "l2", seq: str = "mean") -> dict[str, float]:
        """Per axis, Spearman rank correlation between the scores of the two calibration halves.

        Heads and neurons are ranked over all layers at once (flattened; a non-uniform model's padding
        left out). Values near 1 mean the
        calibration set is large enough for that axis; NaN when a half is empty or scores are constant.
        """
        first, second = self.scores(batch, seq, half=0), self.scores(batch, seq, half=1)
        pairs = {axis: (getattr(first, axis), getattr(second, axis)) for axis in WIDTH_AXES}
        pairs.update({name: (first.layers[name], second.layers[name]) for name in first.layers})
        if self.is_moe:  # every expert metric, and the experts' channels (all experts at once)
            a, b = self.expert_scores(batch, seq, half=0), self.expert_scores(batch, seq, half=1)
            pairs.update({f"experts_{m}": (a[m], b[m]) for m in EXPERT_METRICS})
            pairs["expert_neurons"] = (first.expert_neurons, second.expert_neurons)
        stability = {}
        for axis, (a, b) in pairs.items():
            with warnings.catch_warnings():
                warnings.simplefilter(
                    "ignore"
                )  # constant input: scipy warns and returns NaN; NaN is the answer
                a, b = np.ravel(a), np.ravel(b)
                real = ~(np.isnan(a) & np.isnan(b))  # padding of a non-uniform model's narrower layers
                a, b = a[real], b[real]
                rho = _spearman(a, b) if np.size(a) > 1 else float("nan")
            stability[axis] = float(rho)
        return stability

    # ---- artifact -------------------------------------------------------------------------
    def save(self, directory: str | os.PathLike):
        return write_artifact(directory, self.arrays, self.manifest)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> ImportanceResult:
        arrays, manifest = read_artifact(directory)
        return cls(arrays=arrays, manifest=manifest)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    # scipy.stats is imported here, not at the top: it is 1.5 s of every API process's start (the API
    # reads artifacts through this module) and only the stability check needs it.
    from scipy.stats import spearmanr

    return spearmanr(a, b).statistic
