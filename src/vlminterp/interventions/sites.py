"""Reading and rewriting a named site's tensor in every forward of the language model.

    with edit_site(adapter, "resid_post.3", lambda x, start: x + v):   # x (B, S, d); start = slot of x[:, 0]
        model(**inputs)                      # also inside generate: each decode step calls it again
    with edit_site(adapter, "image_features", lambda x, start: x * 0):  # start is None (not per position)
        ...
    slots(x, start)                          # tensor([start, ..., start + S - 1])

The site names and the modules behind them are the adapter's (`VLMAdapter.site`): this module only
hooks them. `head_out.{l}` (the input of o_proj) is handed over as (B, S, heads, head_dim). `start` is the cache slot of the tensor's first position: the language model's cache
length when the call began (0 without a cache), so a prefill, a shared-prefix suffix and a decode
step see the same slot for the same position. The function returns the new tensor (or None: unchanged).
Hooks are removed on exit, also after an error. `attn.{l}` is not a tensor site: attention edits
act inside the attention function (`attention.edit_attention`).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch

from ..models.adapters import Site

SiteFunction = Callable[[torch.Tensor, "int | None"], "torch.Tensor | None"]


class _Start:
    """The cache slot of the first position of the language model's current call."""

    def __init__(self):
        self.value = 0

    def pre_hook(self, module, args, kwargs):
        cache = kwargs.get("past_key_values")
        self.value = 0 if cache is None else int(cache.get_seq_length())


def slots(x: torch.Tensor, start: int) -> torch.Tensor:
    """Cache slots of the positions of a site tensor x (B, S, ...) starting at `start`."""
    return torch.arange(start, start + x.shape[1], device=x.device)


def _replace_first(args: tuple, kwargs: dict, key: str, value: torch.Tensor):
    if args:
        return (value, *args[1:]), kwargs
    return args, {**kwargs, key: value}


@contextlib.contextmanager
def edit_site(adapter, name: str | Site, function: SiteFunction) -> Iterator[Site]:
    """Call `function(tensor, start)` on the site's tensor in every forward inside the block."""
    site = adapter.site(name) if isinstance(name, str) else name
    if site.hook == "attention":
        raise ValueError(f"{site.name} is edited inside the attention function (attention.edit_attention), "
                         "not as a tensor")
    start = _Start()
    handles = []
    try:
        if site.sequence:
            handles.append(adapter.language_model.register_forward_pre_hook(start.pre_hook, with_kwargs=True))

        def position(_):
            return start.value if site.sequence else None

        if site.hook == "input":
            key = "inputs_embeds" if site.kind == "embed" else "hidden_states"

            def pre_hook(module, args, kwargs):
                x = args[0] if args else kwargs.get(key)
                if x is None:
                    return None
                if site.kind == "embed":  # the language model's own call: its cache length is the start
                    cache = kwargs.get("past_key_values")
                    start.value = 0 if cache is None else int(cache.get_seq_length())
                if site.kind == "head_out":  # one slice per head: (B, S, heads, head_dim)
                    new = function(x.reshape(*x.shape[:2], adapter.n_heads, adapter.head_dim), position(x))
                    new = None if new is None else new.reshape(x.shape)
                else:
                    new = function(x, position(x))
                return None if new is None else _replace_first(args, kwargs, key, new)

            handles.append(site.module.register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:
            def hook(module, args, output):
                x = output[0] if isinstance(output, tuple) else output
                new = function(x, position(x))
                if new is None:
                    return None
                return (new, *output[1:]) if isinstance(output, tuple) else new

            handles.append(site.module.register_forward_hook(hook))
        yield site
    finally:
        for handle in handles:
            handle.remove()
