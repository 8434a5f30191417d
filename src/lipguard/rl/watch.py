"""Whether a module tree has changed since a snapshot: the per-call freshness check of
:class:`~lipguard.rl.frozen.FrozenReward`, cheap enough to run before every environment step.

:class:`ModuleWatch` remembers, for every module reachable from the root:

- its class, and the attributes of every class in its method resolution order below
  ``nn.Module`` (a method patched on a class, a class attribute changed);
- every instance attribute: by identity, lists, dicts and sets by value (they can be edited in
  place), and one level into plain objects the module keeps (a layer's certificate cache: what
  such an object holds, by identity);
- the children, parameters, buffers and forward hooks it holds, by identity; for every parameter,
  buffer and tensor kept as a plain attribute, its layout (storage address, shape, strides,
  dtype) and values — CPU tensors by their bytes (equal bytes are equal values; a flipped sign of
  zero counts as a change), other tensors by a copy compared with ``torch.equal``;

and the process-wide state the bound engine refuses to read a model under: global forward hooks,
``nn.Module``'s call machinery, the ``torch.nn.functional`` and ``torch`` functions the
registered forwards call, active torch-function and dispatch modes. So the ways of changing what
the tree computes are seen: optimiser steps and ``.data`` edits (which autograd's version counter
misses), writes through NumPy views, replaced storage (``.data = ...``, ``set_``) or layout
(``t_``, ``as_strided_``), new or replaced parameters, buffers and modules, a changed setting (a
layer's ``lipschitz``), ``train``/``eval``, a swapped class, a ``forward`` assigned to an instance
or a class, hooks and global overrides. Not seen: edits deeper inside objects a module keeps
(below the first level), NumPy arrays kept as attributes and edited in place, and torch's private
view flags (``torch._neg_view``).

The snapshot holds references to everything it compares by identity, so no object it remembers
can be freed and its address reused by a newcomer.
"""

from __future__ import annotations

import types
from copy import copy
from itertools import chain
from operator import attrgetter, call, is_, itemgetter
from typing import cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lipguard.bounds.graph import _CALL_MACHINERY, _FUNCTIONAL, _TORCH_OPS

#: the instance dictionaries a module's children and tensors live in, and its forward hooks
_HELD = frozenset({"_modules", "_parameters", "_buffers"})
_HOLDERS = itemgetter(*sorted(_HELD))
_HOOKS = itemgetter("_forward_hooks", "_forward_pre_hooks")
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
#: the process-wide functions calling a module goes through: namespaces and names
_GLOBAL_NAMES = [*_CALL_MACHINERY, *_FUNCTIONAL, *_TORCH_OPS]
_GLOBAL_PLACES = [
    *(nn.Module for _ in _CALL_MACHINERY),
    *(F for _ in _FUNCTIONAL),
    *(torch for _ in _TORCH_OPS),
]
#: kinds of attribute values that are not plain objects to look into
_OPAQUE = (
    nn.Module,
    torch.Tensor,
    type,
    types.FunctionType,
    types.MethodType,
    np.ndarray,
    dict,
    list,
    set,
    tuple,
)


def _modules(root: nn.Module) -> list[nn.Module]:
    """``root.modules()``' order, without its recursive generators and path strings."""
    modules, seen = [root], {id(root)}
    for module in modules:
        for child in module._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                modules.append(child)
    return modules


def _remembered(values: list[object]) -> list[object]:
    """What a snapshot keeps of attribute values: containers edited in place by a copy (compared
    by value), the rest as they are (compared by identity first)."""
    return [copy(v) if type(v) in (list, dict, set) else v for v in values]


def _held(dicts: list[dict[str, object]]) -> list[object]:
    """The children, parameters and buffers the instance dictionaries ``dicts`` hold now."""
    return [*chain.from_iterable(map(dict.values, chain.from_iterable(map(_HOLDERS, dicts))))]


def _classes(modules: list[nn.Module]) -> list[type]:
    """Every class the modules' behaviour comes from, ``nn.Module`` and ``object`` excepted
    (``nn.Module``'s call machinery is part of the global state)."""
    found: dict[type, None] = {}
    for module in modules:
        for cls in type(module).__mro__:
            if cls not in (nn.Module, object):
                found[cls] = None
    return list(found)


def _hooked(dicts: list[dict[str, object]]) -> tuple[bool, bool]:
    """Whether the modules, and the process, have forward hooks (or pre-hooks)."""
    hooks = torch.nn.modules.module
    return (
        any(chain.from_iterable(map(_HOOKS, dicts))),
        bool(hooks._global_forward_hooks or hooks._global_forward_pre_hooks),
    )


def _global_state() -> list[object]:
    return [
        *map(getattr, _GLOBAL_PLACES, _GLOBAL_NAMES),
        torch._C._len_torch_function_stack(),
        torch._C._len_torch_dispatch_stack(),
    ]


class ModuleWatch:
    """A snapshot of ``root``'s tree; :meth:`changed` tells whether anything in it differs."""

    def __init__(self, root: nn.Module) -> None:
        self._modules = _modules(root)
        self._types = [*map(type, self._modules)]
        self._class_views = [vars(cls).values() for cls in _classes(self._modules)]
        self._class_attributes = [*chain.from_iterable(self._class_views)]
        self._globals = _global_state()
        dicts = [*map(vars, self._modules)]
        self._hooked = _hooked(dicts)  # (a refused model's snapshot may have hooks)
        self._sizes = [*map(len, dicts)]  # an attribute added (an instance `forward`)
        # tensors kept as plain attributes (a registered handler may read them): by identity
        # and, with the parameters and buffers, by layout and value
        plain = [
            (index, key)
            for index, values in enumerate(dicts)
            for key, value in values.items()
            if isinstance(value, torch.Tensor)
        ]
        self._plain_places = [index for index, _ in plain]
        self._plain_keys = [key for _, key in plain]
        self._plain = self._plain_now(dicts)
        tensor_keys = set(self._plain_keys)
        # every other attribute: settings, `training`, the forward hooks, any other object
        self._getters = [
            itemgetter("training", *sorted(set(values) - _INERT - _HELD - tensor_keys))
            for values in dicts
        ]
        self._attributes = [
            tuple(_remembered([*getter(values)]))
            for getter, values in zip(self._getters, dicts, strict=True)
        ]
        # one level into the plain objects kept as attributes (a certificate cache), which the
        # attributes check holds by identity
        objects = [
            value
            for getter, values in zip(self._getters, dicts, strict=True)
            for value in getter(values)
            if hasattr(value, "__dict__") and not isinstance(value, _OPAQUE)
        ]
        self._object_views = [vars(value).values() for value in objects]
        self._object_attributes = _remembered([*chain.from_iterable(self._object_views)])
        self._held = _held(dicts)
        where = [i for i, value in enumerate(self._held) if isinstance(value, torch.Tensor)]
        self._tensor_places = where
        tensors = cast(list[torch.Tensor], [*(self._held[i] for i in where), *self._plain])
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

    def _plain_now(self, dicts: list[dict[str, object]]) -> list[object]:
        return [*map(dict.get, map(dicts.__getitem__, self._plain_places), self._plain_keys)]

    def changed(self) -> bool:
        """True when anything the snapshot remembers differs. Everything is read from the
        modules' current instance dictionaries (a replaced dictionary is followed)."""
        try:
            dicts = [*map(vars, self._modules)]
            held = _held(dicts)
            plain = self._plain_now(dicts)
            if (
                _hooked(dicts) != self._hooked
                or held != self._held  # identity first; a tensor's `==` may raise (caught)
                or [*map(len, dicts)] != self._sizes
                or [*map(call, self._getters, dicts)] != self._attributes
                or [*chain.from_iterable(self._object_views)] != self._object_attributes
                or not all(map(is_, plain, self._plain))
                or [*map(type, self._modules)] != self._types
                or [*chain.from_iterable(self._class_views)] != self._class_attributes
                or _global_state() != self._globals
            ):
                return True
            # the tensors there now (an equal-valued replacement passes `==`, not this)
            tensors = cast(
                list[torch.Tensor], [*map(held.__getitem__, self._tensor_places), *plain]
            )
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
