"""examples/cython_embed: a third-party extension that cimports allones._core builds
against allones.get_include() and agrees with the Python API."""

import importlib
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

import allones
from allones.constants import (KVM_HVA_ERR_BAD, KVM_MEM_ALLONES, KVM_MEM_PCI_HOLE,
                               KVM_MEM_READONLY, KVM_PFN_NOSLOT, PAGE_SIZE)

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "cython_embed"


def _c_compiler() -> str | None:
    """The compiler setuptools will use ($CC, else Python's build CC), if it is installed."""
    for cc in (os.environ.get("CC"), sysconfig.get_config_var("CC"), "cc", "gcc", "clang"):
        if cc and shutil.which(cc.split()[0]):
            return cc
    return None


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The example, copied out of the tree and built in place; the imported module."""
    if _c_compiler() is None:
        pytest.skip("no C compiler found ($CC, sysconfig CC, cc, gcc, clang): cannot build "
                    "the Cython embedding example")
    build = tmp_path_factory.mktemp("cython_embed")
    for name in ("translate.pyx", "setup.py"):
        shutil.copy(EXAMPLE / name, build / name)
    # The subprocess must import the same allones (for get_include and the .pxd).
    root = str(Path(allones.__file__).resolve().parent.parent)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=build,
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"build failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    sys.path.insert(0, str(build))
    sys.modules.pop("translate", None)
    try:
        yield importlib.import_module("translate")
    finally:
        sys.path.remove(str(build))
        sys.modules.pop("translate", None)


@pytest.fixture
def setup_vm():
    """A VM with a RAM slot (id 0), an all-ones slot (id 1), a READONLY slot (id 2) and a
    slot in the SMM address space (1:0)."""
    host = allones.Host()
    vm = allones.VM(host)
    ram = host.mmap(32 * PAGE_SIZE, fill=0)
    rom = host.mmap(8 * PAGE_SIZE, fill=0xAA)
    smm = host.mmap(4 * PAGE_SIZE)
    vm.set_user_memory_region(0, 0, 0x10 * PAGE_SIZE, ram.size, ram.hva)
    vm.set_user_memory_region(1, KVM_MEM_ALLONES, 0x100 * PAGE_SIZE, 64 * PAGE_SIZE)
    vm.set_user_memory_region(2, KVM_MEM_READONLY, 0x180 * PAGE_SIZE, rom.size, rom.hva)
    vm.set_user_memory_region(1 << 16, 0, 0x30 * PAGE_SIZE, smm.size, smm.hva)
    return host, vm


def _gfns(seed=0):
    rng = np.random.default_rng(seed)
    gfns = rng.integers(0, 0x200, size=4000, dtype=np.uint64)     # slots and the gaps
    edges = np.array([0, 0xF, 0x10, 0x2F, 0x30, 0xFF, 0x100, 0x13F, 0x140, 0x187, 0x188,
                      1 << 40, (1 << 64) - 1], dtype=np.uint64)   # boundaries, far misses
    return np.concatenate([gfns, edges])


def test_translate_matches_python_api(example, setup_vm):
    host, vm = setup_vm
    gfns = _gfns()
    hvas, ids = example.translate(vm, gfns)
    assert hvas.dtype == np.uint64 and ids.dtype == np.int32 and len(hvas) == len(gfns)

    np.testing.assert_array_equal(ids, vm.lookup_batch(gfns))
    slots = vm.memslots(0)
    miss = ids == -1
    assert miss.any() and (~miss).any()
    for g, hva, i in zip(gfns.tolist(), hvas.tolist(), ids.tolist()):
        assert hva == slots.gfn_to_hva(host.mm, g)
        if i == -1:
            assert hva == KVM_HVA_ERR_BAD
            with pytest.raises(allones.BadAddress):
                vm.gfn_to_hva(g)
        else:
            assert hva == vm.gfn_to_hva(g)

    # The hvas lead where VM.translate's pfns come from (read faults).
    pfns, _ = vm.translate(gfns)
    allones_slot = ids == 1
    assert (hvas[allones_slot] == host.allones_hva).all()
    assert (pfns[allones_slot] == host.allones_pfn).all()
    assert (pfns[miss] == KVM_PFN_NOSLOT).all()
    for k in np.flatnonzero(~miss & ~allones_slot).tolist():
        assert int(pfns[k]) == host.mm.hva_to_pfn(int(hvas[k]), False)[0]


def test_other_address_space_and_edge_inputs(example, setup_vm):
    host, vm = setup_vm
    gfns = _gfns(1)
    hvas, ids = example.translate(vm, gfns, as_id=1)
    np.testing.assert_array_equal(ids, vm.lookup_batch(gfns, as_id=1))
    assert [int(h) for h in hvas] == [vm.memslots(1).gfn_to_hva(host.mm, int(g)) for g in gfns]

    frozen = gfns.copy()
    frozen.flags.writeable = False                       # const memoryview: read-only works
    np.testing.assert_array_equal(example.translate(vm, frozen)[0], example.translate(vm, gfns)[0])
    hvas, ids = example.translate(vm, np.empty(0, dtype=np.uint64))
    assert len(hvas) == len(ids) == 0
    with pytest.raises(ValueError):
        example.translate(vm, gfns, as_id=2)             # Memslots.memslots checks as_id
    with pytest.raises(ValueError):
        example.translate(vm, gfns.astype(np.int64))     # the buffer must be uint64


def test_count_allones(example, setup_vm):
    host, vm = setup_vm
    gfns = _gfns(2)
    expected = sum(1 for g in gfns.tolist()
                   if (s := vm.gfn_to_memslot(g)) is not None and s.flags & KVM_MEM_ALLONES)
    assert expected > 0
    assert example.count_allones(vm, gfns) == expected

    old = vm.memslots(0)
    vm.set_user_memory_region(1, 0, 0, 0)                # delete the all-ones slot
    assert example.count_allones(vm, gfns) == 0          # the new generation
    assert old.lookup(0x100) == 1                        # the old one is unchanged


def test_pci_hole_slot_has_no_hva(example):
    host = allones.Host(bit2="pci_hole")
    vm = allones.VM(host)
    vm.set_user_memory_region(0, KVM_MEM_PCI_HOLE, 0x100 * PAGE_SIZE, 16 * PAGE_SIZE)
    gfns = np.arange(0xF8, 0x118, dtype=np.uint64)
    hvas, ids = example.translate(vm, gfns)
    np.testing.assert_array_equal(ids, vm.lookup_batch(gfns))
    assert (hvas == KVM_HVA_ERR_BAD).all()               # a slot, but no memory behind it
    assert [int(h) for h in hvas] == [vm.memslots(0).gfn_to_hva(host.mm, int(g)) for g in gfns]
    assert example.count_allones(vm, gfns) == 16         # the same bit 2
