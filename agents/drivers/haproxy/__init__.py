"""The `haproxy` provider: an L7 load balancer per namespace, haproxy in master-worker mode.

`plan.py` (pure steps), `render.py` (pure configuration), `process.py` (haproxy's files and
processes), `status.py` (operating status from haproxy's stats), `driver.py` (observe, plan,
apply, report).
"""

from .driver import HaproxyDriver

__all__ = ["HaproxyDriver"]
