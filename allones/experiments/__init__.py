"""Experiments: strategies for backing holes, the cost model, fleets of VMs, reports, sweeps."""
