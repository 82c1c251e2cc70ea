"""The JetStream event store: an `eventsourcing` persistence module.

Select it as the library's own modules are selected::

    PERSISTENCE_MODULE=splice.events.jetstream
    NATS_URL=nats://127.0.0.1:4222          # where the server is
    JETSTREAM_STREAM=SPLICE_EVENTS          # the stream (created when missing)
    JETSTREAM_REPLICAS=1                    # 3 on a cluster
    JETSTREAM_DUPLICATE_WINDOW=120          # seconds of Nats-Msg-Id de-duplication
    JETSTREAM_SUBJECT_PREFIX=splice         # subjects live under <prefix>.evt / .trk / .idem
    JETSTREAM_TIMEOUT=3                     # seconds to wait for an answer (then: outcome unknown)

Layout of the stream (file storage, `allow_atomic`, `allow_direct`, `deny_delete`, `deny_purge`,
no age or count limits, so stream sequences are gap-free and permanent):

* ``<prefix>.evt.<tenant>.<aggregate>.<id>.<type>`` — one message per domain event; the first four
  tokens name the aggregate, the last one the event's topic (so that selecting notifications by
  topic is a subject filter served by the server). Splice's aggregate ids are strings
  ``<tenant>.<aggregate>.<uuid>``; any other id (a UUID, as in the library's tests) is stored
  under tenant ``_`` and aggregate ``uuid`` or ``str``.
* ``<prefix>.trk.<application>`` — tracking records of process applications.
* ``<prefix>.idem.<tenant>.<command id>`` — the result of a handled command: of one that wrote
  several events, or of one that changed nothing (see `store_commands`).

The module is the library's entry point and holds its one factory; the rest lives beside it:
`store_tokens` (aggregate ids as subject tokens), `store_datastore` (settings, the stream, the
connection), `store_commands` (the layout of one command's write) and `store_recorders`
(concurrency checks, atomic batches, reads).

Durability is the server's: run it with ``jetstream { sync_interval: always }`` (what `splice up`
and the tests do) so an acknowledged event has been fsynced before the acknowledgement.
"""

from __future__ import annotations

from collections.abc import Mapping

from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
)
from eventsourcing.utils import Environment, resolve_topic

from .natsio import SHARED_CONNECTION, NatsThread
from .store_datastore import JetStreamDatastore, StoreSettings
from .store_recorders import (
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamProcessRecorder,
    JetStreamTrackingRecorder,
)


class JetStreamFactory(InfrastructureFactory[JetStreamTrackingRecorder]):
    """Builds JetStream recorders from the environment (see the module's docstring)."""

    def __init__(self, env: Environment | Mapping[str, str] | None) -> None:
        super().__init__(env)
        self.settings = StoreSettings(self.env)
        self._datastores: dict[str, JetStreamDatastore] = {}
        self._conn: NatsThread | None = None

    def _datastore(self, purpose: str) -> JetStreamDatastore:
        ds = self._datastores.get(purpose)
        if ds is None:
            if self._conn is None:
                self._conn = SHARED_CONNECTION.get() or NatsThread(self.settings.url,
                                                                   name="splice-store")
            settings = StoreSettings(self.env)
            if purpose != "events":
                settings.stream = f"{settings.stream}_{purpose.upper()}"
                settings.prefix = f"{settings.prefix}.{purpose}"
            ds = JetStreamDatastore(settings, conn=self._conn)
            if settings.create:
                ds.ensure_stream()
            self._datastores[purpose] = ds
        return ds

    def aggregate_recorder(self, purpose: str = "events") -> AggregateRecorder:
        return JetStreamAggregateRecorder(self._datastore(purpose))

    def application_recorder(self) -> ApplicationRecorder:
        topic = self.env.get(self.APPLICATION_RECORDER_TOPIC)
        cls: type[JetStreamApplicationRecorder] = (
            resolve_topic(topic) if topic else JetStreamApplicationRecorder
        )
        return cls(self._datastore("events"))

    def tracking_recorder(
        self, tracking_recorder_class: type[JetStreamTrackingRecorder] | None = None
    ) -> JetStreamTrackingRecorder:
        if tracking_recorder_class is None:
            topic = self.env.get(self.TRACKING_RECORDER_TOPIC)
            tracking_recorder_class = resolve_topic(topic) if topic else JetStreamTrackingRecorder
        assert tracking_recorder_class is not None
        return tracking_recorder_class(self._datastore("events"))

    def process_recorder(self) -> ProcessRecorder:
        topic = self.env.get(self.PROCESS_RECORDER_TOPIC)
        cls: type[JetStreamProcessRecorder] = (
            resolve_topic(topic) if topic else JetStreamProcessRecorder
        )
        return cls(self._datastore("events"))

    def close(self) -> None:
        self._datastores.clear()
        if self._conn is not None:
            self._conn.close()
            self._conn = None


__all__ = [
    "JetStreamAggregateRecorder",
    "JetStreamApplicationRecorder",
    "JetStreamDatastore",
    "JetStreamFactory",
    "JetStreamProcessRecorder",
    "JetStreamTrackingRecorder",
]
