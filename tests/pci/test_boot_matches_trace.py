"""The modeled x86 boot against a real one: Linux 6.1 on QEMU q35 + OVMF, qemu64 vCPU
(AMD family 0xf), logged by QEMU (../shared/traces/q35-ovmf-default)."""

from pathlib import Path

import numpy as np
import pytest

from allones.pci.parsers import parse_info_pci
from allones.pci.scans import plan_scan
from allones.pci.traces import parse_qemu_trace

TRACE_DIR = Path(__file__).resolve().parents[1] / "data" / "q35-ovmf-default"   # a copy of ../shared/traces
P2SB_TAIL = 5   # i2c-i801's p2sb access to 00:1f.1 (3 reads, 2 writes): a driver, not modeled


@pytest.fixture(scope="module")
def topology():
    return parse_info_pci((TRACE_DIR / "info_pci.txt").read_text())


@pytest.fixture(scope="module")
def kernel(topology):
    return parse_qemu_trace(TRACE_DIR / "qemu-trace.log.gz").as_scan(topology, "kernel")


def hole_stream(scan):
    """(bus, dev, fn, reg, size, is_write, mechanism) of every access to a hole, in order."""
    a = scan.accesses[scan.hole_mask()]
    return np.stack([a[f].astype(np.int64) for f in ("bus", "dev", "fn", "reg", "size", "is_write", "mech")], 1)


def test_hole_accesses_are_the_logged_ones_in_order(topology, kernel):
    """Every phase that touches holes (early_init_amd .. pcibios_fixup_peer_bridges) makes
    the logged accesses, register for register and in the logged order."""
    model = hole_stream(plan_scan(topology, "linux-boot-x86", "linux-x86-default", cpu="amd-k8"))
    logged = hole_stream(kernel)
    assert len(logged) == len(model) + P2SB_TAIL
    np.testing.assert_array_equal(model, logged[:len(model)])
    assert {tuple(r[:3]) for r in logged[len(model):]} == {(0, 0x1F, 1)}
