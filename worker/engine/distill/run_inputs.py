"""What a run reads besides its config, recorded in its checkpoint so that a resume on other inputs is
refused: continuing a run with another teacher or other training data would not be the run it claims
to continue (a stream checks its own files and settings in `TokenStream.load_state_dict`)."""

from __future__ import annotations

import hashlib

import numpy as np

from worker.engine.fingerprint import weights_sample_sha256
from worker.engine.streaming import is_token_stream


def run_inputs(teacher, train) -> dict:
    """{"teacher": sampled weights hash or None, "train": in-memory blocks' shape and hash or None}."""
    inputs: dict = {"teacher": None if teacher is None else weights_sample_sha256(teacher), "train": None}
    if not is_token_stream(train):  # in-memory blocks
        blocks = np.ascontiguousarray(train.blocks, dtype=np.int64)
        inputs["train"] = {"blocks": list(blocks.shape), "sha256": hashlib.sha256(blocks).hexdigest()}
    return inputs


def check_inputs(saved: dict | None, now: dict) -> None:
    """ValueError when this run's inputs are not the checkpoint's (None: a checkpoint from before they
    were recorded, accepted as it was then)."""
    if saved is None:
        return
    if saved["teacher"] != now["teacher"]:
        if saved["teacher"] is None or now["teacher"] is None:
            had = "with a teacher" if saved["teacher"] else "without a teacher"
            raise ValueError(f"cannot resume: the checkpoint was made {had}, this run has {_teacher(now)}")
        raise ValueError("cannot resume: the teacher's weights are not those the checkpoint was made with")
    was, now_train = saved["train"], now["train"]
    if was is None or now_train is None or was == now_train:
        return  # streamed on either side: `_restore_stream` says which
    (n_was, len_was), (n_now, len_now) = was["blocks"], now_train["blocks"]
    if len_was != len_now:
        raise ValueError(f"cannot resume: seq_len is {len_now} but the checkpoint was made with {len_was}")
    detail = "other tokens" if n_was == n_now else f"{n_now} blocks, the checkpoint's had {n_was}"
    raise ValueError(
        f"cannot resume: the training data are not those the checkpoint was made with ({detail})"
    )


def _teacher(inputs: dict) -> str:
    return "one" if inputs["teacher"] else "none"
