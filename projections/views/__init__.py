"""The read models. One explicit table of views: nothing registers itself on import.

To add a view: write a module with its `Table`(s), one handler per event type name and a
`View`, then add it to `VIEWS` below. The store creates its tables and the projector catches it
up from the start of the stream on its next start (its position starts at 0), while the other
views carry on from theirs.
"""

from __future__ import annotations

from .audit import AUDIT_VIEW, KIND_FACES, RESOURCES_VIEW_QUERY
from .base import Filter, Handler, Rows, Tx, View
from .loadbalancers import LISTENERS_VIEW, MEMBERS_VIEW, POOLS_VIEW
from .loadbalancers import VIEW as LOADBALANCERS_VIEW
from .servicetypes import VIEW as SERVICETYPES_VIEW

# Views the projector maintains (each has its tables and its position).
VIEWS: tuple[View, ...] = (
    AUDIT_VIEW,
    SERVICETYPES_VIEW,
    LOADBALANCERS_VIEW,
)

# Views queries can name (splice.qry.<tenant>.<name>): the projected ones, plus query faces.
QUERY_VIEWS: dict[str, View] = {
    v.name: v
    for v in (
        *VIEWS,
        RESOURCES_VIEW_QUERY,
        LISTENERS_VIEW,
        POOLS_VIEW,
        MEMBERS_VIEW,
        *KIND_FACES,
    )
}

__all__ = ["QUERY_VIEWS", "VIEWS", "Filter", "Handler", "Rows", "Tx", "View"]
