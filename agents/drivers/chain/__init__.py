"""Steered service chains, in the namespace of their router, on the agent hosting it: `model`
(names, the deterministic marks, routing tables and link-local /30s, which chains are refused
and why), `render` (the classifier table, nft JSON), `plan` (pure), `host` (I/O), `driver`
(observe, plan, apply; resync). Only ``l3`` hops are steered for now: a hop namespace per hop,
one-armed on a veth into the router's namespace, a firewall hop's rules as its inet table."""
