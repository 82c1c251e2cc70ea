"""The `eventsourcing` library's own test cases for persistence modules, run on JetStream.

Each test gets a stream of its own (a fresh name on the session's real nats-server), because the
library's cases expect notification ids to start at 1.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import pytest
from eventsourcing.persistence import (
    AggregateRecorder,
    ApplicationRecorder,
    InfrastructureFactory,
    ProcessRecorder,
    TrackingRecorder,
)
from eventsourcing.tests.application import ApplicationTestCase, ExampleApplicationTestCase
from eventsourcing.tests.persistence import (
    AggregateRecorderTestCase,
    ApplicationRecorderTestCase,
    InfrastructureFactoryTestCase,
    NonInterleavingNotificationIDsBaseCase,
    ProcessRecorderTestCase,
    TrackingRecorderTestCase,
)
from eventsourcing.utils import Environment

from splice.events.jetstream import (
    JetStreamAggregateRecorder,
    JetStreamApplicationRecorder,
    JetStreamFactory,
    JetStreamProcessRecorder,
    JetStreamTrackingRecorder,
)

pytestmark = pytest.mark.usefixtures("nats_env")


@pytest.fixture(autouse=True)
def nats_env(request: pytest.FixtureRequest, nats_server: Any) -> None:
    if request.instance is not None:
        request.instance.nats_url = nats_server.url


def _env(url: str, **extra: str) -> Environment:
    env = Environment(
        env={
            "PERSISTENCE_MODULE": "splice.events.jetstream",
            "NATS_URL": url,
            "JETSTREAM_STREAM": "T" + uuid.uuid4().hex[:12].upper(),
            "JETSTREAM_SUBJECT_PREFIX": "t" + uuid.uuid4().hex[:12],
        }
    )
    env.update(extra)
    return env


class _FactoryMixin:
    nats_url: str
    factories: list[JetStreamFactory]

    def setUp(self) -> None:
        self.factories = []
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        for f in self.factories:
            f.close()
        super().tearDown()  # type: ignore[misc]

    def factory(self) -> JetStreamFactory:
        f = InfrastructureFactory.construct(_env(self.nats_url))
        assert isinstance(f, JetStreamFactory)
        self.factories.append(f)
        return f


class TestJetStreamAggregateRecorder(_FactoryMixin, AggregateRecorderTestCase):
    def create_recorder(self) -> AggregateRecorder:
        return self.factory().aggregate_recorder()


class TestJetStreamApplicationRecorder(_FactoryMixin, ApplicationRecorderTestCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.factory().application_recorder()


class TestJetStreamNonInterleaving(_FactoryMixin, NonInterleavingNotificationIDsBaseCase):
    def create_recorder(self) -> ApplicationRecorder:
        return self.factory().application_recorder()


class TestJetStreamTrackingRecorder(_FactoryMixin, TrackingRecorderTestCase):
    def create_recorder(self) -> TrackingRecorder:
        return self.factory().tracking_recorder()


class TestJetStreamProcessRecorder(_FactoryMixin, ProcessRecorderTestCase):
    def create_recorder(self) -> ProcessRecorder:
        return self.factory().process_recorder()


class _TrackingSubclass(JetStreamTrackingRecorder):
    pass


class TestJetStreamInfrastructureFactory(InfrastructureFactoryTestCase[JetStreamFactory]):
    nats_url: str

    def setUp(self) -> None:
        self.env = _env(self.nats_url)
        super().setUp()

    def expected_factory_class(self) -> type[JetStreamFactory]:
        return JetStreamFactory

    def expected_aggregate_recorder_class(self) -> type[AggregateRecorder]:
        return JetStreamAggregateRecorder

    def expected_application_recorder_class(self) -> type[ApplicationRecorder]:
        return JetStreamApplicationRecorder

    def expected_tracking_recorder_class(self) -> type[TrackingRecorder]:
        return JetStreamTrackingRecorder

    def tracking_recorder_subclass(self) -> type[TrackingRecorder]:
        return _TrackingSubclass

    def expected_process_recorder_class(self) -> type[ProcessRecorder]:
        return JetStreamProcessRecorder


class _AppEnvMixin:
    nats_url: str
    _saved: dict[str, str | None]

    def setUp(self) -> None:
        env = _env(self.nats_url)
        self._saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        super().setUp()  # type: ignore[misc]

    def tearDown(self) -> None:
        super().tearDown()  # type: ignore[misc]
        for k, v in self._saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class TestJetStreamExampleApplication(_AppEnvMixin, ExampleApplicationTestCase):
    expected_factory_topic = "splice.events.jetstream:JetStreamFactory"


class TestJetStreamApplication(_AppEnvMixin, ApplicationTestCase):
    pass


del AggregateRecorderTestCase
del ApplicationRecorderTestCase
del NonInterleavingNotificationIDsBaseCase
del TrackingRecorderTestCase
del ProcessRecorderTestCase
del InfrastructureFactoryTestCase
del ExampleApplicationTestCase
del ApplicationTestCase
