"""Settings, read once per process from the environment (prefix ``DUB_``) or ``.env``.

Nothing here is evaluated at import time: call :func:`get_settings` where a process
starts (API factory, worker main) and pass the object on.
"""

from __future__ import annotations

import ipaddress
import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from dubcore.contracts import STAGES, Stage
from dubcore.errors import ConfigurationError

QueueMode = Literal["single", "cpu_gpu", "per_stage"]

#: Stages that want an accelerator in production (placed on the GPU queue in cpu_gpu mode).
GPU_STAGES = frozenset({Stage.SEPARATE, Stage.DIARIZE, Stage.TRANSCRIBE, Stage.SYNTHESIZE,
                        Stage.LIPSYNC})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DUB_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str | None = None
    """SQLAlchemy URL; default: SQLite at ``<data_dir>/opendub.db``. Production: PostgreSQL."""
    db_pool_size: int = 10
    db_max_overflow: int = 40
    """Connections per process: kept open, and opened beyond that under a burst."""

    # Temporal
    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"
    temporal_ui_url: str = "http://127.0.0.1:8233"
    queue_mode: QueueMode = "single"
    queue_prefix: str = "dubbing"
    task_queue_overrides: dict[str, str] = Field(default_factory=dict)
    """Stage name -> task queue, applied after ``queue_mode`` (e.g. {"lipsync": "wav2lip"})."""

    # Worker
    worker_stages: list[Stage] = Field(default_factory=lambda: list(STAGES))
    """Stages this worker process serves; ``[]`` = workflows only."""
    worker_runs_workflows: bool = True
    max_concurrent_activities: int = 2
    worker_cores: int = 0
    """Cores this worker may use (0: the cores the process may run on). Stages that split
    their work (lines of synthesis) run that many pieces at once, one core each."""
    worker_shutdown_grace_s: float = 30.0
    """On SIGTERM, how long running stages may take to finish before they are cancelled
    (and retried elsewhere, resuming from what they stored)."""

    # Observability (README.md, "Operating: metrics and tracing")
    metrics_token: SecretStr | None = None
    """When set, the API's ``/metrics`` asks for ``Authorization: Bearer <token>``; unset, it
    is open on the API port like most exporters (keep that port off the internet)."""
    worker_metrics_bind: str | None = None
    """``host:port`` where a worker serves Prometheus metrics (Temporal SDK metrics and
    per-stage figures) at ``/metrics``; unset = none. The embedded stack uses
    ``127.0.0.1:9464``."""
    otel_endpoint: str | None = Field(
        default=None, validation_alias=AliasChoices("DUB_OTEL_ENDPOINT", "otel_endpoint",
                                                    "OTEL_EXPORTER_OTLP_ENDPOINT"))
    """OTLP/gRPC collector (e.g. ``http://collector:4317``) for OpenTelemetry traces; also
    read from the standard ``OTEL_EXPORTER_OTLP_ENDPOINT``. Unset = no tracing at all."""

    # Storage
    storage_backend: Literal["local", "s3"] = "local"
    storage_root: Path | None = None
    """Local backend root; defaults to ``<data_dir>/objects``."""
    s3_bucket: str = "opendub"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_public_endpoint_url: str | None = None
    """Endpoint clients reach for presigned URLs, when it differs from the workers' one."""
    signing_secret: SecretStr | None = None
    """HMAC key for local-storage URLs (``DUB_SIGNING_SECRET``): required with the local
    backend, at least 32 random characters; no default (the embedded stack makes one)."""
    public_base_url: str = "http://127.0.0.1:8000"
    url_expiry_s: int = 3600
    max_upload_bytes: int = 4 * 1024**3
    max_duration_s: int = 4 * 3600

    # Engines (one setting per capability; see engines/)
    device: str = "cpu"
    model_cache_dir: Path | None = None
    """Where assembled offline models are kept; defaults to ``<data_dir>/models``."""
    diarize_threshold: float = 0.35
    """Cosine-distance cut between speakers when their number is not given."""
    whisper_model_path: Path | None = None
    """A CTranslate2 Whisper model dir; default: base, assembled from its PyPI packages."""
    whisper_compute_type: str = "int8"
    # One engine per stage, by its name in the registry (dubcore/registry.py;
    # `python -m worker --engines` lists them). Synthesis takes a comma-separated list
    # (a router: each voice key goes to its engine); "auto" is the CPU voices.
    separate_engine: str = "deepfilternet3"
    diarize_engine: str = "vad-resemblyzer"
    transcribe_engine: str = "faster-whisper"
    translate_engine: str = "bergamot"
    synthesize_engine: str = Field(
        "auto", validation_alias=AliasChoices("DUB_SYNTHESIZE_ENGINE", "DUB_TTS_ENGINE",
                                              "synthesize_engine", "tts_engine"))
    lipsync_engine: str = "none"
    model_revisions: dict[str, str] = Field(default_factory=dict)
    """Engine name -> the hub revision (commit) its weights were prefetched at; recorded
    with every result the engine makes (see deploy/prefetch_models.py)."""

    @field_validator("separate_engine", "diarize_engine", "transcribe_engine",
                     "translate_engine", "synthesize_engine", "lipsync_engine")
    @classmethod
    def _engine_registered(cls, value: str, info: ValidationInfo) -> str:
        from dubcore import registry

        stage = Stage(str(info.field_name).removesuffix("_engine"))
        return registry.check_choice(stage, value)

    def cores(self) -> int:
        """``worker_cores``, or the cores this process may run on."""
        if self.worker_cores > 0:
            return self.worker_cores
        try:
            return max(1, len(os.sched_getaffinity(0)))
        except AttributeError:  # not on Linux
            return max(1, os.cpu_count() or 1)

    def engine_setting(self, stage: Stage) -> str:
        value = getattr(self, f"{stage.value}_engine", None)
        if value is None:
            raise ConfigurationError(f"the {stage.value} stage has no engine setting")
        return str(value)
    loudness_target_lufs: float = -16.0

    # Accounts, limits and the public API
    admin_token: SecretStr | None = None
    """Credential for the operator routes (``/admin``); they answer 403 while unset."""
    rate_limit_per_minute: int = 600
    """Requests per API key per minute (a tenant's own setting overrides it)."""
    rate_limit_burst: int = 60
    auth_failures_per_minute: int = 10
    """Failed authentications (API key, admin token, file signature) per client address and
    per key id per minute; past it the API answers 429 until the minute has passed."""
    max_request_body_bytes: int = 1024**2
    """Largest request body read before authentication (file uploads have their own limit)."""
    idempotency_ttl_s: int = 24 * 3600
    outbound_allowed_networks: list[str] = Field(default_factory=list)
    """CIDRs outbound requests (``source_url``, webhooks) may reach although they are not
    public addresses (e.g. ``["10.0.0.0/8"]`` for a LAN); see ``dubcore/outbound.py``."""

    @field_validator("outbound_allowed_networks")
    @classmethod
    def _networks_parse(cls, networks: list[str]) -> list[str]:
        for network in networks:
            ipaddress.ip_network(network, strict=False)  # ValueError names the bad entry
        return networks

    source_url_timeout_s: float = 600.0
    source_url_max_bytes: int = 4 * 1024**3
    webhook_timeout_s: float = 5.0
    """Connect and read timeout of one webhook delivery attempt."""
    webhook_max_attempts: int = 8
    webhook_max_concurrent: int = 4
    """Deliveries a worker runs at once, on their own queue and threads (never a stage's)."""
    review_window_s: int = 7 * 24 * 3600
    """How long a finished job accepts script edits (re-translation) before it closes."""

    # Embedded stack
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    demo_tenant_minutes: int = 600
    """Credit minutes the embedded stack grants its demo tenant when it creates it."""

    @property
    def objects_dir(self) -> Path:
        return self.storage_root or self.data_dir / "objects"

    @property
    def models_dir(self) -> Path:
        return self.model_cache_dir or self.data_dir / "models"

    def task_queue(self, stage: Stage) -> str:
        if self.queue_mode == "single":
            queue = f"{self.queue_prefix}-activities"
        elif self.queue_mode == "cpu_gpu":
            queue = f"{self.queue_prefix}-{'gpu' if stage in GPU_STAGES else 'cpu'}"
        else:
            queue = f"{self.queue_prefix}-{stage.value}"
        return self.task_queue_overrides.get(stage.value, queue)

    def task_queues(self) -> dict[str, str]:
        return {stage.value: self.task_queue(stage) for stage in STAGES}


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


# ---- secrets ------------------------------------------------------------------------------

#: Shortest secret accepted, in characters (``secrets.token_urlsafe(32)`` gives 43).
MIN_SECRET_CHARS = 32
#: How an operator makes one.
SECRET_COMMAND = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
#: Words of the placeholders that docs and examples carry; a value with one is not secret.
_PLACEHOLDER = re.compile(r"change.?(me|this|it)|replace.?(me|this)|placeholder|example|"
                          r"your.?(secret|token|key)|insecure|not.?secret|dummy", re.IGNORECASE)
_MIN_DISTINCT_CHARS = 8


def checked_secret(variable: str, value: SecretStr | None) -> str | None:
    """The secret's value (``None`` when unset), or `ConfigurationError` when it is too
    short, a known placeholder or a repeated pattern, so that it could be guessed."""
    if value is None:
        return None
    raw = value.get_secret_value()
    if len(raw) < MIN_SECRET_CHARS:
        raise ConfigurationError(
            f"{variable} is too short ({len(raw)} characters, at least {MIN_SECRET_CHARS}); "
            f"generate one with: {SECRET_COMMAND}")
    if _PLACEHOLDER.search(raw) or len(set(raw)) < _MIN_DISTINCT_CHARS:
        raise ConfigurationError(
            f"{variable} looks like a placeholder, not a random secret; generate one with: "
            f"{SECRET_COMMAND}")
    return raw


def require_secret(variable: str, value: SecretStr | None, why: str) -> str:
    """`checked_secret`, and `ConfigurationError` naming ``variable`` when it is unset."""
    raw = checked_secret(variable, value)
    if raw is None:
        raise ConfigurationError(
            f"{variable} is not set; {why}. Generate one with: {SECRET_COMMAND} (the "
            "embedded stack, python -m stack, makes and keeps its own)")
    return raw
