"""The tap driver (provider ``tc-mirror``): a standalone tap placed on this host mirrors its
port's traffic (ingress, egress or both, the port's point of view) to its monitor port, with
a clsact qdisc and u32 filters whose action is ``mirred egress mirror`` on the port's
host-side interface (``tap`` + 11 characters of the port id, as Neutron names it). See `model`
(names, the priority band that marks the driver's filters), `plan` (pure), `host` (I/O)."""

from .driver import PROVIDER, TapDriver
from .model import TapSpec, port_interface

__all__ = ["PROVIDER", "TapDriver", "TapSpec", "port_interface"]
