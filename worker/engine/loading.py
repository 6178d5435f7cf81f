"""Load supported causal LMs and save pruned students.

Save formats (both written to a temporary directory first, then renamed into place):

- vanilla: every layer has the same widths and the config alone rebuilds them. Plain
  `save_pretrained` output; stock `AutoModelForCausalLM.from_pretrained` loads it (no custom code).
- prunescope-layers: layers differ in width (or GPT-2's attention width differs from n_embd).
  Still the `save_pretrained` files (config.json with the widest layer, model.safetensors with the
  real shapes) plus `prunescope_layers.json`:
      {"format": "prunescope-layers/1", "head_dim": 8,
       "layers": [{"num_heads": 4, "num_kv_heads": 2, "intermediate_size": 40}, ...]}
  `load_model` builds the stock modeling classes from config.json, resizes each layer's projections
  to the listed widths and loads the weights strictly. Vanilla `from_pretrained` refuses it with a
  size mismatch (it never loads it silently wrong).

Both carry `prunescope_manifest.json`: the caller's manifest (plan, teacher id and weights hash...)
plus format, resulting architecture and library versions.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

from torch import nn

from worker.engine.adapters import UnsupportedArchitecture, adapter_for, adapter_for_model_type
from worker.engine.atomic import replace_dir
from worker.engine.checkpoint_reader import INDEX_FILE, read_weight_map
from worker.engine.dtypes import model_dtype_name, torch_dtype
from worker.engine.fingerprint import library_versions
from worker.engine.hub import hub_kwargs
from worker.engine.plan import vanilla_loadable
from worker.engine.spec import LayerShape

log = logging.getLogger(__name__)

LAYERS_FILE = "prunescope_layers.json"
MANIFEST_FILE = "prunescope_manifest.json"
LAYERS_FORMAT = "prunescope-layers/1"

# load_model(progress=...): called with (tensors loaded, tensors in all) as the weights are read.
LoadProgress = Callable[[int, int], None]


def _looks_like_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or os.sep in source.strip("/").replace("/", "", 1)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def load_tokenizer(source: str | os.PathLike, trust_remote_code: bool = False):
    """The tokenizer saved with a model, or None when it has none (reads no weight)."""
    from transformers import AutoTokenizer

    source = str(source)
    path = Path(source)
    if path.is_dir() and not any((path / f).is_file() for f in TOKENIZER_FILES):
        return None  # transformers would invent an empty tokenizer from the model type
    hub = {} if path.is_dir() else hub_kwargs(source)  # no network: the cache only, or a quick error
    try:
        return AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code, **hub)
    except (OSError, ValueError, TypeError, KeyError):
        return None  # a checkpoint without tokenizer files


_load_tokenizer = load_tokenizer  # the former private name (out_of_core.py)


def load_model(
    source: str | os.PathLike,
    *,
    dtype=None,
    device: str = "cpu",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    progress: LoadProgress | None = None,
) -> tuple[nn.Module, object | None]:
    """(model in eval mode, tokenizer or None) from a local directory, a hub id or our format.

    A hub id needs network access (never used by the tests); `trust_remote_code` stays off unless
    asked for, and only architectures with an adapter are accepted. `progress(done, total)` counts the
    checkpoint's tensors as they are read (see `weights_progress`): from 0/N to N/N, never backwards.
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    source = str(source)
    started = time.perf_counter()
    config, where, path, hub = _read_config(source, trust_remote_code)
    local = path is not None
    kwargs = {"dtype": torch_dtype(dtype)} if dtype is not None else {}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    if local and (path / INDEX_FILE).is_file():
        read_weight_map(path / INDEX_FILE)  # a damaged index: an error naming it (transformers' does not)
    try:
        if local and (path / LAYERS_FILE).is_file():
            model = _load_layers_format(path, config, kwargs, progress)
        else:
            with weights_progress(progress):
                model = AutoModelForCausalLM.from_pretrained(
                    where, config=config, trust_remote_code=trust_remote_code, **hub, **kwargs
                )
    except SafetensorError as exc:  # a truncated or overwritten weights file: say which model, not how
        raise ValueError(f"cannot read the weights of {source}: {_first_line(exc)}") from None
    model = model.to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    log.info(
        "loaded %s (%s, %.1fM parameters, %s) on %s in %.1f s",
        where,
        config.model_type,
        params / 1e6,
        model_dtype_name(model),
        device,
        time.perf_counter() - started,
    )
    return model, load_tokenizer(where, trust_remote_code)


def _read_config(source: str, trust_remote_code: bool):
    """(config, where to load from, the local directory or None, hub kwargs) of a model source, with a
    clear error for a missing model, a broken config or an unsupported architecture, before any weight."""
    from huggingface_hub.errors import StrictDataclassError
    from transformers import AutoConfig

    path = Path(source).expanduser()
    local = path.is_dir()
    if not local and (path.exists() or _looks_like_path(source)):
        raise FileNotFoundError(f"model not found: {source} is not a model directory")
    where = str(path) if local else source
    if local and not (path / "config.json").is_file():
        raise FileNotFoundError(f"model not found: {source} has no config.json")
    hub = {} if local else hub_kwargs(source)  # no network: the cache only, or one quick clear error
    try:
        config = AutoConfig.from_pretrained(where, trust_remote_code=trust_remote_code, **hub)
    except OSError as exc:
        raise FileNotFoundError(f"model not found: {source} ({_first_line(exc)})") from exc
    except StrictDataclassError as exc:  # a field of the wrong type: its name, then what was wrong
        detail = " ".join(line.strip() for line in str(exc).splitlines()[:2])
        raise ValueError(f"cannot read the config of {source}: {detail}") from None
    except (ValueError, TypeError, KeyError) as exc:  # a broken or remote-code config
        raise ValueError(f"cannot read the config of {source}: {_first_line(exc)}") from exc
    adapter_for_model_type(getattr(config, "model_type", None))  # unsupported: a clear error, before weights
    return config, where, path if local else None, hub


def stored_dtype(source: str | os.PathLike, trust_remote_code: bool = False) -> str | None:
    """The dtype a model's checkpoint states in its config ("bfloat16"), whatever it is loaded in; None when
    the config names none. Reads the config only: what a search prices memory in (its students are saved
    in this dtype) while it scores the teacher in another."""
    from worker.engine.dtypes import config_dtype, dtype_name

    config, _, _, _ = _read_config(str(source), trust_remote_code)
    stated = config_dtype(config)
    return dtype_name(stated) if stated is not None else None


def config_spec(source: str | os.PathLike, *, dtype=None, trust_remote_code: bool = False):
    """The model's ArchSpec from its config alone (shapes on "meta", no weight read), in `dtype` (None:
    the config's): what the inspect job stores, and what a plan is checked against before a big teacher
    is read."""
    import torch
    from transformers import AutoModelForCausalLM

    from worker.engine.adapters import arch_spec
    from worker.engine.dtypes import config_dtype, dtype_name

    config, _, path, _ = _read_config(str(source), trust_remote_code)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        if path is not None and (path / LAYERS_FILE).is_file():  # a non-uniform student: config.json
            resize_to_layers_file(model, path, config)  # holds only the widest layer
    spec = arch_spec(model)
    stated = torch_dtype(dtype) if dtype is not None else config_dtype(config)
    if stated is not None:
        spec.dtype = dtype_name(stated)
    return spec


def resize_to_layers_file(model: nn.Module, path: Path, config) -> None:
    """Give a model built from `path`'s config.json the per-layer widths its layers file lists (empty
    weights, on the model's device: on "meta" this yields the true shapes without reading weights)."""
    from worker.engine.surgery import resize_layer

    file = path / LAYERS_FILE
    try:
        info = json.loads(file.read_text())
        if info.get("format") != LAYERS_FORMAT:
            raise ValueError(f"unknown format {info.get('format')!r}")
        shapes = [LayerShape(**s) for s in info["layers"]]
        head_dim = int(info["head_dim"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # edited or cut short by hand
        what = f"no {exc}" if isinstance(exc, KeyError) else _first_line(exc)
        raise ValueError(f"{file} is damaged ({what})") from None
    if len(shapes) != config.num_hidden_layers:
        raise ValueError(
            f"{path / LAYERS_FILE} lists {len(shapes)} layers, config has {config.num_hidden_layers}"
        )
    adapter = adapter_for_model_type(config.model_type)
    for layer, shape in zip(adapter.layers(model), shapes, strict=True):
        resize_layer(adapter, layer, shape, head_dim)


@contextlib.contextmanager
def weights_progress(progress: LoadProgress | None) -> Iterator[None]:
    """Count the tensors `from_pretrained` loads while the block runs: `progress(done, total)`.

    transformers (5.x) reads the checkpoint in one loop over every tensor of every shard, wrapped in its
    "Loading weights" progress bar, and lets a caller wrap that bar through the public
    `transformers.utils.logging.set_tqdm_hook` (its own model server reports load progress that way).
    Reading is lazy (safetensors), so a tensor counted is a tensor read, converted and placed. The hook
    is process-wide: a worker runs one job per process, and the previous hook is restored afterwards.
    A transformers without the hook loads as before, without a count.
    """
    try:
        from transformers.utils.logging import set_tqdm_hook
    except ImportError:
        set_tqdm_hook = None
    if progress is None or set_tqdm_hook is None:
        yield
        return

    def hook(factory, args, kwargs):
        bar = factory(*args, **kwargs)  # the console bar (or transformers' silent stand-in) as before
        if kwargs.get("desc") != "Loading weights" or not args or not hasattr(args[0], "__len__"):
            return bar
        return _CountedBar(bar, len(args[0]), progress)

    previous = set_tqdm_hook(hook)
    try:
        yield
    finally:
        set_tqdm_hook(previous)


class _CountedBar:
    """Iterates transformers' bar and reports an item done when the loop asks for the next one."""

    def __init__(self, bar, total: int, progress: LoadProgress):
        self._bar, self._total, self._progress = bar, total, progress

    def __iter__(self):
        done = 0
        self._progress(0, self._total)
        for item in self._bar:
            yield item
            done += 1
            self._progress(done, self._total)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        close = getattr(self._bar, "close", None)
        if close is not None:
            close()

    def __getattr__(self, name):  # update, close, set_description...: the wrapped bar's
        return getattr(self._bar, name)


def _load_layers_format(path: Path, config, kwargs: dict, progress: LoadProgress | None = None) -> nn.Module:
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    from worker.engine.expert_layout import fuse_expert_weights

    with _skip_weight_init():  # every weight is loaded below (checked), so random init is wasted time
        model = AutoModelForCausalLM.from_config(config, **kwargs)
    resize_to_layers_file(model, path, config)
    files = sorted(path.glob("*.safetensors"))
    names = {}
    for file in files:  # the headers only: how many tensors there are to read
        with safe_open(str(file), framework="pt") as f:
            names[file] = list(f.keys())
    total, done = sum(len(n) for n in names.values()), 0
    if progress is not None:
        progress(0, total)
    state = {}
    for file in files:  # what safetensors' load_file does, one tensor at a time
        with safe_open(str(file), framework="pt") as f:
            for name in names[file]:
                state[name] = f.get_tensor(name)
                done += 1
                if progress is not None:
                    progress(done, total)
    state = fuse_expert_weights(adapter_for_model_type(config.model_type), state)  # MoE: per-expert on disk
    dtype = next(model.parameters()).dtype
    state = {k: v.to(dtype) for k, v in state.items()}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape than the layers file gives its layer
        raise _mismatch(path, exc) from None
    tied = {k for k in missing if k.endswith("lm_head.weight")} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{path}: weights do not match the layer file (missing {missing}, unexpected {unexpected})"
        )
    if config.tie_word_embeddings:
        model.tie_weights()
    return model


def weights_mismatch(path: Path, name: str, on_disk: Sequence[int], expected: Sequence[int]) -> ValueError:
    """The one error for a tensor of another size than config.json (and a non-uniform model's layers
    file) give it, whichever loader finds it."""
    said_by = LAYERS_FILE if (Path(path) / LAYERS_FILE).is_file() else "config.json"
    return ValueError(
        f"{path}: the weights do not match {said_by} ({name} is {list(on_disk)} in the weights but "
        f"{list(expected)} by {said_by})"
    )


def _mismatch(path: Path, exc: RuntimeError) -> ValueError:
    """`weights_mismatch` of the first tensor `load_state_dict` found of another shape (torch lists all)."""
    found = re.search(
        r"size mismatch for (\S+): copying a param with shape torch\.Size\((\[[^]]*\])\) from checkpoint, "
        r"the shape in current model is torch\.Size\((\[[^]]*\])\)",
        str(exc),
    )
    if found is None:
        return ValueError(f"{path}: the weights do not match {LAYERS_FILE} ({_first_line(exc)})")
    name, on_disk, expected = found.groups()
    return weights_mismatch(path, name, json.loads(on_disk), json.loads(expected))


def _skip_weight_init():
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # older transformers: initialise, only slower
        return contextlib.nullcontext()
    return no_init_weights()


def save_model(
    model: nn.Module, tokenizer, out_dir: str | os.PathLike, manifest: dict, *, overwrite: bool = False
) -> Path:
    """Write the model atomically (temp dir + rename); vanilla when possible (module note)."""
    spec = adapter_for(model).spec(model)
    with student_dir(out_dir, overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        write_student_metadata(tmp, spec, manifest)
    return Path(out_dir).expanduser().resolve()


@contextlib.contextmanager
def student_dir(out_dir: str | os.PathLike, overwrite: bool = False):
    """A temporary directory beside `out_dir`, renamed to it when the block succeeds (else removed)."""
    out = Path(out_dir).expanduser().resolve()
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another output or overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_student_metadata(tmp: Path, spec, manifest: dict) -> None:
    """The per-layer file (non-uniform students) and the manifest, beside the saved weights."""
    vanilla = vanilla_loadable(spec)
    if not vanilla:
        layers = {
            "format": LAYERS_FORMAT,
            "head_dim": spec.head_dim,
            "layers": [s.model_dump() for s in spec.layer_shapes()],
        }
        (tmp / LAYERS_FILE).write_text(json.dumps(layers, indent=2))
    full = {
        **manifest,
        "format": "vanilla" if vanilla else LAYERS_FORMAT,
        "architecture": spec.summary(),
        "libraries": library_versions(),
        "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    (tmp / MANIFEST_FILE).write_text(json.dumps(full, indent=2, default=str))


__all__ = [
    "LAYERS_FILE",
    "MANIFEST_FILE",
    "UnsupportedArchitecture",
    "load_model",
    "load_tokenizer",
    "save_model",
    "student_dir",
    "write_student_metadata",
]
