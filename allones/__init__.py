"""allones: KVM memslots, the shared all-ones page (KVM_MEM_ALLONES), and what PCI holes cost.

The public names: `Host` (the host and its memory), `VM` (a VM's memslots and translation),
`Memslot`, `Translation`, the `KvmError` family, and kernel constants in `allones.constants`.
"""

import os

from . import constants
from .errors import BadAddress, InvalidArgument, KvmError, NoMemory, NotFound, SlotOverlap
from .host import Host
from .vm import VM, Change, Memslot, Translation

__version__ = "0.1.0"

__all__ = [
    "Host", "VM", "Memslot", "Translation", "Change", "constants",
    "KvmError", "InvalidArgument", "SlotOverlap", "BadAddress", "NotFound", "NoMemory", "get_include",
]


def get_include() -> str:
    """Directory holding _core.pxd and _kvm.h, for extensions that `cimport allones._core`."""
    return os.path.dirname(__file__)
