"""The `nftables-l4` provider: an in-kernel TCP load balancer per namespace (nftables DNAT).

`model.py` (names, sysctls, the fold's state → what the renderer takes, operating status),
`health.py` (the health checks' state machine, pure), `plan.py` (pure steps), `host.py`
(observe, apply, probe), `driver.py` (observe, plan, apply, health checks, report). The table
itself is rendered by the nftables core (`nftables.render.render_l4`) and applied by it.
"""

from .driver import L4Driver

__all__ = ["L4Driver"]
