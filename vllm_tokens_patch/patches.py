"""The record of what the plugin replaced in vLLM (and FastAPI), so that `unpatch()` can put it back.

Every replacement is a `PatchWrapper` (wrapt) installed by `wrap_attribute`: it is recognised by type,
never installed twice, and undone exactly, including an attribute the owner only inherited.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import wrapt

if TYPE_CHECKING:
    _FunctionWrapper = wrapt.FunctionWrapper[..., Any]
else:  # wrapt < 2 has no generic FunctionWrapper at runtime
    _FunctionWrapper = wrapt.FunctionWrapper

Wrapper = Callable[[Any, Any, tuple[Any, ...], dict[str, Any]], Any]
"""wrapt's wrapper signature: `(wrapped, instance, args, kwargs)`."""


class PatchWrapper(_FunctionWrapper):
    """Our wrappers, told apart by type (wrapt forwards attribute writes to the wrapped function)."""


@dataclass
class Patch:
    """One attribute we replaced, with what to put back (or delete, if the owner only inherited it)."""

    owner: Any
    attribute: str
    original: Any
    inherited: bool = False

    def undo(self) -> None:
        if self.inherited:
            delattr(self.owner, self.attribute)
        else:
            setattr(self.owner, self.attribute, self.original)

    def __str__(self) -> str:
        return f"{getattr(self.owner, '__name__', self.owner)}.{self.attribute}"


def wrap_attribute(owner: Any, attribute: str, wrapper: Wrapper) -> Patch | None:
    """Replace `owner.attribute` by a `PatchWrapper` around it; None if it is ours already.

    The original is read from the owner's own `__dict__` when it has one there, so a staticmethod or
    classmethod keeps its descriptor, and an inherited attribute is shadowed (and later deleted), never
    changed on the base class that other vLLM classes share.
    """
    inherited = attribute not in vars(owner)
    original = getattr(owner, attribute) if inherited else vars(owner)[attribute]
    if isinstance(original, PatchWrapper):
        return None
    setattr(owner, attribute, PatchWrapper(original, wrapper))
    return Patch(owner, attribute, original, inherited)
