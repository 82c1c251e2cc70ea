"""Steered service chains, in the namespace of their router, on the agent hosting it: `model`
(names, the deterministic marks, routing tables and link-local /30s, which chains are refused
and why), `render` (the classifier table, nft JSON). Only ``l3`` hops are steered for now."""
