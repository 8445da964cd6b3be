"""Shared fixtures. Every test also checks that each host's shared page is still all 0xff."""

import pytest

import allones
from allones.constants import PAGE_SIZE


@pytest.fixture(autouse=True)
def _shared_page_stays_allones(monkeypatch):
    """Record every Host a test makes; afterwards its all-ones page must be intact."""
    hosts = []
    init = allones.Host.__init__

    def recording_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        hosts.append(self)

    monkeypatch.setattr(allones.Host, "__init__", recording_init)
    yield
    for host in hosts:
        if host.allones_page is not None:
            assert bytes(memoryview(host.allones_page)) == b"\xff" * PAGE_SIZE


@pytest.fixture
def host():
    return allones.Host()


@pytest.fixture
def vm(host):
    return allones.VM(host)


@pytest.fixture
def ram(host):
    """16 pages of writable VMM memory."""
    return host.mmap(16 * PAGE_SIZE, fill=0)
