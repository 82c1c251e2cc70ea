"""The `nftables` provider: firewalls and a router's NAT (port forwarding, SNAT) as nft tables.

`render.py` (pure: fold state → nft JSON), `plan.py` (pure: desired and observed tables →
steps), `conntrack.py` (pure: which open flows a new ruleset refuses), `apply.py` (nft and
conntrack inside a namespace). The agent decides which tables a namespace should hold (a
routed firewall's and its router's NAT live in the router's namespace) and calls
``apply.observe`` → ``plan.plan`` → ``apply.apply``. (Nothing is re-exported here: the
modules are imported by name, so ``plan`` always means the module.)
"""
