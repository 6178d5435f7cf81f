"""The demo teacher's training recipe: a small Llama (GQA, untied embeddings) trained from scratch.

AdamW, linear warmup then cosine decay to a minimum LR, gradient clipping, a fixed seed, packed blocks
from `worker.engine.data.PackedTokens` (so a resumed run sees exactly the batches a straight run would).
Validation loss on a fixed slice of the validation split every `eval_every` steps makes the curve;
checkpoints are written atomically every `checkpoint_every` steps and a run resumes from the last one.
The result is saved with `save_pretrained` (vanilla Llama, no custom code) in bf16 with the tokenizer,
the curve (`training_curve.json`) and a `MODEL_CARD.md`.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from pydantic import BaseModel, Field

from worker.engine import atomic
from worker.engine.data import PackedTokens, read_documents
from worker.engine.distill.schedule import lr_at as scheduled_lr
from worker.engine.evaluation.perplexity import block_nll
from worker.engine.fingerprint import library_versions

CURVE_FILE = "training_curve.json"
CARD_FILE = "MODEL_CARD.md"
CHECKPOINT_FILE = "checkpoint.pt"


class TeacherRecipe(BaseModel):
    """Architecture and optimisation settings; the defaults are the shipped demo teacher's."""

    hidden_size: int = 256
    num_layers: int = 8
    num_heads: int = 8
    num_kv_heads: int = 4
    head_dim: int = 32
    intermediate_size: int = 768
    max_position_embeddings: int = 512
    seq_len: int = 256
    batch_size: int = 16
    steps: int = 1000
    peak_lr: float = 2e-3
    min_lr: float = 1e-4
    warmup_steps: int = 50
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    seed: int = 0
    eval_every: int = 50
    eval_blocks: int = Field(32, description="validation blocks (fixed, the first ones) per curve point")
    checkpoint_every: int = 50
    test_slice_blocks: int = Field(
        8, description="test blocks in the quick perplexity check recorded in the card"
    )
    data: str = "demo"


def build_config(recipe: TeacherRecipe, tokenizer):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=recipe.hidden_size,
        intermediate_size=recipe.intermediate_size,
        num_hidden_layers=recipe.num_layers,
        num_attention_heads=recipe.num_heads,
        num_key_value_heads=recipe.num_kv_heads,
        head_dim=recipe.head_dim,
        max_position_embeddings=recipe.max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        rms_norm_eps=1e-5,
        initializer_range=0.02,
    )


def lr_at(step: int, recipe: TeacherRecipe) -> float:
    """Linear warmup to peak_lr, then cosine decay reaching min_lr at the last step."""
    return scheduled_lr(
        step,
        peak=recipe.peak_lr,
        minimum=recipe.min_lr,
        warmup=recipe.warmup_steps,
        total=recipe.steps,
        minimum_at_last_step=True,
    )


def _optimizer(model, recipe: TeacherRecipe) -> torch.optim.AdamW:
    # No weight decay on norms (1-D parameters), as usual for LMs.
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=recipe.peak_lr, betas=recipe.betas)


def train_teacher(
    out_dir: str | Path,
    recipe: TeacherRecipe,
    *,
    tokenizer_path: str | Path | None = None,
    work_dir: str | Path | None = None,
    resume: bool = True,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> dict | None:
    """Train the teacher, save it in `out_dir` and return the summary recorded in its model card.

    `stop_after` ends the run after that step's checkpoint without saving (returns None): an interrupted
    run, as if killed there, that a later call resumes.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    from worker.demo import demo_tokenizer_path

    out_dir = Path(out_dir)
    work_dir = Path(work_dir) if work_dir is not None else out_dir.with_name(out_dir.name + ".work")
    tokenizer_path = Path(tokenizer_path) if tokenizer_path is not None else demo_tokenizer_path()
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    train = PackedTokens(tokenizer, read_documents(recipe.data, "train"), recipe.seq_len)
    val = PackedTokens(tokenizer, read_documents(recipe.data, "validation"), recipe.seq_len)
    log(f"train blocks {len(train)} ({train.num_tokens} tokens), validation blocks {len(val)}")
    work_dir.mkdir(parents=True, exist_ok=True)  # only once the inputs are known to be good

    torch.manual_seed(recipe.seed)
    model = LlamaForCausalLM(build_config(recipe, tokenizer))
    model.train()
    optimizer = _optimizer(model, recipe)
    curve: list[dict] = []
    start, elapsed_before = 0, 0.0
    checkpoint_path = work_dir / CHECKPOINT_FILE
    if resume and checkpoint_path.is_file():
        from worker.engine.distill.checkpoint import read_state_file

        state = read_state_file(checkpoint_path, weights_only=False)  # damaged: an error naming it
        if state["recipe"] != recipe.model_dump(mode="json"):
            raise ValueError(f"checkpoint in {work_dir} was made with another recipe; use a new --work-dir")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, curve, elapsed_before = state["step"], state["curve"], state["elapsed"]
        log(f"resumed from step {start}")

    tokens_per_step = recipe.batch_size * recipe.seq_len
    clock = time.perf_counter()
    window_loss, window_steps, window_clock = 0.0, 0, clock
    for step in range(start, recipe.steps):
        lr = lr_at(step, recipe)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = train.batch(step, recipe.batch_size, recipe.seed)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        window_loss += loss.item()
        window_steps += 1
        done = step + 1
        if done % 10 == 0 or done == recipe.steps:
            now = time.perf_counter()
            rate = window_steps * tokens_per_step / (now - window_clock)
            log(
                f"step {done}/{recipe.steps} loss {loss.item():.4f} lr {lr:.2e} grad_norm {grad_norm:.3f} tokens/s {rate:.0f}"
            )
        if done % recipe.eval_every == 0 or done == recipe.steps:
            val_loss, _ = block_nll(model, val, limit=recipe.eval_blocks)
            now = time.perf_counter()
            curve.append(
                {
                    "step": done,
                    "tokens": done * tokens_per_step,
                    "train_loss": window_loss / window_steps,
                    "val_loss": val_loss,
                    "val_ppl": math.exp(val_loss),
                    "lr": lr,
                    "elapsed": elapsed_before + now - clock,
                }
            )
            log(
                f"eval step {done} train_loss {window_loss / window_steps:.4f} val_loss {val_loss:.4f} val_ppl {math.exp(val_loss):.2f}"
            )
            window_loss, window_steps, window_clock = 0.0, 0, time.perf_counter()
        if done % recipe.checkpoint_every == 0 or done == recipe.steps:
            state = {
                "recipe": recipe.model_dump(mode="json"),
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": done,
                "curve": curve,
                "elapsed": elapsed_before + time.perf_counter() - clock,
            }
            atomic.torch_save(state, checkpoint_path)
        if stop_after is not None and done >= stop_after and done < recipe.steps:
            log(f"stopped after step {done}")
            return None
    train_seconds = elapsed_before + time.perf_counter() - clock
    return save_teacher(
        model,
        tokenizer,
        out_dir,
        recipe,
        curve,
        train_tokens=train.num_tokens,
        train_seconds=train_seconds,
        log=log,
    )


def save_teacher(
    model,
    tokenizer,
    out_dir: Path,
    recipe: TeacherRecipe,
    curve: list[dict],
    *,
    train_tokens: int,
    train_seconds: float,
    log=print,
) -> dict:
    """Save in bf16 (atomically), then measure the saved weights exactly as a user loads them."""
    from transformers import AutoModelForCausalLM

    val = PackedTokens(tokenizer, read_documents(recipe.data, "validation"), recipe.seq_len)
    test = PackedTokens(tokenizer, read_documents(recipe.data, "test"), recipe.seq_len)
    # bf16 rounding costs a little: measured on the curve's validation slice before and after saving.
    fp32_slice_loss, _ = block_nll(model, val, limit=recipe.eval_blocks)

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.to(torch.bfloat16).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    saved = AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32)
    val_loss, val_tokens = block_nll(saved, val)
    slice_val_loss, _ = block_nll(saved, val, limit=recipe.eval_blocks)
    test_loss, test_tokens = block_nll(saved, test)
    slice_loss, slice_tokens = block_nll(saved, test, limit=recipe.test_slice_blocks)
    summary = {
        "recipe": recipe.model_dump(mode="json"),
        "parameters": sum(p.numel() for p in saved.parameters()),
        "vocab_size": len(tokenizer),
        "steps": recipe.steps,
        "tokens_seen": recipe.steps * recipe.batch_size * recipe.seq_len,
        "train_tokens_per_epoch": train_tokens,
        "train_seconds": train_seconds,
        "validation": {
            "ppl": math.exp(val_loss),
            "tokens": val_tokens,
            "slice_ppl": math.exp(slice_val_loss),
            "slice_fp32_ppl": math.exp(fp32_slice_loss),
        },
        "test": {"ppl": math.exp(test_loss), "tokens": test_tokens},
        "test_slice": {
            "blocks": recipe.test_slice_blocks,
            "seq_len": recipe.seq_len,
            "ppl": math.exp(slice_loss),
            "tokens": slice_tokens,
        },
        "corpus_hash": _corpus_hash(recipe.data),
        "dtype": "bfloat16",
        "library_versions": library_versions(),
    }
    (tmp / CURVE_FILE).write_text(json.dumps({"summary": summary, "curve": curve}, indent=2) + "\n")
    (tmp / CARD_FILE).write_text(model_card(summary, curve))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    log(
        f"saved teacher to {out_dir}: validation ppl {summary['validation']['ppl']:.3f}, test ppl {summary['test']['ppl']:.3f}"
    )
    return summary


def _corpus_hash(data: str) -> str | None:
    if data != "demo":
        return None
    from worker.demo import corpus_manifest

    return corpus_manifest()["corpus_hash"]


def _curve_points(curve: list[dict], count: int = 12) -> list[dict]:
    if len(curve) <= count:
        return curve
    picks = sorted({round(i * (len(curve) - 1) / (count - 1)) for i in range(count)})
    return [curve[i] for i in picks]


_FLAGS = {
    "steps": "--steps",
    "batch_size": "--batch-size",
    "seq_len": "--seq-len",
    "peak_lr": "--lr",
    "warmup_steps": "--warmup",
    "seed": "--seed",
    "eval_every": "--eval-every",
    "checkpoint_every": "--checkpoint-every",
    "hidden_size": "--hidden",
    "num_layers": "--layers",
    "intermediate_size": "--intermediate",
    "data": "--data",
}


def reproduce_command(recipe: dict) -> str:
    """The `prunescope train-teacher` call that reruns a recipe (flags only where it differs from the default)."""
    defaults = TeacherRecipe().model_dump(mode="json")
    flags = [f"{flag} {recipe[field]}" for field, flag in _FLAGS.items() if recipe[field] != defaults[field]]
    return " ".join(["prunescope train-teacher", *flags])


def model_card(summary: dict, curve: list[dict]) -> str:
    r = summary["recipe"]
    rows = "\n".join(
        f"| {p['step']} | {p['tokens']:,} | {p['train_loss']:.4f} | {p['val_loss']:.4f} | {p['val_ppl']:.2f} | {p['lr']:.2e} |"
        for p in _curve_points(curve)
    )
    last = curve[-4:] if len(curve) >= 4 else curve
    flat = (
        f"Over the last {len(last)} curve points (steps {last[0]['step']}-{last[-1]['step']}) validation perplexity "
        f"went from {last[0]['val_ppl']:.2f} to {last[-1]['val_ppl']:.2f}."
        if last
        else ""
    )
    if len(curve) >= 2:
        drop = 1 - curve[-1]["val_ppl"] / curve[-2]["val_ppl"]
        # Say plainly whether the decay only slowed the curve or the model had converged.
        flat += (
            f" In the last interval it still fell {drop:.1%}: the LR schedule ended before convergence, and more "
            "tokens would lower it further."
            if drop > 0.005
            else f" In the last interval it changed by {-drop:+.1%}: the curve has flattened."
        )
    s = summary
    return f"""# Prunescope demo teacher

A small Llama-architecture causal LM (GQA, untied embeddings) trained from scratch by
`prunescope train-teacher` on the demo corpus (CPython standard library sources, PSF-2.0; see
`worker/demo/corpus/LICENSE.md`). It exists so the app, CLI and examples work offline. It is a
toy-scale model of Python source code, not a general language model.

## Architecture
- hidden {r["hidden_size"]}, {r["num_layers"]} layers, {r["num_heads"]} query heads over {r["num_kv_heads"]} KV heads
  (head_dim {r["head_dim"]}), SwiGLU MLP {r["intermediate_size"]}, max positions {r["max_position_embeddings"]},
  vocab {s["vocab_size"]} (byte-level BPE) (`<|pad|>`=0, `<|bos|>`=1, `<|eos|>`=2)
- parameters: {s["parameters"]:,}; weights stored as {s["dtype"]} safetensors; loads with
  `AutoModelForCausalLM.from_pretrained(path)` (no custom code)

## Recipe
- AdamW (betas {tuple(r["betas"])}, weight decay {r["weight_decay"]} on matrices, none on norms), peak LR {r["peak_lr"]},
  {r["warmup_steps"]} linear warmup steps, cosine decay to {r["min_lr"]} at the last step, grad-norm clip {r["grad_clip"]}
- seed {r["seed"]}; batch {r["batch_size"]} x {r["seq_len"]} tokens of packed documents (EOS between documents),
  a seeded permutation of blocks per epoch
- steps: {s["steps"]}; tokens seen: {s["tokens_seen"]:,} ({s["tokens_seen"] / s["train_tokens_per_epoch"]:.2f} epochs of
  {s["train_tokens_per_epoch"]:,} train tokens); training time {s["train_seconds"] / 60:.1f} min on 2 shared CPU cores
- corpus hash: `{s["corpus_hash"]}`
- reproduce: `{reproduce_command(r)}` (the shipped run used `--threads 2` with `OMP_WAIT_POLICY=PASSIVE`,
  which keeps two threads from spinning on a shared, oversubscribed CPU)

## Results (next-token perplexity over blocks of {r["seq_len"]} tokens, saved bf16 weights loaded in float32)
- validation: **{s["validation"]["ppl"]:.4f}** over {s["validation"]["tokens"]:,} tokens
  (on the curve's slice: {s["validation"]["slice_ppl"]:.4f} saved, {s["validation"]["slice_fp32_ppl"]:.4f} with the float32 weights before saving)
- test: **{s["test"]["ppl"]:.4f}** over {s["test"]["tokens"]:,} tokens
- test slice (first {s["test_slice"]["blocks"]} test blocks, checked by `tests/engine/test_teacher.py`):
  **{s["test_slice"]["ppl"]:.4f}** over {s["test_slice"]["tokens"]:,} tokens

## Validation curve (first {r["eval_blocks"]} validation blocks every {r["eval_every"]} steps; full curve in `{CURVE_FILE}`)
| step | tokens | train loss | val loss | val ppl | lr |
|---:|---:|---:|---:|---:|---:|
{rows}

{flat}

Library versions: {", ".join(f"{k} {v}" for k, v in s["library_versions"].items() if v)}.
"""
