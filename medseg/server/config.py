"""The listener service's configuration: one TOML file, validated completely at start.

Every section is a frozen dataclass; a wrong key, type or value stops the service before it
listens, with a message that names the key (``listener.port: must be 1..65535``), because a
node that half-starts in a hospital is worse than one that refuses to start.
"""

from __future__ import annotations

import dataclasses
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError, PromptError
from medseg.server.ruleprompts import parse_rule_prompt

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 needs the tomli backport
    import tomli as tomllib

CALLER = "caller"  # destination name meaning "back to the calling AE's return address"


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def check_ae_title(key: str, value: str) -> None:
    """DICOM AE title (PS3.5 6.2, VR AE): 1-16 printable ASCII characters, no backslash, no
    leading or trailing spaces (they are not significant, so a peer would not match)."""
    _require(
        0 < len(value) <= 16
        and value.isascii()
        and value.isprintable()
        and "\\" not in value
        and value.strip() == value,
        key,
        f"{value!r} is not a valid AE title (1-16 printable ASCII characters, no backslash)",
    )


def check_port(key: str, value: int, allow_zero: bool = False) -> None:
    low = 0 if allow_zero else 1
    _require(low <= value <= 65535, key, f"must be {low}..65535, got {value}")


@dataclass(frozen=True)
class ListenerConfig:
    """Where and how the DICOM listener accepts associations."""

    ae_title: str = "MEDSEG"
    host: str = "0.0.0.0"
    port: int = 11112
    max_pdu: int = 262144
    network_timeout: float = 60.0
    acse_timeout: float = 30.0
    dimse_timeout: float = 30.0
    max_associations: int = 10
    max_connections_per_ip: int = 20
    allow_any_ae: bool = False
    allow_any_called_ae: bool = False

    def __post_init__(self) -> None:
        check_ae_title("ae_title", self.ae_title)
        check_port("port", self.port, allow_zero=True)
        _require(self.max_pdu == 0 or self.max_pdu >= 4096, "max_pdu", "must be 0 or >= 4096")
        for name in ("network_timeout", "acse_timeout", "dimse_timeout"):
            _require(getattr(self, name) > 0, name, "must be positive")
        _require(self.max_associations >= 1, "max_associations", "must be >= 1")
        _require(
            self.max_connections_per_ip >= 0,
            "max_connections_per_ip",
            f"must be 0 (no limit) or positive, got {self.max_connections_per_ip}",
        )


@dataclass(frozen=True)
class TlsConfig:
    """TLS for the listener and for outgoing C-STOREs that ask for it (PS3.15 B.12)."""

    enabled: bool = False
    certificate: str = ""
    private_key: str = ""
    ca_certificates: str = ""
    require_client_certificate: bool = True
    minimum_version: str = "TLSv1.2"

    def __post_init__(self) -> None:
        _require(
            self.minimum_version in ("TLSv1.2", "TLSv1.3"),
            "minimum_version",
            "must be TLSv1.2 or TLSv1.3",
        )
        if self.enabled:
            _require(bool(self.certificate), "certificate", "is required when TLS is enabled")
            _require(bool(self.private_key), "private_key", "is required when TLS is enabled")
            if self.require_client_certificate:
                _require(
                    bool(self.ca_certificates),
                    "ca_certificates",
                    "is required when client certificates are required",
                )


@dataclass(frozen=True)
class StorageConfig:
    """The spool: received instances, the job database and the outbox."""

    spool: str = "./medseg-data"
    min_free_mb: float = 256.0
    retention_hours: float = 168.0
    fsync: bool = True

    def __post_init__(self) -> None:
        _require(bool(self.spool), "spool", "must name a folder")
        _require(self.min_free_mb >= 0, "min_free_mb", "must be >= 0")
        _require(self.retention_hours >= 0, "retention_hours", "must be >= 0")


@dataclass(frozen=True)
class CompletionConfig:
    """When a series counts as complete: nothing arrived for it for ``series_idle_seconds``."""

    series_idle_seconds: float = 30.0
    check_interval_seconds: float = 1.0

    def __post_init__(self) -> None:
        _require(self.series_idle_seconds > 0, "series_idle_seconds", "must be positive")
        _require(self.check_interval_seconds > 0, "check_interval_seconds", "must be positive")


@dataclass(frozen=True)
class QueueConfig:
    """The job queue: huey on SQLite (embedded) or Redis (scale-out), plus job leases."""

    backend: str = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    name: str = "medseg"
    workers: int = 1
    lease_seconds: float = 60.0
    max_attempts: int = 3
    retry_delay_seconds: float = 10.0
    sweep_interval_seconds: float = 10.0
    shutdown_timeout_seconds: float = 30.0

    def __post_init__(self) -> None:
        _require(self.backend in ("sqlite", "redis"), "backend", "must be 'sqlite' or 'redis'")
        if self.backend == "redis":
            _require(
                self.redis_url.startswith(("redis://", "rediss://", "unix://")),
                "redis_url",
                "must start with redis://, rediss:// or unix://",
            )
        _require(
            re.fullmatch(r"[A-Za-z0-9_-]{1,40}", self.name) is not None,
            "name",
            "must be 1-40 letters, digits, '-' or '_'",
        )
        _require(self.workers >= 0, "workers", "must be >= 0")
        _require(self.lease_seconds >= 1, "lease_seconds", "must be >= 1")
        _require(self.max_attempts >= 1, "max_attempts", "must be >= 1")
        _require(self.retry_delay_seconds >= 0, "retry_delay_seconds", "must be >= 0")
        _require(self.sweep_interval_seconds > 0, "sweep_interval_seconds", "must be positive")
        _require(self.shutdown_timeout_seconds >= 0, "shutdown_timeout_seconds", "must be >= 0")


@dataclass(frozen=True)
class DeliveryConfig:
    """How results leave: retries with exponential backoff, per destination."""

    initial_backoff_seconds: float = 5.0
    max_backoff_seconds: float = 600.0
    give_up_after_hours: float = 72.0
    permanent_failure_tries: int = 3
    timeout_seconds: float = 30.0
    calling_ae_title: str = ""

    def __post_init__(self) -> None:
        _require(self.initial_backoff_seconds > 0, "initial_backoff_seconds", "must be positive")
        _require(
            self.max_backoff_seconds >= self.initial_backoff_seconds,
            "max_backoff_seconds",
            "must be >= initial_backoff_seconds",
        )
        _require(self.give_up_after_hours >= 0, "give_up_after_hours", "must be >= 0")
        _require(
            isinstance(self.permanent_failure_tries, int) and self.permanent_failure_tries >= 1,
            "permanent_failure_tries",
            "must be an integer >= 1",
        )
        _require(self.timeout_seconds > 0, "timeout_seconds", "must be positive")
        if self.calling_ae_title:
            check_ae_title("calling_ae_title", self.calling_ae_title)


@dataclass(frozen=True)
class MarksConfig:
    """A reader's marks (GSPS, TID 1500 SR) received by C-STORE: how long one waits for the
    series it references (it may arrive before or during its series) before giving up."""

    wait_seconds: float = 600.0

    def __post_init__(self) -> None:
        _require(self.wait_seconds > 0, "wait_seconds", "must be positive")


RETRIEVE_METHODS = ("", "move", "get")


@dataclass(frozen=True)
class RetrieveConfig:
    """The PACS a series is retrieved from when a mark references one medseg does not hold
    (its Query/Retrieve SCP), and how: ``method`` "" (never: the mark waits
    ``[marks] wait_seconds`` for the series to be sent), "move" (C-MOVE with medseg's own AE
    title as the move destination: the PACS must know that AE title with medseg's host and
    port) or "get" (C-GET: the instances come back on medseg's own association).

    A failed attempt is tried again after ``initial_backoff_seconds``, doubling up to
    ``max_backoff_seconds``, at most ``max_tries`` times in all; ``timeout_seconds`` bounds
    each wait for the PACS (connecting, each answer).
    """

    method: str = ""
    ae_title: str = ""
    host: str = ""
    port: int = 0
    tls: bool = False
    max_tries: int = 5
    initial_backoff_seconds: float = 10.0
    max_backoff_seconds: float = 300.0
    timeout_seconds: float = 60.0

    def __post_init__(self) -> None:
        _require(
            self.method in RETRIEVE_METHODS,
            "method",
            f"must be 'move', 'get' or '' (no retrieval), got {self.method!r}",
        )
        if self.method:
            check_ae_title("ae_title", self.ae_title)
            _require(bool(self.host), "host", f"is required with method = {self.method!r}")
            check_port("port", self.port)
        _require(self.max_tries >= 1, "max_tries", "must be >= 1")
        _require(self.initial_backoff_seconds > 0, "initial_backoff_seconds", "must be positive")
        _require(
            self.max_backoff_seconds >= self.initial_backoff_seconds,
            "max_backoff_seconds",
            "must be >= initial_backoff_seconds",
        )
        _require(self.timeout_seconds > 0, "timeout_seconds", "must be positive")


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (127.0.0.0/8, ::1, ``localhost``)."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


PASSWORD_SCHEME = "pbkdf2_sha256"


@dataclass(frozen=True)
class WebConfig:
    """The HTTP side of ``medseg serve``: dashboard, ``/api/`` JSON and ``/metrics``.

    On loopback it may run without credentials; bound to any other address it needs bearer
    tokens (stored as SHA-256 hex digests) and/or users (``name:pbkdf2_sha256$...``, made by
    ``python3 -m medseg.server.web.passwords``), because the dashboard can retry and cancel
    jobs. ``tls`` serves HTTPS with the certificate and key of the ``[tls]`` section.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 11180
    tls: bool = False
    tokens_sha256: tuple[str, ...] = ()
    users: tuple[str, ...] = ()
    show_patient: bool = False
    refresh_seconds: float = 5.0
    jobs_shown: int = 200
    max_stow_mb: int = 256
    stow_stall_seconds: float = 60.0

    def __post_init__(self) -> None:
        _require(bool(self.host), "host", "must name an address (127.0.0.1 = this machine only)")
        check_port("port", self.port, allow_zero=True)
        for i, digest in enumerate(self.tokens_sha256):
            _require(
                re.fullmatch(r"[0-9a-f]{64}", digest) is not None,
                f"tokens_sha256[{i}]",
                "must be the 64 hex digits of the token's SHA-256 (printf %s TOKEN | sha256sum)",
            )
        names = []
        for i, user in enumerate(self.users):
            name, _, hashed = user.partition(":")
            parts = hashed.split("$")
            _require(
                bool(name) and len(parts) == 4 and parts[0] == PASSWORD_SCHEME,
                f"users[{i}]",
                f"must be 'name:{PASSWORD_SCHEME}$iterations$salt$hash' "
                "(python3 -m medseg.server.web.passwords NAME), never a plain password",
            )
            _require(name not in names, f"users[{i}]", f"duplicate user {name!r}")
            names.append(name)
        _require(
            not self.enabled
            or is_loopback(self.host)
            or bool(self.tokens_sha256)
            or bool(self.users),
            "host",
            f"{self.host!r} is reachable beyond this machine: configure web.tokens_sha256 "
            "and/or web.users, or bind to 127.0.0.1",
        )
        _require(self.refresh_seconds > 0, "refresh_seconds", "must be positive")
        _require(self.jobs_shown >= 1, "jobs_shown", "must be >= 1")
        _require(
            1 <= self.max_stow_mb <= 16384,
            "max_stow_mb",
            "must be 1..16384 (MB of STOW-RS request bodies, held in memory)",
        )
        _require(self.stow_stall_seconds > 0, "stow_stall_seconds", "must be positive")

    @property
    def authenticated(self) -> bool:
        """Whether requests must carry a token or a user's password."""
        return bool(self.tokens_sha256 or self.users)


MODEL_BACKENDS = ("auto", "onnxruntime", "aidlite")
# ONNX Runtime execution providers by short name (medseg.engine.onnx_runtime's aliases);
# full names ending in "ExecutionProvider" are passed through as they are.
PROVIDER_NAMES = ("cpu", "cuda", "tensorrt", "qnn")


@dataclass(frozen=True)
class ModelConfig:
    """The default model for rules that name none ('' = the bundled one) and how to run it.

    ``prompt_path`` is the default for prompted jobs (a rule's prompts, a reader's marks):
    '' = the bundled promptable model.

    ``backend`` picks the inference runtime (auto = by file extension: .onnx -> onnxruntime,
    .bin/.dlc -> aidlite on a Qualcomm NPU); ``providers`` asks ONNX Runtime for execution
    providers in order of preference (CPU is always the last fallback).
    """

    path: str = ""
    prompt_path: str = ""
    backend: str = "auto"
    threads: int = 0
    providers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _require(
            self.backend in MODEL_BACKENDS,
            "backend",
            f"must be one of {', '.join(MODEL_BACKENDS)}, got {self.backend!r}",
        )
        _require(self.threads >= 0, "threads", "must be >= 0 (0 = library default)")
        for i, name in enumerate(self.providers):
            _require(
                name.lower() in PROVIDER_NAMES or name.endswith("ExecutionProvider"),
                f"providers[{i}]",
                f"unknown ONNX Runtime provider {name!r} (use {', '.join(PROVIDER_NAMES)} "
                "or a full name such as 'CUDAExecutionProvider')",
            )
        _require(
            not self.providers or self.backend != "aidlite",
            "providers",
            "applies to the onnxruntime backend only (backend is 'aidlite')",
        )


@dataclass(frozen=True)
class PeerConfig:
    """A calling AE allowed to send, optionally only from given IPs, and its return address."""

    ae_title: str
    addresses: tuple[str, ...] = ()
    return_host: str = ""
    return_port: int = 0
    return_ae_title: str = ""
    tls: bool = False

    def __post_init__(self) -> None:
        check_ae_title("ae_title", self.ae_title)
        check_port("return_port", self.return_port, allow_zero=True)
        if self.return_ae_title:
            check_ae_title("return_ae_title", self.return_ae_title)


@dataclass(frozen=True)
class DestinationConfig:
    """A named C-STORE destination a rule can send results to."""

    name: str
    ae_title: str
    host: str
    port: int
    tls: bool = False

    def __post_init__(self) -> None:
        _require(
            re.fullmatch(r"[A-Za-z0-9_-]{1,40}", self.name) is not None and self.name != CALLER,
            "name",
            f"must be 1-40 letters, digits, '-' or '_' and not {CALLER!r}",
        )
        check_ae_title("ae_title", self.ae_title)
        _require(bool(self.host), "host", "is required")
        check_port("port", self.port)


@dataclass(frozen=True)
class RuleConfig:
    """Which series to process and how; the first rule that matches a series wins."""

    name: str
    modalities: tuple[str, ...] = ()
    body_parts: tuple[str, ...] = ()
    series_description: str = ""
    min_slices: int = 1
    model: str = ""
    window: str = ""
    threshold: float | None = None
    prompts: tuple[str, ...] = ()  # "box=x0,y0,x1,y1@k0-k1", "point-mm=x,y,z:neg", ...
    destinations: tuple[str, ...] = (CALLER,)
    output_folder: str = ""
    automatic: bool = True  # segment every matching series without prompts
    marks: bool = False  # a reader's marks on a matching series become prompt jobs
    marks_model: str = ""  # the promptable model for mark jobs ('' = model)

    def __post_init__(self) -> None:
        _require(bool(self.name), "name", "is required")
        _require(
            self.automatic or self.marks,
            "automatic",
            "a rule with automatic = false must take marks (marks = true), else it does nothing",
        )
        _require(
            self.marks or not self.marks_model, "marks_model", "applies only with marks = true"
        )
        _require(self.min_slices >= 1, "min_slices", "must be >= 1")
        _require(
            self.threshold is None or 0.0 < self.threshold < 1.0,
            "threshold",
            f"must lie in (0, 1), got {self.threshold} (leave it out for the model card's)",
        )
        if self.window:
            from medseg.preprocess import check_window_spec

            try:
                check_window_spec(self.window)
            except ConfigError as exc:
                raise ConfigError(f"window: {exc}") from None
        try:
            re.compile(self.series_description)
        except re.error as exc:
            raise ConfigError(f"series_description: invalid regular expression: {exc}") from exc
        for m, text in enumerate(self.prompts):
            try:
                parse_rule_prompt(text)
            except PromptError as exc:
                raise ConfigError(f"prompts[{m}]: {exc}") from exc
        _require(
            bool(self.destinations) or bool(self.output_folder),
            "destinations",
            "a rule needs at least one destination or an output_folder",
        )


@dataclass(frozen=True)
class ServerConfig:
    """The whole service configuration (``pacs_config/*.toml``)."""

    listener: ListenerConfig = field(default_factory=ListenerConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    completion: CompletionConfig = field(default_factory=CompletionConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    delivery: DeliveryConfig = field(default_factory=DeliveryConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    marks: MarksConfig = field(default_factory=MarksConfig)
    retrieve: RetrieveConfig = field(default_factory=RetrieveConfig)
    web: WebConfig = field(default_factory=WebConfig)
    peers: tuple[PeerConfig, ...] = ()
    destinations: tuple[DestinationConfig, ...] = ()
    rules: tuple[RuleConfig, ...] = ()
    source: str = ""

    def __post_init__(self) -> None:
        names = [d.name for d in self.destinations]
        for i, name in enumerate(names):
            _require(names.index(name) == i, f"destinations[{i}].name", f"duplicate {name!r}")
        known = {*names, CALLER}
        for i, rule in enumerate(self.rules):
            for dest in rule.destinations:
                _require(
                    dest in known,
                    f"rules[{i}].destinations",
                    f"unknown destination {dest!r} (known: {sorted(known)})",
                )
        aes = [p.ae_title for p in self.peers]
        for i, ae in enumerate(aes):
            _require(aes.index(ae) == i, f"peers[{i}].ae_title", f"duplicate {ae!r}")
        _require(
            self.listener.allow_any_ae or bool(self.peers),
            "peers",
            "no calling AE is allowed: add [[peers]] or set listener.allow_any_ae = true",
        )
        retrieve = self.retrieve
        _require(
            retrieve.method != "move"
            or self.listener.allow_any_ae
            or self.peer(retrieve.ae_title) is not None,
            "retrieve.ae_title",
            f"with method = 'move' the PACS stores the series to medseg as {retrieve.ae_title!r}:"
            " add it to [[peers]] (or set listener.allow_any_ae = true)",
        )
        if self.web.enabled and self.web.tls:
            _require(
                bool(self.tls.certificate and self.tls.private_key),
                "web.tls",
                "needs tls.certificate and tls.private_key (the DICOM TLS certificate settings)",
            )

    @property
    def spool_dir(self) -> Path:
        return Path(self.storage.spool).expanduser().resolve()

    def peer(self, ae_title: str) -> PeerConfig | None:
        return next((p for p in self.peers if p.ae_title == ae_title), None)

    def destination(self, name: str) -> DestinationConfig | None:
        return next((d for d in self.destinations if d.name == name), None)

    def with_overrides(self, **sections: Any) -> ServerConfig:
        """A copy with whole sections replaced (command-line overrides, tests)."""
        return dataclasses.replace(self, **sections)


_TABLES = {
    "listener": ListenerConfig,
    "tls": TlsConfig,
    "storage": StorageConfig,
    "completion": CompletionConfig,
    "queue": QueueConfig,
    "delivery": DeliveryConfig,
    "model": ModelConfig,
    "marks": MarksConfig,
    "retrieve": RetrieveConfig,
    "web": WebConfig,
}
_ARRAYS = {"peers": PeerConfig, "destinations": DestinationConfig, "rules": RuleConfig}


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check one TOML value against a dataclass field type, converting lists to tuples."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):  # "X | None": TOML has no null, X is given
        (hint,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(key, value, hint)
    if origin is tuple:
        _require(isinstance(value, list), key, f"must be a list, got {type(value).__name__}")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(f"{key}[{i}]", v, item) for i, v in enumerate(value))
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        _require(ok, key, f"must be a number, got {type(value).__name__}")
        return float(value)
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
        _require(ok, key, f"must be an integer, got {type(value).__name__}")
        return value
    if hint in (str, bool):
        ok = isinstance(value, hint)
        _require(ok, key, f"must be a {hint.__name__}, got {type(value).__name__}")
        return value
    raise ConfigError(f"{key}: unsupported type")  # pragma: no cover


def _build(cls: type, table: Any, prefix: str) -> Any:
    _require(isinstance(table, dict), prefix, "must be a table")
    hints = typing.get_type_hints(cls)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - fields)
    if unknown:
        raise ConfigError(f"{prefix}.{unknown[0]}: unknown key (known: {sorted(fields)})")
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
        and f.name not in table
    ]
    if missing:
        raise ConfigError(f"{prefix}.{missing[0]}: is required")
    values = {k: _coerce(f"{prefix}.{k}", v, hints[k]) for k, v in table.items()}
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{prefix}.{exc}") from exc


def parse_config(data: dict[str, Any], source: str = "") -> ServerConfig:
    """Validate a parsed TOML document into a ``ServerConfig``."""
    unknown = sorted(set(data) - set(_TABLES) - set(_ARRAYS))
    if unknown:
        known = sorted([*_TABLES, *_ARRAYS])
        raise ConfigError(f"{unknown[0]}: unknown section (known: {known})")
    sections: dict[str, Any] = {}
    for name, cls in _TABLES.items():
        if name in data:
            sections[name] = _build(cls, data[name], name)
    for name, cls in _ARRAYS.items():
        if name in data:
            items = data[name]
            _require(isinstance(items, list), name, f"must be an array of tables ([[{name}]])")
            sections[name] = tuple(_build(cls, t, f"{name}[{i}]") for i, t in enumerate(items))
    return ServerConfig(**sections, source=source)


def load_config(path: Path) -> ServerConfig:
    """Read and validate a configuration file; ``ConfigError`` names the file and bad key."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"configuration file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        return parse_config(data, source=str(path))
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def default_config_path() -> Path:
    """``pacs_config/default.toml`` from the checkout, or the wheel's bundled copy."""
    package_dir = Path(__file__).resolve().parents[1]
    for candidate in (package_dir / "bundled_config", package_dir.parent / "pacs_config"):
        if (candidate / "default.toml").is_file():
            return candidate / "default.toml"
    raise ConfigError("the bundled pacs_config/default.toml is missing from this installation")
