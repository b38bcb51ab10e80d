"""Settings model. Every URL, port, AE title and path of ribnode is read from here.

Each section belongs to one part of the house; add a field to the section that owns it and
document it in ``docs/configuration.md``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, SecretStr, field_serializer, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

CONFIG_ENV = "RIBNODE_CONFIG"


class AllowedSender(BaseModel):
    """A calling AE title allowed to associate, optionally bound to a host address."""

    ae_title: str
    host: str | None = None


class ListenerSettings(BaseModel):
    """The DICOM C-STORE/C-ECHO listener (``ribnode serve``)."""

    ae_title: str = "RIBNODE"
    bind_address: str = "127.0.0.1"
    port: int = 11112
    max_associations: int = 16
    # Sender allow-list. ``open_mode`` accepts any caller: for the demo only.
    open_mode: bool = False
    allowed_senders: list[AllowedSender] = Field(default_factory=list)
    # DICOM TLS (PS3.15 B.1). Off when ``tls_cert`` is unset.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None
    tls_verify_client: bool = False
    # Largest PDU we accept (0: no limit). Large PDUs cut per-PDU overhead on big images.
    max_pdu_size: int = 0
    # Idle network timeout of one association, seconds (no PDU for this long: A-ABORT).
    network_timeout_s: float = 30.0
    # ACSE timeout (ARTIM), seconds: a connection that sends no A-ASSOCIATE-RQ (or release)
    # within this long is closed (audited as a Security Alert), so idle connections cannot
    # hold the association slots.
    acse_timeout_s: float = Field(default=10.0, gt=0)
    # DIMSE timeout, seconds: longest wait for the next DIMSE message of an association.
    dimse_timeout_s: float = Field(default=30.0, gt=0)
    # TLS handshake timeout, seconds; the handshake runs in the connection's own thread, never
    # in the accept loop. A failed or timed-out handshake is audited (Security Alert).
    tls_handshake_timeout_s: float = Field(default=10.0, gt=0)
    # Most simultaneous connections from one host address (0: no limit); over it the
    # connection is closed at once and audited. Keeps one host from filling max_associations.
    max_connections_per_host: int = Field(default=8, ge=0)


class HttpSender(BaseModel):
    """A DICOMweb client allowed to store (STOW-RS): a bearer token or HTTP basic credentials,
    mapped to a sender name that the ledger records like a calling AE title."""

    name: str = Field(min_length=1, max_length=16)  # recorded as the calling AE title
    bearer_token: SecretStr | None = None  # "Authorization: Bearer <token>"
    username: str | None = None  # HTTP basic user
    password: SecretStr | None = None  # HTTP basic password

    @field_serializer("password", "bearer_token", when_used="json")
    def _reveal_for_files(self, value: SecretStr | None) -> str | None:
        """Kept when settings are written out as JSON/YAML (see DestinationSettings)."""
        return value.get_secret_value() if value is not None else None

    @model_validator(mode="after")
    def _check_credentials(self) -> HttpSender:
        """Exactly one way in: a bearer token, or a user name with its password."""
        basic = self.username is not None or self.password is not None
        if basic and (self.username is None or self.password is None):
            raise ValueError(f"http sender {self.name!r}: set username and password together")
        if basic == (self.bearer_token is not None):
            raise ValueError(f"http sender {self.name!r}: set either bearer_token or username and password")
        return self


class HttpSettings(BaseModel):
    """The HTTP service of ``ribnode serve``: DICOMweb STOW-RS, /healthz, /readyz, /metrics."""

    # HTTP port; the service is off when unset (`ribnode serve --http-port`)
    port: int | None = Field(default=None, ge=0, le=65535)
    bind_address: str = "127.0.0.1"  # address the HTTP port binds to
    # who may store over STOW-RS; a missing or unknown credential gets 401 and a Security Alert
    senders: list[HttpSender] = Field(default_factory=list)
    # accept STOW-RS without credentials (sender name ANONYMOUS): for the demo only
    open_mode: bool = False
    # largest STOW-RS request body, bytes; a larger one is answered 413
    max_request_bytes: int = Field(default=4 * 1024**3, ge=1)
    # largest single instance (multipart part), bytes; a larger one is answered 413
    max_instance_bytes: int = Field(default=1024**3, ge=1)
    # longest wait for the next piece of a request body, seconds; a slower client gets 408
    read_timeout_s: float = Field(default=30.0, gt=0)
    # longest wait from a connection (or the previous request's end) to the end of a request's
    # headers, seconds; a slower client (slowloris) gets 408, the connection is closed, audited
    header_timeout_s: float = Field(default=10.0, gt=0)
    # /readyz fails (503) when the spool's file system has less free space than this, bytes
    min_spool_free_bytes: int = Field(default=1024**3, ge=0)
    # HTTPS: off when tls_cert is unset (the same settings as listener.tls_*)
    tls_cert: Path | None = None
    tls_key: Path | None = None  # PEM private key of tls_cert
    tls_ca: Path | None = None  # PEM CA bundle used to verify client certificates
    tls_verify_client: bool = False  # require a client certificate signed by tls_ca


class ConsoleUser(BaseModel):
    """One person allowed into the QA console: an argon2 password hash (``ribnode console
    hash-password``) and/or the sha256 of a bearer token (``ribnode console new-token``)."""

    name: str = Field(min_length=1, max_length=64)  # login name, recorded in every audit event
    role: Literal["qa", "technical"] = "qa"  # "technical": patient identifiers masked
    password_hash: str | None = None  # argon2 hash ("$argon2id$..."); never the password itself
    token_sha256: str | None = Field(default=None, pattern=r"^[0-9a-f]{64}$")  # hex sha256 of the bearer token

    @model_validator(mode="after")
    def _check_credentials(self) -> ConsoleUser:
        """At least one way in, and a password hash that is argon2's (not a clear password)."""
        if self.password_hash is None and self.token_sha256 is None:
            raise ValueError(f"console user {self.name!r}: set password_hash or token_sha256")
        if self.password_hash is not None and not self.password_hash.startswith("$argon2"):
            raise ValueError(
                f"console user {self.name!r}: password_hash must be an argon2 hash "
                "(`ribnode console hash-password`), not the password"
            )
        return self


class SyslogSettings(BaseModel):
    """Forwarding of the ledger's audit events to a syslog collector (IHE ATNA: RFC 5424
    messages over TLS, RFC 5425 framing); off when ``host`` is unset."""

    host: str | None = None  # collector host name or address; forwarding is off when unset
    port: int = Field(default=6514, ge=1, le=65535)  # RFC 5425 port
    tls_ca: Path | None = None  # PEM CA bundle to verify the collector with (None: system CAs)
    tls_cert: Path | None = None  # client certificate (mutual TLS, as ATNA nodes use)
    tls_key: Path | None = None  # PEM private key of tls_cert
    app_name: str = Field(default="ribnode", max_length=48)  # RFC 5424 APP-NAME
    poll_s: float = Field(default=2.0, gt=0)  # how often new audit events are looked for, seconds
    timeout_s: float = Field(default=10.0, gt=0)  # connect and send timeout, seconds


class ConsoleSettings(BaseModel):
    """The read-only QA console (provenance and audit), served by the HTTP service under
    /console; off by default."""

    enabled: bool = False  # serve /console on the HTTP service (needs http.port)
    users: list[ConsoleUser] = Field(default_factory=list)  # who may log in
    session_s: float = Field(default=8 * 3600, gt=0)  # a login lasts this long, seconds
    # after this many failed logins for one user name (4 times as many from one address) within
    # login_window_s, further logins are refused (429) and audited as a Security Alert
    login_max_failures: int = Field(default=5, ge=1)
    login_window_s: float = Field(default=900.0, gt=0)  # window of login_max_failures, seconds
    # cookies with the Secure flag; leave on unless the console is reached over plain HTTP on loopback
    secure_cookies: bool = True
    page_size: int = Field(default=25, ge=1, le=500)  # rows per page of the job and audit lists
    # where the model cards are published ("{name}" is the model's card name, e.g. rib-suppression)
    model_card_url: str = "docs/models/{name}.md"
    syslog: SyslogSettings = Field(default_factory=SyslogSettings)


class SpoolSettings(BaseModel):
    """Where received instances are written before C-STORE success goes back."""

    directory: Path = Path("var/spool")
    # Study completion: quiet period with no new instance, and the longest wait.
    quiet_period_s: float = 5.0
    max_wait_s: float = 600.0
    # How often the completion thread looks for quiet studies and unsent jobs, seconds.
    completion_poll_s: float = 0.5
    # A re-sent instance already processed (same SOP Instance UID) is processed again (a
    # "rerun" job) instead of only counted as a duplicate; ``ribnode rerun STUDY_UID`` does
    # it on demand.
    rerun_on_resend: bool = False


class LedgerSettings(BaseModel):
    """The job ledger: SQLite file by default, PostgreSQL by URL."""

    url: str = "sqlite:///var/ribnode.sqlite"


class BrokerSettings(BaseModel):
    """The Celery broker. The default needs no server (kombu filesystem transport)."""

    url: str = "filesystem://"
    folder: Path = Path("var/broker")
    gpu_queue: str = "ribnode.gpu"
    cpu_queue: str = "ribnode.cpu"
    max_retries: int = 5
    retry_backoff_s: float = 2.0
    retry_backoff_max_s: float = 300.0
    # A job the broker refused stays "received"; enqueueing is retried this often, seconds.
    enqueue_retry_s: float = 3.0
    # Redis: an unacknowledged task (acks_late) is delivered again after this long, seconds;
    # must exceed the longest job.
    visibility_timeout_s: float = 3600.0
    # Lease of a running job, seconds: the worker running it renews it every third of this;
    # a job still "running" with an expired lease (its worker died) is sent again, and so is
    # a failed job whose retry no worker took within this long after it was due.
    job_lease_s: float = Field(default=60.0, gt=0)
    # A task running longer than this, seconds, is stopped (SoftTimeLimitExceeded: retried with
    # backoff, then "dead"); 30 s later a prefork pool child still stuck is killed (the job is
    # delivered again). Bounds how long a worker's warm shutdown (SIGTERM) can wait on a task.
    task_time_limit_s: float = Field(default=900.0, gt=0)
    # A job "queued" this long, seconds, with no worker holding it is published again (its
    # message was lost: Redis restarted without persistence, serve killed mid-publish). Longer
    # than a normal wait in the queue; a duplicate message is harmless.
    queued_timeout_s: float = Field(default=900.0, gt=0)
    # A worker pool process whose resident memory exceeds this after a task, MiB, is replaced
    # (Celery worker_max_memory_per_child; 0: never).
    worker_max_memory_per_child_mb: int = Field(default=8192, ge=0)
    # Hard address-space limit of each worker pool process, MiB (RLIMIT_AS; 0: none). A decoder
    # that asks for more gets MemoryError instead of the OOM killer. Leave 0 on GPU workers
    # (CUDA reserves large virtual ranges).
    worker_memory_limit_mb: int = Field(default=0, ge=0)


class RoutingSettings(BaseModel):
    """Routing rules: which received instances go to the rib pipeline.

    ``rules`` is a boolean expression tree (see ``ribnode.node.routing``). Empty means the
    default rule: CR or DX, body part CHEST or absent, single-frame grayscale.
    """

    rules: dict[str, Any] | None = None


class ModelSettings(BaseModel):
    """The two models and where they run."""

    device: Literal["auto", "cpu", "cuda"] = "auto"
    segmentation_weights: Path | None = None  # None: the shipped ONNX model
    suppression_weights: Path | None = None  # the model's json; None: the shipped model
    # Refiner sampling steps of the bone suppression (1-1000; each costs one refiner pass); unset:
    # the model's own default (its json).
    suppression_steps: int | None = Field(default=None, ge=1, le=1000)
    intra_op_threads: int = 0  # 0: let the runtime choose
    # Largest Rows x Columns read_radiograph accepts (checked before decoding pixel data).
    max_pixels: int = Field(default=8192 * 8192, ge=64 * 64)


class OutputSettings(BaseModel):
    """The DICOM objects written back (dicom_sr)."""

    content_qualification: Literal["RESEARCH", "PRODUCT", "SERVICE"] = "RESEARCH"
    # Burned-in "AI SYNTHETIC" corner mark on the SC (Burned In Annotation says YES when on).
    burned_in_label: bool = True
    # Window of the SC: "source" copies the source's VOI (Window Center/Width, VOI LUT) so that
    # side by side the only difference is the suppression; "own": 0.5-99.5 percentile of the SC.
    sc_window: Literal["source", "own"] = "source"
    institution_name: str | None = None
    node_id: str = "ribnode-1"
    # Private block "RIBNODE 1" (group 0071): AI-generated flag + provenance JSON.
    private_block: bool = True


class DestinationSettings(BaseModel):
    """One export destination."""

    name: str  # unique; deliveries are tracked per destination name
    kind: Literal["folder", "stow", "cstore"]  # local folder, DICOMweb STOW-RS, or DIMSE C-STORE
    path: Path | None = None  # folder: root of <StudyUID>/<SeriesUID>/<SOPUID>.dcm
    url: str | None = None  # stow: DICOMweb base URL (STOW-RS posts to <url>/studies)
    username: str | None = None  # stow: HTTP basic auth user
    password: SecretStr | None = None  # stow: HTTP basic auth password (masked in logs)
    bearer_token: SecretStr | None = None  # stow: OAuth bearer token, instead of basic auth
    tls_verify: bool = True  # stow: verify the server's HTTPS certificate (keep on)
    ae_title: str | None = None  # cstore: called AE title of the PACS
    host: str | None = None  # cstore: PACS host name or address
    port: int | None = None  # cstore: PACS DICOM port
    tls_ca: Path | None = None  # cstore: DICOM TLS on when set; stow: CA bundle to verify with
    calling_ae_title: str | None = None  # cstore: our AE title; None -> listener.ae_title
    tls_cert: Path | None = None  # client certificate (mutual TLS), stow and cstore
    tls_key: Path | None = None  # PEM private key of tls_cert
    timeout_s: float = 30.0  # connect/response timeout of one send, seconds

    @field_serializer("password", "bearer_token", when_used="json")
    def _reveal_for_files(self, value: SecretStr | None) -> str | None:
        """Masked in repr and logs, but kept when settings are written out as JSON/YAML (the
        demo and the tests hand settings to subprocesses that way)."""
        return value.get_secret_value() if value is not None else None

    @model_validator(mode="after")
    def _check_kind_fields(self) -> DestinationSettings:
        """Each kind names its address: folder a path, stow a URL, cstore AE, host and port."""
        required = {"folder": ("path",), "stow": ("url",), "cstore": ("ae_title", "host", "port")}
        missing = [f for f in required[self.kind] if getattr(self, f) is None]
        if missing:
            raise ValueError(f"export destination {self.name!r} of kind {self.kind!r} needs {', '.join(missing)}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError(f"export destination {self.name!r}: set tls_cert and tls_key together")
        if self.bearer_token is not None and self.username is not None:
            raise ValueError(f"export destination {self.name!r}: use either basic auth or a bearer token")
        return self


class ExportSettings(BaseModel):
    """Delivery of the results to one or more destinations, with retries."""

    # Where results go (several allowed, each tracked and retried on its own); default: a folder
    destinations: list[DestinationSettings] = Field(
        default_factory=lambda: [DestinationSettings(name="local", kind="folder", path=Path("var/outbox"))]
    )
    # attempts per destination before the delivery (and job) is dead; with the default backoff
    # they span at least 25 h (a PACS down over a night and a day is waited for unattended)
    max_attempts: int = 110
    backoff_s: float = 2.0  # first retry delay; doubles per attempt, jitter U(delay/2, delay)
    backoff_max_s: float = 1800.0  # cap of the retry delay
    # Workers re-enqueue exports whose next attempt is overdue (task lost with a killed worker
    # or the broker) this often, seconds, and once at start; 0 turns the sweep off
    sweep_interval_s: float = 30.0
    # Where the worker keeps the objects it made until every destination has them
    # (``<staging_dir>/<StudyUID>/<SeriesUID>/<SOPUID>.dcm``); shared like the spool.
    staging_dir: Path = Path("var/outputs")

    @model_validator(mode="after")
    def _check_unique_names(self) -> ExportSettings:
        """Deliveries are tracked per destination name, so names must be unique."""
        names = [d.name for d in self.destinations]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"export destination names must be unique; repeated: {duplicates}")
        if self.max_attempts < 1:
            raise ValueError(f"export.max_attempts must be at least 1, not {self.max_attempts}")
        return self


class Settings(BaseSettings):
    """All of ribnode's settings."""

    model_config = SettingsConfigDict(
        env_prefix="RIBNODE_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    log_level: str = "INFO"
    var_dir: Path = Path("var")
    listener: ListenerSettings = Field(default_factory=ListenerSettings)
    http: HttpSettings = Field(default_factory=HttpSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    spool: SpoolSettings = Field(default_factory=SpoolSettings)
    ledger: LedgerSettings = Field(default_factory=LedgerSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    routing: RoutingSettings = Field(default_factory=RoutingSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    outputs: OutputSettings = Field(default_factory=OutputSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        yaml_path = os.environ.get(CONFIG_ENV)
        if yaml_path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)


def _set_dotted(target: dict[str, Any], dotted: str, value: Any) -> None:
    node = target
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def load_settings(config_file: Path | str | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings: defaults < YAML file < environment < ``overrides``.

    ``overrides`` maps dotted names (``"listener.port"``) to values, typically from CLI flags;
    ``None`` values are ignored so an unset flag never hides the environment.
    """
    if config_file is not None:
        path = Path(config_file)
        if not path.is_file():
            raise ValueError(f"config file {path} does not exist")
        yaml.safe_load(path.read_text())  # fail early on malformed YAML
        os.environ[CONFIG_ENV] = str(path)
    base = Settings()
    if not overrides:
        return base
    merged = base.model_dump()
    for dotted, value in overrides.items():
        if value is not None:
            _set_dotted(merged, dotted, value)
    return Settings.model_validate(merged)
