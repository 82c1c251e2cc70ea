"""Desired state of one floating load balancer on a host (Octavia's model), as validated values.

Every object validates itself when it is constructed (``__post_init__``), so a spec that exists
is a spec that is safe to render: identifiers are canonical UUIDs, addresses are parsed,
numbers are in range, and every free-text value that could reach haproxy's configuration is
either rejected here (control characters, characters outside a strict alphabet for names that
haproxy cannot quote, such as header and cookie names) or later quoted by code in
``haproxy.py``. ``LoadBalancerSpec.from_dict`` builds the tree from plain JSON-like data.

Errors are typed and name the field, so the agent can report *which* value was refused.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import unicodedata
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec

DEFAULT_PREFIX = "spl-"
MAX_TEXT = 255
MAX_TIMEOUT_MS = 24 * 24 * 3600 * 1000  # haproxy caps timeouts at ~24.8 days (2^31 ms)


# --------------------------------------------------------------------------- errors


class SpecError(ValueError):
    """Base of every validation error; ``code`` is stable, ``field`` names the offending value."""

    code = "invalid_spec"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class InvalidValueError(SpecError):
    """A value is malformed or out of range."""

    code = "invalid_value"


class UnsafeValueError(SpecError):
    """A value holds characters that could change the meaning of a rendered configuration."""

    code = "unsafe_value"


class InconsistentSpecError(SpecError):
    """Values are fine on their own but contradict each other (dangling or clashing references)."""

    code = "inconsistent_spec"


# --------------------------------------------------------------------------- enums


class Protocol(enum.StrEnum):
    TCP = "TCP"
    HTTP = "HTTP"
    HTTPS = "HTTPS"  # TLS pass-through: haproxy sees TCP


class Algorithm(enum.StrEnum):
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_CONNECTIONS = "LEAST_CONNECTIONS"
    SOURCE_IP = "SOURCE_IP"


class PersistenceType(enum.StrEnum):
    SOURCE_IP = "SOURCE_IP"
    HTTP_COOKIE = "HTTP_COOKIE"
    APP_COOKIE = "APP_COOKIE"


class MonitorType(enum.StrEnum):
    TCP = "TCP"
    HTTP = "HTTP"
    PING = "PING"


class HttpMethod(enum.StrEnum):
    GET = "GET"
    HEAD = "HEAD"
    POST = "POST"
    PUT = "PUT"
    DELETE = "DELETE"
    OPTIONS = "OPTIONS"
    PATCH = "PATCH"
    TRACE = "TRACE"
    CONNECT = "CONNECT"


class L7Action(enum.StrEnum):
    REJECT = "REJECT"
    REDIRECT_TO_POOL = "REDIRECT_TO_POOL"
    REDIRECT_TO_URL = "REDIRECT_TO_URL"


class L7RuleType(enum.StrEnum):
    HOST_NAME = "HOST_NAME"
    PATH = "PATH"
    HEADER = "HEADER"
    COOKIE = "COOKIE"
    FILE_TYPE = "FILE_TYPE"


class CompareType(enum.StrEnum):
    EQUAL_TO = "EQUAL_TO"
    STARTS_WITH = "STARTS_WITH"
    ENDS_WITH = "ENDS_WITH"
    CONTAINS = "CONTAINS"
    REGEX = "REGEX"


# --------------------------------------------------------------------------- checkers

_E = TypeVar("_E", bound=enum.Enum)
# Header and cookie names end up inside sample-fetch arguments (``req.hdr(<name>)``), where
# haproxy has no reliable quoting: a strict alphabet is the only safe choice.
_TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_CODES = re.compile(r"\d{3}(-\d{3})?(,\d{3}(-\d{3})?)*")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_PREFIX = re.compile(r"[a-z][a-z0-9]{1,4}-")


def check_uuid(name: str, value: object) -> str:
    """Identifiers become haproxy proxy/server names and interface names: canonical UUIDs only."""
    if not isinstance(value, str):
        raise InvalidValueError(name, "must be a UUID string")
    try:
        parsed = uuid.UUID(value)
    except ValueError:
        raise InvalidValueError(name, f"not a UUID: {value!r}") from None
    if str(parsed) != value:
        raise InvalidValueError(name, f"not a canonical lower-case UUID: {value!r}")
    return value


def check_int(name: str, value: object, low: int, high: int) -> int:
    """Reject bools (``True`` is an int in Python) and out-of-range numbers."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidValueError(name, f"must be an integer, got {value!r}")
    if not low <= value <= high:
        raise InvalidValueError(name, f"must be in [{low}, {high}], got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidValueError(name, f"must be a boolean, got {value!r}")
    return value


def check_enum(name: str, kind: type[_E], value: object) -> _E:
    try:
        return kind(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in kind)
        raise InvalidValueError(name, f"must be one of {allowed}, got {value!r}") from None


def check_text(name: str, value: object, *, allow_empty: bool = True, limit: int = MAX_TEXT) -> str:
    """Free text may hold quotes, ``#`` or braces (they get quoted), never a line break.

    haproxy's configuration is line-based: a control character (newline, carriage return, NUL,
    or Unicode line/paragraph separators) is the one thing quoting cannot neutralise, so it is
    refused here.
    """
    if not isinstance(value, str):
        raise InvalidValueError(name, "must be a string")
    if not value and not allow_empty:
        raise InvalidValueError(name, "must not be empty")
    if len(value) > limit:
        raise InvalidValueError(name, f"longer than {limit} characters")
    for ch in value:
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp"):
            raise UnsafeValueError(name, f"control character {ch!r} not allowed")
    return value


def check_token(name: str, value: object) -> str:
    """Header and cookie names: letters, digits, ``.``, ``_``, ``-`` (no quoting possible)."""
    text = check_text(name, value, allow_empty=False, limit=64)
    if not _TOKEN.fullmatch(text):
        raise UnsafeValueError(name, f"only letters, digits, '.', '_' and '-' allowed: {text!r}")
    return text


def check_prefix(value: str) -> str:
    """The ownership prefix ends up in interface names (15 bytes max), so it must stay short."""
    if not _PREFIX.fullmatch(value):
        raise InvalidValueError("prefix", f"must match {_PREFIX.pattern}, got {value!r}")
    return value


def _tuple(name: str, value: object, kind: type) -> tuple[Any, ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidValueError(name, "must be a list")
    for i, item in enumerate(value):
        if not isinstance(item, kind):
            raise InvalidValueError(f"{name}[{i}]", f"must be a {kind.__name__}")
    return tuple(value)


def _unique(name: str, values: Iterable[object]) -> None:
    seen: set[object] = set()
    for v in values:
        if v in seen:
            raise InconsistentSpecError(name, f"duplicate {v!r}")
        seen.add(v)


def _set(obj: object, attr: str, value: object) -> None:
    """Normalise a field of a frozen dataclass during ``__post_init__``."""
    object.__setattr__(obj, attr, value)


# --------------------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    """The tenant network the VIP lives on; each network maps to one bridge per host."""

    id: str
    cidr: str
    gateway: str

    def __post_init__(self) -> None:
        check_uuid("network.id", self.id)
        try:
            net = ipaddress.ip_network(self.cidr, strict=True)
        except (ValueError, TypeError):
            raise InvalidValueError("network.cidr", f"not a network CIDR: {self.cidr!r}") from None
        gw = parse_host_address("network.gateway", self.gateway, net)
        _set(self, "cidr", str(net))
        _set(self, "gateway", str(gw))

    @property
    def ip_network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    @property
    def prefixlen(self) -> int:
        return self.ip_network.prefixlen

    def bridge_name(self, prefix: str = DEFAULT_PREFIX) -> str:
        """``<prefix>br-<short id>``, cut to the 15-byte limit of Linux interface names."""
        return fit_ifname(f"{prefix}br-", self.id)


def fit_ifname(head: str, ident: str) -> str:
    """Append as much of a UUID's hex as fits in an interface name (IFNAMSIZ - 1 = 15)."""
    return head + ident.replace("-", "")[: 15 - len(head)]


def parse_host_address(
    name: str, value: object, net: ipaddress.IPv4Network | ipaddress.IPv6Network | None = None
) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address usable by a host: not multicast, unspecified, and inside ``net`` if given."""
    try:
        addr = ipaddress.ip_address(value)  # type: ignore[arg-type]
    except (ValueError, TypeError):
        raise InvalidValueError(name, f"not an IP address: {value!r}") from None
    if addr.is_multicast or addr.is_unspecified or addr.is_loopback:
        raise InvalidValueError(name, f"not a usable host address: {addr}")
    if net is not None:
        if addr not in net:
            raise InvalidValueError(name, f"{addr} is outside {net}")
        if net.num_addresses > 2 and addr in (net.network_address, net.broadcast_address):
            raise InvalidValueError(name, f"{addr} is the network or broadcast address")
    return addr


@dataclass(frozen=True, slots=True)
class MemberSpec:
    id: str
    address: str
    protocol_port: int
    weight: int = 1
    backup: bool = False
    admin_state_up: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        check_uuid("member.id", self.id)
        _set(self, "address", str(parse_host_address("member.address", self.address)))
        check_int("member.protocol_port", self.protocol_port, 1, 65535)
        check_int("member.weight", self.weight, 0, 256)
        check_bool("member.backup", self.backup)
        check_bool("member.admin_state_up", self.admin_state_up)
        check_text("member.name", self.name)


@dataclass(frozen=True, slots=True)
class HealthMonitorSpec:
    type: MonitorType
    delay: int  # seconds between checks
    timeout: int  # seconds a check may take
    max_retries: int = 3  # successes to go UP (haproxy "rise")
    max_retries_down: int = 3  # failures to go DOWN (haproxy "fall")
    http_method: HttpMethod = HttpMethod.GET
    url_path: str = "/"
    expected_codes: str = "200"

    def __post_init__(self) -> None:
        _set(self, "type", check_enum("healthmonitor.type", MonitorType, self.type))
        check_int("healthmonitor.delay", self.delay, 1, 3600)
        check_int("healthmonitor.timeout", self.timeout, 1, 3600)
        if self.timeout > self.delay:
            raise InconsistentSpecError("healthmonitor.timeout", "must not exceed delay")
        check_int("healthmonitor.max_retries", self.max_retries, 1, 10)
        check_int("healthmonitor.max_retries_down", self.max_retries_down, 1, 10)
        method = check_enum("healthmonitor.http_method", HttpMethod, self.http_method)
        _set(self, "http_method", method)
        check_url_path("healthmonitor.url_path", self.url_path)
        parse_expected_codes(self.expected_codes)


def check_url_path(name: str, value: object) -> str:
    """A request path: starts with ``/`` and holds no whitespace (it is one HTTP token)."""
    text = check_text(name, value, allow_empty=False, limit=1024)
    if not text.startswith("/") or any(ch.isspace() for ch in text):
        raise UnsafeValueError(name, f"must start with '/' and contain no spaces: {text!r}")
    return text


def parse_expected_codes(value: object) -> tuple[tuple[int, int], ...]:
    """``"200"``, ``"200,202"``, ``"200-204"`` → inclusive ranges of HTTP status codes."""
    name = "healthmonitor.expected_codes"
    text = check_text(name, value, allow_empty=False, limit=128)
    if not _CODES.fullmatch(text):
        raise InvalidValueError(name, f"expected codes like 200, 200,202 or 200-204: {text!r}")
    ranges = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        lo, hi = int(low), int(high or low)
        if not 100 <= lo <= hi <= 599:
            raise InvalidValueError(name, f"bad range {part!r}")
        ranges.append((lo, hi))
    return tuple(ranges)


@dataclass(frozen=True, slots=True)
class SessionPersistenceSpec:
    type: PersistenceType
    cookie_name: str | None = None

    def __post_init__(self) -> None:
        kind = check_enum("session_persistence.type", PersistenceType, self.type)
        _set(self, "type", kind)
        if kind is PersistenceType.APP_COOKIE:
            check_token("session_persistence.cookie_name", self.cookie_name)
        elif self.cookie_name is not None:
            raise InconsistentSpecError(
                "session_persistence.cookie_name", "only APP_COOKIE takes a cookie name"
            )


@dataclass(frozen=True, slots=True)
class PoolSpec:
    id: str
    protocol: Protocol
    lb_algorithm: Algorithm = Algorithm.ROUND_ROBIN
    members: tuple[MemberSpec, ...] = ()
    healthmonitor: HealthMonitorSpec | None = None
    session_persistence: SessionPersistenceSpec | None = None
    admin_state_up: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        check_uuid("pool.id", self.id)
        _set(self, "protocol", check_enum("pool.protocol", Protocol, self.protocol))
        _set(self, "lb_algorithm", check_enum("pool.lb_algorithm", Algorithm, self.lb_algorithm))
        _set(self, "members", _tuple("pool.members", self.members, MemberSpec))
        _unique("pool.members.id", (m.id for m in self.members))
        _unique("pool.members.address", ((m.address, m.protocol_port) for m in self.members))
        if self.healthmonitor is not None and not isinstance(self.healthmonitor, HealthMonitorSpec):
            raise InvalidValueError("pool.healthmonitor", "must be a HealthMonitorSpec")
        sp = self.session_persistence
        if sp is not None:
            if not isinstance(sp, SessionPersistenceSpec):
                raise InvalidValueError("pool.session_persistence", "must be a persistence spec")
            if sp.type is not PersistenceType.SOURCE_IP and self.protocol is not Protocol.HTTP:
                raise InconsistentSpecError(
                    "pool.session_persistence", f"{sp.type} needs an HTTP pool"
                )
        check_bool("pool.admin_state_up", self.admin_state_up)
        check_text("pool.name", self.name)


@dataclass(frozen=True, slots=True)
class L7RuleSpec:
    type: L7RuleType
    compare_type: CompareType
    value: str
    key: str | None = None
    invert: bool = False

    def __post_init__(self) -> None:
        kind = check_enum("l7rule.type", L7RuleType, self.type)
        _set(self, "type", kind)
        compare = check_enum("l7rule.compare_type", CompareType, self.compare_type)
        _set(self, "compare_type", compare)
        check_text("l7rule.value", self.value, allow_empty=False)
        if compare is CompareType.REGEX:
            try:
                re.compile(self.value)
            except re.error as exc:
                raise InvalidValueError("l7rule.value", f"bad regular expression: {exc}") from None
        if kind in (L7RuleType.HEADER, L7RuleType.COOKIE):
            check_token("l7rule.key", self.key)
        elif self.key is not None:
            raise InconsistentSpecError("l7rule.key", f"{kind} rules take no key")
        check_bool("l7rule.invert", self.invert)


@dataclass(frozen=True, slots=True)
class L7PolicySpec:
    id: str
    position: int
    action: L7Action
    rules: tuple[L7RuleSpec, ...] = ()
    redirect_pool_id: str | None = None
    redirect_url: str | None = None
    redirect_http_code: int = 302
    admin_state_up: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        check_uuid("l7policy.id", self.id)
        check_int("l7policy.position", self.position, 1, 2**31 - 1)
        action = check_enum("l7policy.action", L7Action, self.action)
        _set(self, "action", action)
        _set(self, "rules", _tuple("l7policy.rules", self.rules, L7RuleSpec))
        if action is L7Action.REDIRECT_TO_POOL:
            check_uuid("l7policy.redirect_pool_id", self.redirect_pool_id)
        elif self.redirect_pool_id is not None:
            raise InconsistentSpecError("l7policy.redirect_pool_id", f"unused by {action}")
        if action is L7Action.REDIRECT_TO_URL:
            check_redirect_url("l7policy.redirect_url", self.redirect_url)
        elif self.redirect_url is not None:
            raise InconsistentSpecError("l7policy.redirect_url", f"unused by {action}")
        if self.redirect_http_code not in (301, 302, 303, 307, 308):
            raise InvalidValueError("l7policy.redirect_http_code", "one of 301 302 303 307 308")
        check_bool("l7policy.admin_state_up", self.admin_state_up)
        check_text("l7policy.name", self.name)


def check_redirect_url(name: str, value: object) -> str:
    """An absolute http(s) URL with a host and no whitespace (it is one header value)."""
    from urllib.parse import urlsplit

    text = check_text(name, value, allow_empty=False, limit=2048)
    if any(ch.isspace() for ch in text):
        raise UnsafeValueError(name, "must not contain whitespace")
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidValueError(name, f"must be an absolute http(s) URL: {text!r}")
    return text


@dataclass(frozen=True, slots=True)
class ListenerSpec:
    id: str
    protocol: Protocol
    port: int
    default_pool_id: str | None = None
    connection_limit: int = -1
    timeout_client_data_ms: int = 50000
    timeout_member_connect_ms: int = 5000
    timeout_member_data_ms: int = 50000
    l7policies: tuple[L7PolicySpec, ...] = ()
    admin_state_up: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        check_uuid("listener.id", self.id)
        _set(self, "protocol", check_enum("listener.protocol", Protocol, self.protocol))
        check_int("listener.port", self.port, 1, 65535)
        if self.default_pool_id is not None:
            check_uuid("listener.default_pool_id", self.default_pool_id)
        if self.connection_limit != -1:
            check_int("listener.connection_limit", self.connection_limit, 1, 1_000_000)
        for attr in ("timeout_client_data_ms", "timeout_member_connect_ms",
                     "timeout_member_data_ms"):
            check_int(f"listener.{attr}", getattr(self, attr), 1, MAX_TIMEOUT_MS)
        _set(self, "l7policies", _tuple("listener.l7policies", self.l7policies, L7PolicySpec))
        _unique("listener.l7policies.id", (p.id for p in self.l7policies))
        if self.l7policies and self.protocol is not Protocol.HTTP:
            raise InconsistentSpecError("listener.l7policies", "L7 policies need an HTTP listener")
        check_bool("listener.admin_state_up", self.admin_state_up)
        check_text("listener.name", self.name)

    @property
    def ordered_policies(self) -> tuple[L7PolicySpec, ...]:
        """Octavia's order: by position; ids break ties so the order is always the same."""
        return tuple(sorted(self.l7policies, key=lambda p: (p.position, p.id)))


def compatible(listener: Protocol, pool: Protocol) -> bool:
    """HTTP listeners need HTTP pools; TCP and HTTPS (pass-through) listeners take TCP/HTTPS."""
    if listener is Protocol.HTTP:
        return pool is Protocol.HTTP
    return pool in (Protocol.TCP, Protocol.HTTPS)


@dataclass(frozen=True, slots=True)
class LoadBalancerSpec:
    """One floating load balancer: the whole desired state the agent converges one LB to."""

    id: str
    generation: int
    network: NetworkSpec
    vip_address: str
    listeners: tuple[ListenerSpec, ...] = ()
    pools: tuple[PoolSpec, ...] = ()
    vip_port_mac: str | None = None
    admin_state_up: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        check_uuid("loadbalancer.id", self.id)
        check_int("loadbalancer.generation", self.generation, 0, 2**63 - 1)
        if not isinstance(self.network, NetworkSpec):
            raise InvalidValueError("loadbalancer.network", "must be a NetworkSpec")
        vip = parse_host_address("loadbalancer.vip_address", self.vip_address,
                                 self.network.ip_network)
        if str(vip) == self.network.gateway:
            raise InconsistentSpecError("loadbalancer.vip_address", "is the gateway address")
        _set(self, "vip_address", str(vip))
        if self.vip_port_mac is not None and not (
            isinstance(self.vip_port_mac, str) and _MAC.fullmatch(self.vip_port_mac)
        ):
            raise InvalidValueError("loadbalancer.vip_port_mac", "lower-case aa:bb:cc:dd:ee:ff")
        _set(self, "listeners", _tuple("loadbalancer.listeners", self.listeners, ListenerSpec))
        _set(self, "pools", _tuple("loadbalancer.pools", self.pools, PoolSpec))
        check_bool("loadbalancer.admin_state_up", self.admin_state_up)
        check_text("loadbalancer.name", self.name)
        self.validate()

    def validate(self) -> None:
        """Cross-object checks: unique ids and ports, references that resolve, matching protocols."""
        _unique("listeners.id", (x.id for x in self.listeners))
        _unique("listeners.port", (x.port for x in self.listeners))
        _unique("pools.id", (p.id for p in self.pools))
        pools = {p.id: p for p in self.pools}
        for i, lst in enumerate(self.listeners):
            refs = [(f"listeners[{i}].default_pool_id", lst.default_pool_id)]
            refs += [
                (f"listeners[{i}].l7policies[{j}].redirect_pool_id", pol.redirect_pool_id)
                for j, pol in enumerate(lst.l7policies)
            ]
            for where, pool_id in refs:
                if pool_id is None:
                    continue
                if pool_id not in pools:
                    raise InconsistentSpecError(where, f"unknown pool {pool_id}")
                if not compatible(lst.protocol, pools[pool_id].protocol):
                    raise InconsistentSpecError(
                        where, f"{pools[pool_id].protocol} pool on a {lst.protocol} listener"
                    )

    @property
    def listeners_by_pool(self) -> dict[str, list[ListenerSpec]]:
        """Which listeners send traffic to each pool (for backend timeouts and mode)."""
        out: dict[str, list[ListenerSpec]] = {p.id: [] for p in self.pools}
        for lst in self.listeners:
            ids = {lst.default_pool_id} | {p.redirect_pool_id for p in lst.l7policies}
            for pool_id in sorted(i for i in ids if i is not None):
                out[pool_id].append(lst)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LoadBalancerSpec:
        """Build and validate from JSON-like data (e.g. an event payload).

        msgspec does the structural conversion; the ``__post_init__`` checks run on every
        object. Its ``ValidationError`` is re-raised as :class:`InvalidValueError`, so callers
        handle one family of errors.
        """
        try:
            return msgspec.convert(data, cls, strict=True)
        except msgspec.ValidationError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, SpecError):
                raise cause from None
            raise InvalidValueError("loadbalancer", str(exc)) from None


@dataclass(frozen=True, slots=True)
class HostLayout:
    """Where a host's objects live and what they are called: the ownership prefix and state dir.

    Everything the agent creates is named from this, and everything it deletes must match
    it, so two agents (or a test run next to a real agent) with different prefixes never touch
    each other's objects.
    """

    state_dir: str
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        check_prefix(self.prefix)

    @property
    def lb_namespace_prefix(self) -> str:
        return f"{self.prefix}lb-"

    @property
    def bridge_prefix(self) -> str:
        return f"{self.prefix}br-"

    @property
    def veth_prefix(self) -> str:
        return f"{self.prefix}v"

    def short_id(self, lb_id: str) -> str:
        """Eight hex digits of the LB id: short enough for interface names, unique in practice
        (``plan`` refuses two desired LBs that share one)."""
        return lb_id.replace("-", "")[:8]

    def namespace(self, lb_id: str) -> str:
        return f"{self.lb_namespace_prefix}{self.short_id(lb_id)}"

    def host_veth(self, lb_id: str) -> str:
        return f"{self.veth_prefix}{self.short_id(lb_id)}"

    def bridge(self, network: NetworkSpec) -> str:
        return network.bridge_name(self.prefix)

    @property
    def ns_vip_ifname(self) -> str:
        """The VIP interface inside an LB namespace (alone there, so one name fits all)."""
        return f"{self.prefix}vip"

    def lb_dir(self, short: str) -> str:
        return f"{self.state_dir}/{short}"
