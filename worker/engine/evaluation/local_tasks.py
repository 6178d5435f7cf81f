"""Offline lm-evaluation-harness tasks built from held-out text.

Two tasks, written as YAML + JSON-lines into a directory that `lm_eval.tasks.TaskManager` includes:

- `prunescope_cloze` (multiple_choice; acc, acc_norm): given up to `context_lines` lines of a held-out
  document, pick its true next line among 3 distractor lines of similar length taken from *other*
  documents. Chance is 25%.
- `prunescope_rolling` (loglikelihood_rolling; word_perplexity, byte_perplexity, bits_per_byte): the
  held-out documents (cut to `rolling_chars` characters) scored as a whole.

Generation is deterministic (seeded) and the directory name is a hash of the inputs, so the same
documents always give the same task files and a rebuilt cache is reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

CLOZE_TASK = "prunescope_cloze"
ROLLING_TASK = "prunescope_rolling"
LOCAL_TASKS = (CLOZE_TASK, ROLLING_TASK)
TASK_FORMAT_VERSION = 1


def default_cache_dir(root: str | os.PathLike | None = None) -> Path:
    """Where local tasks are built under the cache `root` (the platform's `Settings.cache`, from
    PRUNESCOPE_CACHE); without one, ~/.cache/prunescope."""
    return Path(root or Path.home() / ".cache" / "prunescope") / "lm_eval_tasks"


def _lines(doc: str, min_chars: int, max_chars: int) -> list[int]:
    lines = doc.split("\n")
    return [i for i, line in enumerate(lines) if i >= 1 and min_chars <= len(line.strip()) <= max_chars]


def cloze_items(
    documents: Sequence[str],
    *,
    num_items: int = 200,
    context_lines: int = 6,
    choices: int = 4,
    seed: int = 0,
    min_chars: int = 16,
    max_chars: int = 100,
) -> list[dict]:
    """{"context", "choices", "label"} items; see the module docstring."""
    rng = random.Random(seed)
    pool = []  # (doc index, line index)
    for d, doc in enumerate(documents):
        pool.extend((d, i) for i in _lines(doc, min_chars, max_chars))
    if len({d for d, _ in pool}) < 2:
        raise ValueError("need at least two documents with usable lines to build cloze distractors")
    split_docs = [doc.split("\n") for doc in documents]
    rng.shuffle(pool)
    items = []
    for d, i in pool:
        if len(items) >= num_items:
            break
        lines = split_docs[d]
        true_line = lines[i].strip()
        indent = lines[i][: len(lines[i]) - len(lines[i].lstrip())]
        context = "\n".join(lines[max(0, i - context_lines) : i]) + "\n" + indent
        candidates = [(od, oi) for od, oi in rng.sample(pool, min(len(pool), 60)) if od != d]
        # Distractors of similar length, so acc is not a length heuristic.
        candidates.sort(key=lambda x: abs(len(split_docs[x[0]][x[1]].strip()) - len(true_line)))
        distractors = []
        for od, oi in candidates:
            text = split_docs[od][oi].strip()
            if text != true_line and text not in distractors:
                distractors.append(text)
            if len(distractors) == choices - 1:
                break
        if len(distractors) < choices - 1:
            continue
        options = distractors + [true_line]
        rng.shuffle(options)
        items.append({"context": context, "choices": options, "label": options.index(true_line)})
    if not items:
        raise ValueError("no cloze items could be built from these documents")
    return items


def rolling_items(documents: Sequence[str], *, num_docs: int = 40, rolling_chars: int = 2000) -> list[dict]:
    return [{"text": doc[:rolling_chars]} for doc in documents[:num_docs] if doc.strip()]


def _yaml_cloze(data_file: Path) -> str:
    return f"""task: {CLOZE_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data_file))}
output_type: multiple_choice
test_split: test
doc_to_text: "{{{{context}}}}"
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
metadata:
  version: {TASK_FORMAT_VERSION}.0
"""


def _yaml_rolling(data_file: Path) -> str:
    return f"""task: {ROLLING_TASK}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {json.dumps(str(data_file))}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: bits_per_byte
    aggregation: bits_per_byte
    higher_is_better: false
metadata:
  version: {TASK_FORMAT_VERSION}.0
"""


def build_local_tasks(
    documents: Sequence[str],
    cache_dir: str | os.PathLike | None = None,
    *,
    seed: int = 0,
    num_cloze: int = 200,
    num_rolling: int = 40,
    rolling_chars: int = 2000,
) -> Path:
    """Directory holding both tasks' YAML and data for these documents (built once, atomically)."""
    documents = list(documents)
    key = hashlib.sha256(
        json.dumps([TASK_FORMAT_VERSION, seed, num_cloze, num_rolling, rolling_chars, documents]).encode()
    ).hexdigest()[:16]
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    target = root / key
    if (target / f"{CLOZE_TASK}.yaml").exists() and (target / f"{ROLLING_TASK}.yaml").exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    try:
        for name, items in (
            (CLOZE_TASK, cloze_items(documents, num_items=num_cloze, seed=seed)),
            (ROLLING_TASK, rolling_items(documents, num_docs=num_rolling, rolling_chars=rolling_chars)),
        ):
            with open(tmp / f"{name}.jsonl", "w", encoding="utf-8") as handle:
                for item in items:
                    handle.write(json.dumps(item) + "\n")
        # YAML names the data by its final absolute path (datasets resolves relative paths from the cwd).
        (tmp / f"{CLOZE_TASK}.yaml").write_text(_yaml_cloze(target / f"{CLOZE_TASK}.jsonl"))
        (tmp / f"{ROLLING_TASK}.yaml").write_text(_yaml_rolling(target / f"{ROLLING_TASK}.jsonl"))
        try:
            os.replace(tmp, target)
        except OSError:  # another process built it first
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
