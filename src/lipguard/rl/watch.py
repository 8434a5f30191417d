"""Whether a module tree has changed since a snapshot: the per-call freshness check of
:class:`~lipguard.rl.frozen.FrozenReward`, cheap enough to run before every environment step.

:class:`ModuleWatch` remembers, for every module reachable from the root: its class (and the
class's ``forward``), every instance attribute (by identity; lists by value, since they can be
edited in place), the children, parameters, buffers and forward hooks it holds (by identity),
and the global forward hooks. For every parameter and buffer it also remembers the layout
(storage address, shape, strides, dtype) and the values — CPU tensors by their bytes (equal bytes
are equal values; a flipped sign of zero counts as a change), other tensors by a copy compared
with ``torch.equal``. So every way of changing what the tree computes is seen: optimiser steps and
``.data`` edits (which autograd's version counter misses), writes through NumPy views, replaced
storage (``.data = ...``, ``set_``) or layout (``t_``, ``as_strided_``), new or replaced
parameters, buffers and modules, a changed setting (a layer's ``lipschitz``), ``train``/``eval``,
a swapped class, a ``forward`` assigned to an instance or its class, and hooks.

The snapshot holds references to everything it compares by identity, so no object it remembers
can be freed and its address reused by a newcomer.
"""

from __future__ import annotations

from copy import copy
from itertools import chain
from operator import attrgetter, call, is_, itemgetter

import numpy as np
import torch
from torch import nn

#: the instance dictionaries a module's children and tensors live in, and its forward hooks
_HELD = frozenset({"_modules", "_parameters", "_buffers"})
_HOLDERS = itemgetter(*sorted(_HELD))
_HOOKS = itemgetter("_forward_hooks", "_forward_pre_hooks")
_FORWARD = attrgetter("forward")
_DTYPE = attrgetter("dtype")
#: attributes every module has that what calling it computes does not depend on (backward and
#: state-dict hooks; the forward hooks' companions, which act only with forward hooks, refused)
_INERT = frozenset(
    {
        "_backward_hooks",
        "_backward_pre_hooks",
        "_is_full_backward_hook",
        "_state_dict_hooks",
        "_state_dict_pre_hooks",
        "_load_state_dict_pre_hooks",
        "_load_state_dict_post_hooks",
        "_non_persistent_buffers_set",
        "_forward_hooks_with_kwargs",
        "_forward_hooks_always_called",
        "_forward_pre_hooks_with_kwargs",
    }
)


def _tensors_in(values: dict[str, object]) -> set[str]:
    return {key for key, value in values.items() if isinstance(value, torch.Tensor)}


def _modules(root: nn.Module) -> list[nn.Module]:
    """``root.modules()``' order, without its recursive generators and path strings."""
    modules, seen = [root], {id(root)}
    for module in modules:
        for child in module._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                modules.append(child)
    return modules


class ModuleWatch:
    """A snapshot of ``root``'s tree; :meth:`changed` tells whether anything in it differs."""

    def __init__(self, root: nn.Module) -> None:
        self._modules = _modules(root)
        self._types = [*map(type, self._modules)]
        self._forwards = [*map(_FORWARD, self._types)]
        self._dicts = [*map(vars, self._modules)]
        self._dict_ids = [*map(id, self._dicts)]  # an instance dictionary replaced wholesale
        self._sizes = [*map(len, self._dicts)]  # an attribute added (an instance `forward`)
        # tensors kept as plain attributes (a registered handler may read them): by identity
        # and, with the parameters and buffers, by layout and value
        plain = [
            (values, key)
            for values in self._dicts
            for key, value in values.items()
            if isinstance(value, torch.Tensor)
        ]
        self._plain_dicts = [values for values, _ in plain]
        self._plain_keys = [key for _, key in plain]
        self._plain = [*map(dict.get, self._plain_dicts, self._plain_keys)]
        # every other attribute, lists by a copy (an edit in place compares unequal), the rest
        # by identity (or equality): settings, `training`, any other object
        self._getters = [
            itemgetter("training", *sorted(set(values) - _INERT - _HELD - _tensors_in(values)))
            for values in self._dicts
        ]
        self._attributes = [
            tuple(copy(v) if type(v) is list else v for v in getter(values))
            for getter, values in zip(self._getters, self._dicts, strict=True)
        ]
        # live views of the dictionaries children and tensors live in
        holders = [*chain.from_iterable(map(_HOLDERS, self._dicts))]
        self._holder_ids = [*map(id, holders)]  # by identity (a copy would compare equal)
        self._held_views = [*map(dict.values, holders)]
        self._held = [*chain.from_iterable(self._held_views)]
        self._hooks = [*chain.from_iterable(map(_HOOKS, self._dicts))]
        where = [i for i, value in enumerate(self._held) if isinstance(value, torch.Tensor)]
        self._tensor_places = where
        tensors = [*(self._held[i] for i in where), *self._plain]
        self._pointers = [*map(torch.Tensor.data_ptr, tensors)]
        self._shapes = [*map(torch.Tensor.size, tensors)]
        self._strides = [*map(torch.Tensor.stride, tensors)]
        self._dtypes = [*map(_DTYPE, tensors)]
        on_host = [t.device.type == "cpu" and t.dtype != torch.bfloat16 for t in tensors]
        self._host_views = [
            t.detach().numpy() for t, host in zip(tensors, on_host, strict=True) if host
        ]
        self._host_bytes = [*map(np.ndarray.tobytes, self._host_views)]
        self._device_copies = [
            (t, t.detach().clone()) for t, host in zip(tensors, on_host, strict=True) if not host
        ]

    def changed(self) -> bool:
        """True when anything the snapshot remembers differs."""
        hooks = torch.nn.modules.module
        try:
            held = [*chain.from_iterable(self._held_views)]
            plain = [*map(dict.get, self._plain_dicts, self._plain_keys)]
            if (
                any(self._hooks)
                or bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks)
                or held != self._held  # identity first; a tensor's `==` may raise (caught)
                or [*map(len, self._dicts)] != self._sizes
                or [*map(id, chain.from_iterable(map(_HOLDERS, self._dicts)))] != self._holder_ids
                or [*map(call, self._getters, self._dicts)] != self._attributes
                or [*map(id, map(vars, self._modules))] != self._dict_ids
                or not all(map(is_, plain, self._plain))
                or [*map(type, self._modules)] != self._types
                or [*map(_FORWARD, self._types)] != self._forwards
            ):
                return True
            # the tensors there now (an equal-valued replacement passes `==`, not this)
            tensors = [*map(held.__getitem__, self._tensor_places), *plain]
            return (
                [*map(torch.Tensor.data_ptr, tensors)] != self._pointers
                or [*map(torch.Tensor.size, tensors)] != self._shapes
                or [*map(torch.Tensor.stride, tensors)] != self._strides
                or [*map(_DTYPE, tensors)] != self._dtypes
                or [*map(np.ndarray.tobytes, self._host_views)] != self._host_bytes
                or not all(torch.equal(t.detach(), copy) for t, copy in self._device_copies)
            )
        except (KeyError, RuntimeError, TypeError, ValueError):
            # an attribute deleted, or replaced by an object whose `==` raises (a tensor)
            return True
