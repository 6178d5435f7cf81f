"""Passing a KV cache back into a model's forward under the keyword its transformers version uses.

transformers renamed the forward's `past_key_values` argument (and output field) to `cache`; 5.24
warns on the old keyword and 5.40 drops it, while older 5.x releases in our range only know
`past_key_values`. The keyword is read once per model class from the forward's signature (not from
a version string), so both work without warnings.
"""

from __future__ import annotations

import functools
import inspect

from torch import nn


@functools.cache
def class_cache_keyword(model_class: type) -> str:
    """`cache` when the class's forward takes it, else `past_key_values` (read once per class)."""
    params = inspect.signature(model_class.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_keyword(model: nn.Module) -> str:
    return class_cache_keyword(type(model))


def returned_cache(output):
    """The KV cache a forward returned (`cache` in new outputs, `past_key_values` in older ones)."""
    cache = getattr(output, "cache", None)
    return cache if cache is not None else getattr(output, "past_key_values", None)


__all__ = ["cache_keyword", "class_cache_keyword", "returned_cache"]
