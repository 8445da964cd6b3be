"""The guest side: ECAM geometry, topologies, config space, hole layouts, scans and traces."""
