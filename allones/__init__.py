"""allones: KVM memslots, the shared all-ones page (KVM_MEM_ALLONES), and what PCI holes cost.

The public names: `Host` (the host and its memory), `VM` (a VM's memslots and translation),
`Memslot`, `Translation`, the `KvmError` family, and kernel constants in `allones.constants`.
"""

import os
from importlib.util import find_spec

# Without the compiled core, `from . import _core` in host.py would fail as "cannot import
# name '_core' from partially initialized module" (a circular import it is not): say what is
# missing and how to build it.
for _ext in ("_core", "_mmu"):
    if find_spec(f"{__name__}.{_ext}") is None:
        raise ImportError(f"allones: the Cython core ({__name__}.{_ext}) is not built in "
                          f"{os.path.dirname(__file__)}: build it with `pip install -e .` (a source "
                          "tree) or install the package with `pip install .`", name=f"{__name__}.{_ext}")

del _ext
# the imports below need the core (after the check above)
from . import constants  # noqa: E402
from .errors import BadAddress, InvalidArgument, KvmError, NoMemory, NotFound, SlotOverlap  # noqa: E402
from .host import Host  # noqa: E402
from .vm import VM, Change, Memslot, Translation  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Host", "VM", "Memslot", "Translation", "Change", "constants",
    "KvmError", "InvalidArgument", "SlotOverlap", "BadAddress", "NotFound", "NoMemory", "get_include",
]


def get_include() -> str:
    """Directory holding _core.pxd and _kvm.h, for extensions that `cimport allones._core`."""
    return os.path.dirname(__file__)
