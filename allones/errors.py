"""Errors of the model: one OSError subclass per errno the kernel returns (asyncpg style).

`exc.errno` is the kernel's errno, `exc.rule` the name of the kernel check that failed.
"""

import errno as _errno


class KvmError(OSError):
    """A KVM ioctl failed. `errno` is what the kernel returns; `rule` names the check."""

    code = 0

    def __init__(self, message: str, rule: str | None = None):
        super().__init__(self.code, message)
        self.rule = rule


class InvalidArgument(KvmError):
    """EINVAL: malformed or refused input."""

    code = _errno.EINVAL


class SlotOverlap(KvmError):
    """EEXIST: the memslot would overlap another one in the same address space."""

    code = _errno.EEXIST


class BadAddress(KvmError):
    """EFAULT: a guest address with nothing behind it (as KVM_RUN fails)."""

    code = _errno.EFAULT


class NotFound(KvmError):
    """ENOENT: no such memslot (or it has no dirty log)."""

    code = _errno.ENOENT


class NoMemory(KvmError):
    """ENOMEM: an allocation failed."""

    code = _errno.ENOMEM


_BY_ERRNO = {cls.code: cls for cls in (InvalidArgument, SlotOverlap, BadAddress, NotFound, NoMemory)}


def error_for(errno: int, message: str, rule: str | None = None) -> KvmError:
    """The KvmError subclass for a positive errno."""
    cls = _BY_ERRNO.get(errno)
    if cls is None:
        raise ValueError(f"no KvmError for errno {errno}")
    return cls(message, rule)
