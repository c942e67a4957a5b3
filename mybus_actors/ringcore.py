"""The ring core in use: the native `_ringcore` when it was built, else the pure `ring`.

`ring` is the reference implementation and the specification of the layout;
`_ringcore` (C, built at install when a compiler is there) is the same ring with the
same bytes, and orders memory with C11 release/acquire atomics instead of leaning on
x86-64's store order. Ends of either kind interoperate, across processes too, so a
process on the pure core and one on the native core share rings.

`MYBUS_PURE_PYTHON=1` in the environment chooses the pure core. Without a built
extension the pure core runs, and importing this module warns once.
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any, Final

from mybus_actors import ring

__all__ = ["CORE", "NATIVE", "Consumer", "Producer", "Reader", "describe"]

PURE_ENV: Final = "MYBUS_PURE_PYTHON"


class NativeCoreMissing(RuntimeWarning):
    """The C ring core is not built here (or does not match): the pure one runs."""


def _native() -> tuple[Any, str]:
    """The native module, or None and why not."""
    if os.environ.get(PURE_ENV, "") not in ("", "0"):
        return None, f"{PURE_ENV} is set"
    try:
        from mybus_actors import _ringcore
    except ImportError:
        return None, "the C extension _ringcore is not built: was there a C compiler?"
    if _ringcore.VERSION != ring.VERSION:
        return None, f"the C extension reads layout {_ringcore.VERSION}, not {ring.VERSION}"
    return _ringcore, ""


if TYPE_CHECKING:
    from mybus_actors.ring import Consumer, Producer, Reader

    CORE: str
    WHY_PURE: str
    NATIVE: Any  # the C module (its relay helpers too), or None
else:
    _module, WHY_PURE = _native()
    NATIVE = _module
    if _module is not None:
        CORE = "native"
        Producer, Consumer, Reader = _module.Producer, _module.Consumer, _module.Reader
    else:
        CORE = "python"
        Producer, Consumer, Reader = ring.Producer, ring.Consumer, ring.Reader
        if not WHY_PURE.startswith(PURE_ENV):
            # One line on stderr (no source line under it): a warning, so it can be
            # filtered, or turned into an error where the native core must run.
            warnings.warn_explicit(
                f"pure-Python ring core ({WHY_PURE})",
                NativeCoreMissing,
                __name__,
                0,
                module=__name__,
            )


def describe() -> str:
    """One line for `mybus ls` and the demo: which core runs, and why when not native."""
    if CORE == "native":
        return "ring core: native (C, _ringcore)"
    return f"ring core: pure Python ({WHY_PURE})"
