"""The router driver (provider ``router``): a namespace per router placed on this host, with
one leg per interface into the network's bridge holding the network's gateway address,
forwarding on, an external leg with a default route and SNAT masquerade (the nftables core's
NAT table) when the router has a gateway, and the firewalls and port forwards routed on it
(`routed`: their nftables tables in its namespace). See `model` (names), `plan` (pure),
`host` (I/O)."""

from .driver import RouterDriver
from .model import RouterLayout, RouterSpec, router_spec

__all__ = ["RouterDriver", "RouterLayout", "RouterSpec", "router_spec"]
