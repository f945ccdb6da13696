"""Settings, read once per process from the environment (prefix ``DUB_``) or ``.env``.

Nothing here is evaluated at import time: call :func:`get_settings` where a process
starts (API factory, worker main) and pass the object on.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from dubcore.contracts import STAGES, Stage

QueueMode = Literal["single", "cpu_gpu", "per_stage"]

#: Stages that want an accelerator in production (placed on the GPU queue in cpu_gpu mode).
GPU_STAGES = frozenset({Stage.SEPARATE, Stage.DIARIZE, Stage.TRANSCRIBE, Stage.SYNTHESIZE,
                        Stage.LIPSYNC})


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DUB_", env_file=".env", extra="ignore")

    data_dir: Path = Path("data")
    database_url: str | None = None
    """SQLAlchemy URL; default: SQLite at ``<data_dir>/opendub.db``. Production: PostgreSQL."""

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

    # Storage
    storage_backend: Literal["local", "s3"] = "local"
    storage_root: Path | None = None
    """Local backend root; defaults to ``<data_dir>/objects``."""
    s3_bucket: str = "opendub"
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_public_endpoint_url: str | None = None
    """Endpoint clients reach for presigned URLs, when it differs from the workers' one."""
    signing_secret: str = "change-me-in-production"
    """HMAC key for local-storage URLs."""
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
    tts_engine: Literal["auto", "kokoro", "piper", "espeak"] = "auto"
    lipsync_engine: Literal["none"] = "none"
    loudness_target_lufs: float = -16.0

    # Accounts, limits and the public API
    admin_token: str | None = None
    """Credential for the operator routes (``/admin``); they answer 403 while unset."""
    rate_limit_per_minute: int = 600
    """Requests per API key per minute (a tenant's own setting overrides it)."""
    rate_limit_burst: int = 60
    idempotency_ttl_s: int = 24 * 3600
    allow_private_source_urls: bool = False
    """Let ``source_url`` reach loopback, private and link-local addresses (tests, LANs)."""
    source_url_timeout_s: float = 600.0
    source_url_max_bytes: int = 4 * 1024**3
    webhook_timeout_s: float = 10.0
    webhook_max_attempts: int = 8
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
