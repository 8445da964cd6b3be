"""The `allones` command. For now: `allones demo`, one VM with RAM and an all-ones ECAM window."""

import argparse
import sys

from .constants import (KVM_CAP_ALLONES_MEM, KVM_MEM_ALLONES, KVM_PFN_NOSLOT, PAGE_SHIFT,
                        is_error_noslot_pfn)
from .host import Host
from .vm import VM

ECAM_BASE = 0xB000_0000   # q35's MMCONFIG window
ECAM_SIZE = 256 << 20     # 256 buses x 32 devices x 8 functions x 4 KiB


def demo(out=None) -> int:
    """Build a VM with 16 MiB of RAM and an all-ones slot over the ECAM window; translate."""
    out = out or sys.stdout
    host = Host()
    vm = VM(host)
    ram = host.mmap(16 << 20, fill=0)
    vm.set_user_memory_region(0, 0, 0, ram.size, ram.hva)
    vm.set_user_memory_region(1, KVM_MEM_ALLONES, ECAM_BASE, ECAM_SIZE, 0)
    print(f"KVM_CAP_ALLONES_MEM = {vm.check_extension(KVM_CAP_ALLONES_MEM)}", file=out)
    for s in vm.memslots():
        print(f"memslot {s.id}: gfn [{s.base_gfn:#x}, {s.base_gfn + s.npages:#x}) "
              f"flags {s.flags:#x} userspace_addr {s.userspace_addr:#x}", file=out)
    print(f"shared all-ones page: hva {host.allones_hva:#x} pfn {host.allones_pfn:#x}", file=out)
    cases = [("RAM", 0x1000), ("00:00.0 (hole)", ECAM_BASE), ("05:1f.7 (hole)", ECAM_BASE + (5 << 20 | 31 << 15 | 7 << 12)),
             ("beyond RAM", 0x2000000)]
    for name, gpa in cases:
        gfn = gpa >> PAGE_SHIFT
        for write in (False, True):
            pfn, writable = vm.gfn_to_pfn(gfn, write)
            what = "MMIO exit (KVM_PFN_NOSLOT)" if pfn == KVM_PFN_NOSLOT else (
                f"error pfn {pfn:#x}" if is_error_noslot_pfn(pfn) else f"pfn {pfn:#x} writable={writable}")
            print(f"{'write' if write else 'read ':5} gpa {gpa:#011x} {name:15} -> {what}", file=out)
    page = memoryview(host.allones_page)
    print(f"shared page: {len(page)} bytes, all 0xff: {all(b == 0xFF for b in page)}, "
          f"read-only: {page.readonly}", file=out)
    return 0


def main(argv=None) -> int:
    """Entry point of the `allones` command."""
    parser = argparse.ArgumentParser(prog="allones", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="one VM with an all-ones ECAM slot, and a few translations")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    return 2


if __name__ == "__main__":
    sys.exit(main())
