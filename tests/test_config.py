"""Settings and the embedded dev server's configuration agree with the contracts."""

from __future__ import annotations

from dubcore.contracts import SEARCH_ATTRIBUTES, STAGES, Stage
from dubcore.settings import Settings
from stack.devserver import DevServerConfig, command


def test_dev_server_registers_every_search_attribute_the_workflow_upserts() -> None:
    cfg = DevServerConfig.load()
    assert cfg.search_attributes == SEARCH_ATTRIBUTES
    args = command(cfg, None)
    for name, kind in SEARCH_ATTRIBUTES.items():
        assert f"{name}={kind}" in args


def test_task_queue_routing_is_configuration() -> None:
    assert set(Settings(queue_mode="single").task_queues().values()) == {"dubbing-activities"}
    split = Settings(queue_mode="cpu_gpu").task_queues()
    assert split["transcribe"] == "dubbing-gpu" and split["mix"] == "dubbing-cpu"
    per = Settings(queue_mode="per_stage", task_queue_overrides={"lipsync": "wav2lip-h100"})
    assert per.task_queue(Stage.TRANSLATE) == "dubbing-translate"
    assert per.task_queue(Stage.LIPSYNC) == "wav2lip-h100"
    assert len(per.task_queues()) == len(STAGES)


def test_settings_come_from_the_environment(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DUB_QUEUE_MODE", "per_stage")
    monkeypatch.setenv("DUB_WORKER_STAGES", '["transcribe"]')
    s = Settings()
    assert s.queue_mode == "per_stage" and s.worker_stages == [Stage.TRANSCRIBE]
