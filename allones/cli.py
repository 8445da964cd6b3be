"""The `allones` command. For now `allones demo`: one VM's ECAM segment, scanned under each
way of backing its holes, with what each costs."""

import argparse
import sys

import numpy as np

from .constants import (KVM_MEM_ALLONES, KVM_MEM_READONLY, KVM_PFN_NOSLOT, PAGE_SHIFT,
                        PAGE_SIZE, PROT_READ, is_error_noslot_pfn)
from .host import Host
from .vm import VM

ECAM_BASE = 0xB000_0000   # q35's MMCONFIG window
ECAM_SIZE = 256 << 20     # 256 buses x 32 devices x 8 functions x 4 KiB

# name -> (Host kwargs, VM kwargs, how the segment is backed)
SCAN_SETUPS = {
    "mmio": ({}, {}, "none"),
    "pci-hole (v2)": ({"bit2": "pci_hole"}, {}, "bit2"),
    "filled": ({}, {}, "filled"),
    "allones": ({}, {}, "bit2"),
    "allones whole-slot": ({}, {"prefault": "whole-slot"}, "bit2"),
    "allones shared-pt": ({}, {"allones_map": "shared-pt"}, "bit2"),
    "allones hugepage": ({}, {"allones_map": "hugepage"}, "bit2"),
}


def scan_costs(name: str) -> dict:
    """Brute-force scan (one dword per function page) of one segment made of holes."""
    host_kw, vm_kw, backing = SCAN_SETUPS[name]
    host = Host(**host_kw)
    vm = VM(host, **vm_kw)
    if backing == "filled":
        holes = host.mmap(ECAM_SIZE, fill=0xFF, prot=PROT_READ)
        vm.set_user_memory_region(1, KVM_MEM_READONLY, ECAM_BASE, ECAM_SIZE, holes.hva)
    elif backing == "bit2":
        vm.set_user_memory_region(1, KVM_MEM_ALLONES, ECAM_BASE, ECAM_SIZE, 0)
    gpas = ECAM_BASE + np.arange(ECAM_SIZE // PAGE_SIZE, dtype=np.uint64) * PAGE_SIZE
    stats = vm.run(gpas, 4).stats
    return dict(name=name, data_kib=host.nr_frames * PAGE_SIZE // 1024,
                table_kib=(sum(vm.table_pages()) + host.shared_pt_pages) * PAGE_SIZE // 1024,
                faults=stats["faults"], prefaulted=stats["prefaulted"],
                exits=stats["exits_mmio"] + stats["exits_emulated"],
                fill_ms=host.fill_seconds * 1e3)


def demo(out=None) -> int:
    """Translations in a VM with RAM and an all-ones ECAM slot, then the scan table."""
    out = out or sys.stdout
    host = Host()
    vm = VM(host)
    ram = host.mmap(16 << 20, fill=0)
    vm.set_user_memory_region(0, 0, 0, ram.size, ram.hva)
    vm.set_user_memory_region(1, KVM_MEM_ALLONES, ECAM_BASE, ECAM_SIZE, 0)
    print(f"shared all-ones page: hva {host.allones_hva:#x} pfn {host.allones_pfn:#x}", file=out)
    cases = [("RAM", 0x1000), ("00:00.0 (hole)", ECAM_BASE),
             ("05:1f.7 (hole)", ECAM_BASE + (5 << 20 | 31 << 15 | 7 << 12)), ("beyond RAM", 0x2000000)]
    for name, gpa in cases:
        for write in (False, True):
            pfn, writable = vm.gfn_to_pfn(gpa >> PAGE_SHIFT, write)
            what = "MMIO exit (KVM_PFN_NOSLOT)" if pfn == KVM_PFN_NOSLOT else (
                f"error pfn {pfn:#x}" if is_error_noslot_pfn(pfn) else f"pfn {pfn:#x} writable={writable}")
            print(f"{'write' if write else 'read ':5} gpa {gpa:#011x} {name:15} -> {what}", file=out)
    print("\nBrute-force scan of one ECAM segment (65,536 function pages, one dword each), all holes:",
          file=out)
    print(f"{'backing':20} {'data KiB':>9} {'tables KiB':>10} {'faults':>7} {'prefaulted':>10} "
          f"{'exits':>7} {'fill ms':>8}", file=out)
    for name in SCAN_SETUPS:
        c = scan_costs(name)
        print(f"{name:20} {c['data_kib']:>9} {c['table_kib']:>10} {c['faults']:>7} "
              f"{c['prefaulted']:>10} {c['exits']:>7} {c['fill_ms']:>8.1f}", file=out)
    return 0


def main(argv=None) -> int:
    """Entry point of the `allones` command."""
    parser = argparse.ArgumentParser(prog="allones", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="translations, and one ECAM segment scanned under each backing")
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo()
    return 2


if __name__ == "__main__":
    sys.exit(main())
