"""Bridges from allones' model to real emulators (optional dependencies).

- `allones.integrations.unicorn`: give a Unicorn x86-64 CPU the ECAM window of an
  `allones.vmm.Vmm`, holes backed by the host's shared all-ones memory (needs `unicorn`).
"""
