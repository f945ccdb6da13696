"""Review edits: diffing, the checks an edit goes through, and the revise validator's rules."""

from __future__ import annotations

import pytest

from dubcore import registry
from dubcore.contracts import (
    JobProgress,
    JobState,
    MixingMode,
    RevisionRequest,
    Version,
    check_revision,
)
from dubcore.errors import ConflictError, InvalidScriptError, NoChangeError, NotFoundError
from dubcore.review import apply_edits, edit_key, voice_changes
from dubcore.settings import Settings

SCRIPT = [{"index": 0, "start_ms": 0, "end_ms": 1000, "text": "Olá.", "speaker_id": "S1",
           "source_text": "Hi."},
          {"index": 1, "start_ms": 1200, "end_ms": 2500, "text": "Tudo bem?",
           "speaker_id": "S2", "source_text": "All good?"}]


def test_apply_edits_returns_the_whole_script_and_what_changed() -> None:
    script, changed = apply_edits(SCRIPT, [{"index": 1, "text": " Tudo certo? "},
                                           {"index": 0, "text": "Olá."}], {"S1", "S2"}, 3000)
    assert changed == [1]
    assert [s["text"] for s in script] == ["Olá.", "Tudo certo?"]
    assert script[1]["source_text"] == "All good?"  # untouched fields are kept
    assert SCRIPT[1]["text"] == "Tudo bem?"  # the input is not modified
    assert edit_key("j", "pt", script) == edit_key("j", "pt", [dict(s) for s in script])


@pytest.mark.parametrize(("edit", "message"), [
    ({"index": 7, "text": "x"}, "does not exist"),
    ({"index": 0, "text": "   "}, "empty"),
    ({"index": 0, "speaker_id": "S9"}, "not one of this job's"),
    ({"index": 0, "start_ms": 900, "end_ms": 800}, "not a time span"),
    ({"index": 1, "end_ms": 9000}, "not a time span"),
])
def test_bad_edits_are_refused(edit: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidScriptError, match=message):
        apply_edits(SCRIPT, [edit], {"S1", "S2"}, 3000)


def test_voice_changes_are_checked_against_the_catalog() -> None:
    speakers = [{"speaker_id": "S1", "voice_key": "espeak:pt-br+m3", "style": ""}]
    espeak = registry.catalog(Settings(synthesize_engine="espeak")).voice_keys("pt-BR")
    auto = registry.catalog(Settings()).voice_keys("pt-BR")
    assert voice_changes(speakers, {"S1": "espeak:pt-br+m3"}, "pt-BR", espeak) == {}
    assert voice_changes(speakers, {"S1": "clone"}, "pt-BR", espeak) == {"S1": "clone"}
    with pytest.raises(InvalidScriptError, match="does not speak"):
        voice_changes(speakers, {"S1": "piper:en_US-joe-medium"}, "pt-BR", auto)
    with pytest.raises(InvalidScriptError, match="does not speak"):
        voice_changes(speakers, {"S1": "kokoro:jm_kumo"}, "pt-BR", espeak)
    with pytest.raises(InvalidScriptError, match="not one of"):
        voice_changes(speakers, {"S7": "clone"}, "pt-BR", auto)


def _progress(*states: JobState, review_open: bool = True) -> JobProgress:
    versions = [Version(version=i + 1, state=s, created_at="", script_key="k",
                        mixing_mode=MixingMode.VOICEOVER_ONLY) for i, s in enumerate(states)]
    return JobProgress(job_id="j", target_languages=["pt-BR", "es"],
                       versions={"pt-BR": versions} if versions else {},
                       review_open=review_open)


def test_check_revision_rules() -> None:
    ok = RevisionRequest("pt-BR", 2, "edits/x.json", [0])
    assert check_revision(_progress(JobState.COMPLETED, JobState.COMPLETED), ok).version == 2
    # A failed revision does not move the base: the next edit is based on version 2 still.
    assert check_revision(_progress(JobState.COMPLETED, JobState.COMPLETED, JobState.FAILED),
                          ok).version == 2
    cases: list[tuple[JobProgress, RevisionRequest, type[Exception], str]] = [
        (_progress(JobState.COMPLETED), ok, ConflictError, "latest version"),
        (_progress(JobState.COMPLETED, JobState.RUNNING), ok, ConflictError, "still being"),
        (_progress(JobState.COMPLETED, JobState.COMPLETED, review_open=False), ok,
         ConflictError, "not open for review"),
        (_progress(), ok, ConflictError, "no finished dub"),
        (_progress(JobState.COMPLETED), RevisionRequest("fr", 1, "k", [0]), NotFoundError,
         "no target language"),
        (_progress(JobState.COMPLETED), RevisionRequest("pt-BR", 1), NoChangeError,
         "changes nothing"),
        (_progress(JobState.COMPLETED),
         RevisionRequest("pt-BR", 1, mixing_mode=MixingMode.VOICEOVER_ONLY), NoChangeError,
         "changes nothing"),
    ]
    for progress, req, error, message in cases:
        with pytest.raises(error, match=message):
            check_revision(progress, req)
