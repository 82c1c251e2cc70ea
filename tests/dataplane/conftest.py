"""Dataplane fixtures (defined in ``fabric.py``): real namespaces, bridge, members, haproxy."""

from tests.dataplane.fabric import fabric, net, reconciler, recorder

__all__ = ["fabric", "net", "reconciler", "recorder"]
