"""Typed, validated configuration read from environment variables and flags.

Every setting is declared once, as a `Config` field made by `setting(env, parse, default,
help)`; SETTINGS, read from those fields, builds the argparse parser (so `--help` lists
every setting), and validation reports every problem at once.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
COMMANDS = ("serve", "migrate", "relay")
# OTEL_TRACES_SAMPLER's values (the OpenTelemetry SDK's names).
TRACES_SAMPLERS = ("always_on", "always_off", "traceidratio", "parentbased_always_on",
                   "parentbased_always_off", "parentbased_traceidratio")


class ConfigError(Exception):
    """Raised with every configuration problem found, one message per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Setting:
    """One setting's declaration: its variable (the Config field is its lower case)."""

    env: str
    parse: Callable[[str], Any]
    default: Any
    help: str
    secret: bool = False

    @property
    def attr(self) -> str:
        return self.env.lower()

    @property
    def flag(self) -> str:
        return "--" + self.env.lower().replace("_", "-")


def setting(env: str, parse: Callable[[str], Any], default: Any, help: str,
            secret: bool = False) -> Any:
    """A Config field for the setting read from `env` (and its flag) by `parse`."""
    return field(default=default,
                 metadata={"setting": Setting(env, parse, default, help, secret)})


def _int(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text.strip())
        except ValueError:
            raise ValueError(f"must be an integer, got {text!r}") from None
        if low is not None and value < low:
            raise ValueError(f"must be at least {low}, got {value}")
        if high is not None and value > high:
            raise ValueError(f"must be at most {high}, got {value}")
        return value

    return parse


def _float(low: float = 0.0, high: float | None = None) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text.strip())
        except ValueError:
            raise ValueError(f"must be a number, got {text!r}") from None
        if value != value or value < low:  # NaN or too small
            raise ValueError(f"must be a number of at least {low:g}, got {text!r}")
        if high is not None and value > high:
            raise ValueError(f"must be at most {high:g}, got {text!r}")
        return value

    return parse


def _choice(*choices: str, upper: bool = False) -> Callable[[str], str]:
    def parse(text: str) -> str:
        value = text.strip().upper() if upper else text.strip().lower()
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}, got {text!r}")
        return value

    return parse


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"must be true or false, got {text!r}")


def _str(text: str) -> str:
    return text.strip()


def _optional_str(text: str) -> str | None:
    return text.strip() or None


def _csv(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def _secrets(text: str) -> tuple[str, ...]:
    secrets = _csv(text)
    for secret in secrets:
        if len(secret) < 16:
            raise ValueError("every secret must be at least 16 characters long")
    return secrets


def _nonempty_str(text: str) -> str:
    value = text.strip()
    if not value:
        raise ValueError("must not be empty")
    return value


def _otlp_endpoint(text: str) -> str | None:
    value = text.strip().rstrip("/")
    if not value:
        return None
    scheme, sep, rest = value.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or not rest:
        raise ValueError(f"must be an http:// or https:// URL, got {text!r}")
    return value


def _key_values(text: str) -> tuple[tuple[str, str], ...]:
    """W3C Baggage-style `key=value,key2=value2` (values percent-decoded), as the
    OpenTelemetry variables OTEL_RESOURCE_ATTRIBUTES and OTEL_EXPORTER_OTLP_HEADERS use."""
    pairs = []
    for part in _csv(text):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"{part!r} is not key=value")
        pairs.append((key.strip(), urllib.parse.unquote(value.strip())))
    return tuple(pairs)


def _seconds_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in _csv(text))
    except ValueError:
        raise ValueError(f"must be comma separated numbers of seconds, got {text!r}") from None
    if not values or min(values) < 0:
        raise ValueError("must list at least one non-negative number of seconds")
    return values


def _networks(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for part in _csv(text):
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(f"{part!r} is not an IP address or CIDR network") from None
    return tuple(networks)


@dataclass(frozen=True)
class Config:
    """The validated settings; attribute names are the lower-cased variables.

    Each setting is declared once, here, by `setting(env, parse, default,
    help)`; SETTINGS, the flags and `--help` are read from these fields.
    """

    command: str
    # `migrate --contract`: also apply migrations flagged `-- saypi: contract`,
    # once no instance of the previous release is left.
    contract: bool = False
    app_env: str = setting(
        "APP_ENV", _choice("development", "production"), "development",
        "development or production; production requires DATABASE_URL and USER_SECRETS")
    database_url: str | None = setting(
        "DATABASE_URL", _optional_str, None,
        "PostgreSQL DSN; unset starts an embedded PostgreSQL under DATA_DIR", secret=True)
    data_dir: str = setting(
        "DATA_DIR", _str, ".data",
        "directory for the embedded PostgreSQL and the generated development secret")
    host: str = setting("HOST", _str, "127.0.0.1", "address to listen on")
    port: int = setting("PORT", _int(0, 65535), 8080, "port to listen on (0 picks a free one)")
    web_concurrency: int = setting("WEB_CONCURRENCY", _int(1, 64), 2, "gunicorn worker processes")
    threads: int = setting("THREADS", _int(1, 256), 4, "threads per worker (gthread)")
    reuse_port: bool = setting(
        "REUSE_PORT", _bool, True,
        "SO_REUSEPORT on the listening socket, so the kernel spreads connections")
    db_pool_min: int = setting(
        "DB_POOL_MIN", _int(0, 1000), 2,
        "connections each worker opens before serving")
    db_pool_max: int = setting(
        "DB_POOL_MAX", _int(1, 1000), 4,
        "most connections per worker (match THREADS)")
    db_pool_timeout: float = setting(
        "DB_POOL_TIMEOUT", _float(0.05, 60), 3.0,
        "seconds a request may wait, for a thread and then for database connections, before "
        "503 service_unavailable with Retry-After")
    db_pool_max_waiting: int = setting(
        "DB_POOL_MAX_WAITING", _int(0, 100000), 64,
        "requests that may queue for a connection per worker before fast 503s (0: no bound)")
    db_pool_max_idle: float = setting(
        "DB_POOL_MAX_IDLE", _float(1), 300.0,
        "seconds an idle connection is kept")
    db_pool_max_lifetime: float = setting(
        "DB_POOL_MAX_LIFETIME", _float(1), 1800.0,
        "seconds before a connection is recycled")
    db_pool_check_interval: float = setting(
        "DB_POOL_CHECK_INTERVAL", _float(0.1), 5.0,
        "seconds between background pool health checks")
    db_connect_timeout: int = setting(
        "DB_CONNECT_TIMEOUT", _int(1, 300), 5,
        "seconds to establish a database connection")
    db_statement_timeout: int = setting(
        "DB_STATEMENT_TIMEOUT", _int(0), 5000,
        "milliseconds any SQL statement may run (0: no limit)")
    user_secrets: tuple[str, ...] = setting(
        "USER_SECRETS", _secrets, (),
        "comma separated token secrets (16+ chars); the first signs, all verify", secret=True)
    log_level: str = setting("LOG_LEVEL", _choice(*LOG_LEVELS, upper=True), "INFO", "log level")
    log_format: str = setting(
        "LOG_FORMAT", _choice("json", "text"), "json",
        "json for machines, text for people")
    max_body_bytes: int = setting("MAX_BODY_BYTES", _int(1), 65536, "largest request body accepted")
    graceful_timeout: float = setting(
        "GRACEFUL_TIMEOUT", _float(0), 20.0,
        "seconds in-flight requests get to finish after SIGTERM")
    max_conversations_per_user: int = setting(
        "MAX_CONVERSATIONS_PER_USER", _int(0), 1000,
        "conversations a user may own")
    max_moods_per_user: int = setting("MAX_MOODS_PER_USER", _int(0), 100, "moods a user may define")
    max_lines_per_conversation: int = setting(
        "MAX_LINES_PER_CONVERSATION", _int(0), 1000,
        "lines a conversation may hold")
    max_batch_lines: int = setting(
        "MAX_BATCH_LINES", _int(1, 1000), 100,
        "lines one request may create (POST .../lines/batch, POST /conversations with lines)")
    rate_limit_user_per_minute: int = setting(
        "RATE_LIMIT_USER_PER_MINUTE", _int(0), 600,
        "requests per minute per authenticated user (0 disables)")
    rate_limit_user_burst: int = setting(
        "RATE_LIMIT_USER_BURST", _int(0), 60,
        "user requests admitted back to back (0 counts as 1)")
    rate_limit_ip_per_minute: int = setting(
        "RATE_LIMIT_IP_PER_MINUTE", _int(0), 120,
        "requests per minute per client address before authentication (0 disables)")
    rate_limit_ip_burst: int = setting(
        "RATE_LIMIT_IP_BURST", _int(0), 30,
        "address requests admitted back to back (0 counts as 1)")
    rate_limit_lease_max: int = setting(
        "RATE_LIMIT_LEASE_MAX", _int(1, 1000), 64,
        "most admissions of one busy key a worker takes per store call, Redis or PostgreSQL "
        "(1: every request asks the store)")
    rate_limit_lease_seconds: float = setting(
        "RATE_LIMIT_LEASE_SECONDS", _float(0.01), 1.0,
        "seconds a worker holds leased admissions before giving the unused ones back")
    rate_limit_renders_per_admission: int = setting(
        "RATE_LIMIT_RENDERS_PER_ADMISSION", _int(0), 50,
        "renders missing the render cache that cost an authenticated request one more "
        "admission of the user's limit (0: requests cost one admission whatever they render)")
    trusted_proxies: tuple = setting(
        "TRUSTED_PROXIES", _networks, (),
        "comma separated CIDRs of proxies whose X-Forwarded-For is believed")
    cors_origins: tuple[str, ...] = setting(
        "CORS_ORIGINS", _csv, (),
        "comma separated origins allowed by CORS (empty: off)")
    render_cache_size: int = setting(
        "RENDER_CACHE_SIZE", _int(0), 4096,
        "rendered cowsay outputs kept per worker")
    cowpath: str | None = setting(
        "COWPATH", _optional_str, None,
        "colon separated directories searched for .cow files")
    health_cache_seconds: float = setting(
        "HEALTH_CACHE_SECONDS", _float(0), 2.0,
        "seconds health results are reused")
    health_check_timeout: float = setting(
        "HEALTH_CHECK_TIMEOUT", _float(0.05, 60), 1.0,
        "seconds one health check may take")
    health_details: bool = setting(
        "HEALTH_DETAILS", _bool, False,
        "show hostnames and versions in /health/detailed")
    memory_limit_bytes: int = setting(
        "MEMORY_LIMIT_BYTES", _int(0), 0,
        "worker memory budget for the health check (0: not checked)")
    purge_interval_seconds: float = setting(
        "PURGE_INTERVAL_SECONDS", _float(0.1), 300.0,
        "seconds between purges of expired idempotency keys and rate-limit state")
    events_retention_hours: int = setting(
        "EVENTS_RETENTION_HOURS", _int(1, 87600), 720,
        "hours events are kept (GET /events); older ones are purged and refused as cursors")
    relay_poll_seconds: float = setting(
        "RELAY_POLL_SECONDS", _float(0.01, 60), 0.05,
        "seconds an idle relay task waits before it looks for new work")
    relay_port: int = setting(
        "RELAY_PORT", _int(0, 65535), 8081,
        "the relay's health and metrics port, on HOST (0 picks a free one)")
    relay_grace_seconds: float = setting(
        "RELAY_GRACE_SECONDS", _float(0, 600), 15.0,
        "seconds a stopping relay gives the work under way to finish")
    relay_beside: bool = setting(
        "RELAY_BESIDE", _bool, False,
        "serve: also run a relay process beside the server, on its database (make run)")
    # Webhooks (docs/webhooks.md): the endpoints API's checks and the relay's deliveries.
    webhook_allow_private: bool = setting(
        "WEBHOOK_ALLOW_PRIVATE", _bool, False,
        "let webhook URLs reach loopback, private, link-local and multicast addresses "
        "(production still wants https): for tests and private networks only")
    webhook_max_endpoints: int = setting(
        "WEBHOOK_MAX_ENDPOINTS", _int(1, 1000), 16, "webhook endpoints per user")
    webhook_timeout_seconds: float = setting(
        "WEBHOOK_TIMEOUT_SECONDS", _float(0.05, 60), 10.0,
        "seconds a delivery may take, connecting and answering together")
    webhook_threads: int = setting(
        "WEBHOOK_THREADS", _int(1, 64), 4, "deliveries one relay makes at once")
    webhook_retry_schedule: tuple[float, ...] = setting(
        "WEBHOOK_RETRY_SCHEDULE", _seconds_list, (5, 300, 1800, 7200, 18000, 36000, 36000,
                                                  36000),
        "comma separated seconds between a delivery's attempts (jittered by 20 percent), then "
        "it is given up")
    webhook_breaker_failures: int = setting(
        "WEBHOOK_BREAKER_FAILURES", _int(1, 1000), 5,
        "failed deliveries in a row that open an endpoint's circuit breaker")
    webhook_breaker_seconds: float = setting(
        "WEBHOOK_BREAKER_SECONDS", _float(0.05, 86400), 60.0,
        "seconds an open breaker lets no delivery through, then one probe")
    webhook_disable_after_hours: float = setting(
        "WEBHOOK_DISABLE_AFTER_HOURS", _float(0.0001, 8760), 72.0,
        "hours of nothing but failures after which an endpoint is disabled")
    webhook_dns_seconds: float = setting(
        "WEBHOOK_DNS_SECONDS", _float(0.05, 60), 2.0,
        "seconds a webhook host's name may take to resolve (on creation and before each "
        "delivery); a slower name is refused")
    webhook_resolve: tuple[tuple[str, str], ...] = setting(
        "WEBHOOK_RESOLVE", _key_values, (),
        "host=address pairs resolved without DNS (as curl's --resolve), for tests")
    # Live streams (GET /events/stream): docs/streams.md.
    stream_heartbeat_seconds: float = setting(
        "STREAM_HEARTBEAT_SECONDS", _float(0.1, 600), 25.0,
        "seconds between the comment heartbeats of an idle event stream")
    stream_direct_seconds: float = setting(
        "STREAM_DIRECT_SECONDS", _float(0.1, 3600), 30.0,
        "seconds SayPI serves one event stream itself (without a GRIP proxy); the client "
        "then resumes with Last-Event-ID")
    stream_direct_max: int = setting(
        "STREAM_DIRECT_MAX", _int(0, 256), 2,
        "event streams one worker serves itself at once (each holds an API thread; at most "
        "THREADS - 1); more are 503 with Retry-After")
    stream_poll_seconds: float = setting(
        "STREAM_POLL_SECONDS", _float(0.01, 60), 0.25,
        "seconds between the event log reads of a stream SayPI serves itself")
    grip_key: str | None = setting(
        "GRIP_KEY", _optional_str, None,
        "the key the GRIP proxy (Pushpin's sig_key) signs Grip-Sig with; unset: every stream "
        "is served directly", secret=True)
    pushpin_publish_urls: tuple[str, ...] = setting(
        "PUSHPIN_PUBLISH_URLS", _csv, (),
        "comma separated push_in_http base URLs of the Pushpin instances the relay publishes "
        "events to (unset: no publishing)")
    pushpin_gather_seconds: float = setting(
        "PUSHPIN_GATHER_SECONDS", _float(0, 1), 0.1,
        "while events keep coming, seconds between a relay's publishes to one Pushpin, so a "
        "busy channel's events go to its subscribers as one item (0: each batch at once)")
    fault_injection: bool = setting(
        "FAULT_INJECTION", _bool, False,
        "serve /debug/sleep and /debug/fail for failure tests (refused in production)")
    prometheus_multiproc_dir: str | None = setting(
        "PROMETHEUS_MULTIPROC_DIR", _optional_str, None,
        "directory for metrics shared by workers (unset: a fresh temporary one)")
    header_timeout: float = setting(
        "HEADER_TIMEOUT", _float(0.1, 300), 5.0,
        "seconds a connection has to send its complete request head (from connecting, or from "
        "the first byte of its next request); slower connections are closed")
    max_header_bytes: int = setting(
        "MAX_HEADER_BYTES", _int(1024, 1048576), 32768,
        "largest request head (request line and headers) accepted; larger is 400 "
        "invalid_request")
    health_threads: int = setting(
        "HEALTH_THREADS", _int(1, 16), 2,
        "threads per worker reserved for /health/*, so probes never wait behind the API")
    body_timeout: float = setting(
        "BODY_TIMEOUT", _float(0.1, 300), 10.0,
        "seconds a request has to send its body (up to MAX_BODY_BYTES) once its head is "
        "complete; slower connections are closed. A request gets a thread only once its body "
        "has arrived")
    database_replica_urls: tuple[str, ...] = setting(
        "DATABASE_REPLICA_URLS", _csv, (),
        "comma separated DSNs of PostgreSQL streaming replicas that serve reads (unset: every "
        "read goes to DATABASE_URL)", secret=True)
    replica_max_lag_seconds: float = setting(
        "REPLICA_MAX_LAG_SECONDS", _float(0.1, 3600), 5.0,
        "a replica further behind the primary than this is taken out of rotation")
    replica_check_interval: float = setting(
        "REPLICA_CHECK_INTERVAL", _float(0.05, 60), 0.25,
        "seconds between each worker's reads of every replica's replay position and lag")
    replica_read_timeout: float = setting(
        "REPLICA_READ_TIMEOUT", _float(0.05, 60), 2.0,
        "seconds a read on a replica may take (cut off client-side, so a hung replica "
        "counts too) before it runs again on the primary and the replica leaves rotation")
    redis_url: str | None = setting(
        "REDIS_URL", _optional_str, None,
        "Redis for per-request hot state: rate limits and the users' last-write positions "
        "(unset: both live in PostgreSQL)", secret=True)
    redis_timeout: float = setting(
        "REDIS_TIMEOUT", _float(0.005, 10), 0.1,
        "seconds one Redis call may take before it counts as failed")
    database_direct_url: str | None = setting(
        "DATABASE_DIRECT_URL", _optional_str, None,
        "DSN that reaches the primary without a transaction-pooling proxy, for migrations "
        "and LISTEN (unset: DATABASE_URL)", secret=True)
    db_prepare: bool = setting(
        "DB_PREPARE", _bool, True,
        "server-side prepared statements and per-connection settings; false behind PgBouncer "
        "in transaction pooling mode")
    # Tracing: the OpenTelemetry SDK's standard variables,
    # read here like every other setting and handed to the SDK explicitly.
    otel_exporter_otlp_endpoint: str | None = setting(
        "OTEL_EXPORTER_OTLP_ENDPOINT", _otlp_endpoint, None,
        "OTLP/HTTP collector base URL (spans go to <url>/v1/traces); unset: tracing off")
    otel_exporter_otlp_headers: tuple[tuple[str, str], ...] = setting(
        "OTEL_EXPORTER_OTLP_HEADERS", _key_values, (),
        "comma separated key=value headers sent with every span export", secret=True)
    otel_service_name: str = setting(
        "OTEL_SERVICE_NAME", _nonempty_str, "saypi", "service.name of every span")
    otel_resource_attributes: tuple[tuple[str, str], ...] = setting(
        "OTEL_RESOURCE_ATTRIBUTES", _key_values, (),
        "comma separated key=value resource attributes (deployment.environment=prod, ...)")
    otel_traces_sampler: str = setting(
        "OTEL_TRACES_SAMPLER", _choice(*TRACES_SAMPLERS), "parentbased_traceidratio",
        "which requests are traced: " + ", ".join(TRACES_SAMPLERS))
    otel_traces_sampler_arg: float = setting(
        "OTEL_TRACES_SAMPLER_ARG", _float(0.0, 1.0), 1.0,
        "the traceidratio samplers' ratio of new traces kept (0 to 1)")
    otel_bsp_schedule_delay: int = setting(
        "OTEL_BSP_SCHEDULE_DELAY", _int(1, 600000), 5000,
        "milliseconds between span exports")
    otel_bsp_max_queue_size: int = setting(
        "OTEL_BSP_MAX_QUEUE_SIZE", _int(1, 1000000), 2048,
        "spans a worker holds for export; more are dropped and counted")
    otel_bsp_max_export_batch_size: int = setting(
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", _int(1, 100000), 512,
        "most spans sent in one export")
    otel_bsp_export_timeout: int = setting(
        "OTEL_BSP_EXPORT_TIMEOUT", _int(1, 600000), 10000,
        "milliseconds one export may take, retries included")

    @property
    def production(self) -> bool:
        return self.app_env == "production"

    def replace(self, **changes: Any) -> Config:
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str], argv: Sequence[str],
                 stdout: IO[str] | None = None) -> Config:
        """Build from flags (which win) and environment; raise ConfigError listing every problem."""
        args = build_parser(stdout).parse_args(list(argv))
        problems: list[str] = []
        values: dict[str, Any] = {"command": args.command or "serve",
                                  "contract": args.contract}
        if args.contract and values["command"] != "migrate":
            problems.append("--contract: only with the migrate command (run.py migrate "
                            "--contract)")
        for setting in SETTINGS:
            raw = getattr(args, setting.attr)
            source = setting.flag
            if raw is None:
                raw = env.get(setting.env)
                source = setting.env
            if raw is None:
                values[setting.attr] = setting.default
                continue
            try:
                values[setting.attr] = setting.parse(raw)
            except ValueError as exc:
                problems.append(f"{source}: {exc}")
                values[setting.attr] = setting.default
        problems.extend(_cross_checks(values))
        if problems:
            raise ConfigError(problems)
        return cls(**values)


SETTINGS: tuple[Setting, ...] = tuple(f.metadata["setting"] for f in fields(Config)
                                      if "setting" in f.metadata)
for _field in fields(Config):
    if "setting" in _field.metadata and _field.metadata["setting"].attr != _field.name:
        raise TypeError(f"Config.{_field.name} is declared as {_field.metadata['setting'].env}")


def _cross_checks(values: dict[str, Any]) -> list[str]:
    problems = []
    if values["db_pool_min"] > values["db_pool_max"]:
        problems.append(
            f"DB_POOL_MIN: must not exceed DB_POOL_MAX "
            f"({values['db_pool_min']} > {values['db_pool_max']})"
        )
    if values["otel_bsp_max_export_batch_size"] > values["otel_bsp_max_queue_size"]:
        problems.append(
            f"OTEL_BSP_MAX_EXPORT_BATCH_SIZE: must not exceed OTEL_BSP_MAX_QUEUE_SIZE "
            f"({values['otel_bsp_max_export_batch_size']} > {values['otel_bsp_max_queue_size']})"
        )
    if values["app_env"] == "production":
        if not values["database_url"]:
            problems.append("DATABASE_URL: is required when APP_ENV=production")
        if not values["user_secrets"]:
            problems.append("USER_SECRETS: is required when APP_ENV=production")
        if values["fault_injection"]:
            problems.append("FAULT_INJECTION: must not be enabled when APP_ENV=production")
    return problems


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that writes help and errors to the given stream."""

    def __init__(self, *args: Any, stream: IO[str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.stream = stream

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if message:
            (self.stream or file or sys.stderr).write(message)


def build_parser(stream: IO[str] | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        stream=stream,
        prog="run.py",
        description="SayPI, the cowsay conversation API. Every setting can be given as a flag "
        "or as its environment variable; flags win.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", choices=COMMANDS, default="serve",
                        help="serve (default): migrate, then serve HTTP; "
                             "migrate: apply migrations and exit; "
                             "relay: migrate, then run the relay (docs/relay.md)")
    parser.add_argument("--contract", action="store_true",
                        help="with migrate: also apply contract migrations (those that remove "
                             "what the previous release uses); run it once no instance of the "
                             "previous release is left")
    group = parser.add_argument_group("settings (flag / environment variable)")
    for setting in SETTINGS:
        default = "(unset)" if setting.default in (None, ()) else setting.default
        if setting.secret and setting.default:
            default = "(hidden)"
        group.add_argument(
            setting.flag, dest=setting.attr, metavar="VALUE", default=None,
            help=f"[env {setting.env}, default {default}] {setting.help}".replace("%", "%%"),
        )
    return parser
