"""SRT / WebVTT / JSON in and out."""

from __future__ import annotations

import pytest

from dubcore.errors import InvalidScriptError
from dubcore.subtitles import parse, parse_glossary, to_srt, to_vtt
from engines.translate import mask_terms, unmask_terms

SEGMENTS = [{"start_ms": 430, "end_ms": 1950, "text": "Welcome back.", "speaker_id": "S1"},
            {"start_ms": 3_601_000, "end_ms": 3_602_500, "text": "An hour in.",
             "speaker_id": "S2"}]


def test_round_trips() -> None:
    srt = to_srt(SEGMENTS)
    assert srt.startswith("1\n00:00:00,430 --> 00:00:01,950\nWelcome back.\n")
    assert [(s["start_ms"], s["end_ms"], s["text"]) for s in parse(srt)] == [
        (s["start_ms"], s["end_ms"], s["text"]) for s in SEGMENTS]
    vtt = to_vtt(SEGMENTS)
    assert vtt.startswith("WEBVTT\n\n00:00:00.430 --> 00:00:01.950\n<v S1>Welcome back.")
    assert parse(vtt) == SEGMENTS  # speakers survive as <v> voice tags
    assert parse('{"segments": ' + str(SEGMENTS).replace("'", '"') + "}") == SEGMENTS


def test_short_vtt_times_and_styling_are_read() -> None:
    got = parse("WEBVTT\n\nNOTE x\n\n01:02.5 --> 01:04.000 align:start\n<b>Hi</b> there\n")
    assert got == [{"start_ms": 62_500, "end_ms": 64_000, "text": "Hi there",
                    "speaker_id": "SPEAKER_00"}]


@pytest.mark.parametrize("bad", ["just some text", "[]", "{not json", "1\nxx --> yy\nhi\n"])
def test_what_is_not_a_transcript_is_refused(bad: str) -> None:
    with pytest.raises(InvalidScriptError):
        parse(bad)


def test_glossary_terms_are_masked_whole_words_longest_first() -> None:
    terms = parse_glossary("source\ttarget\n# comment\n\nsaw\tserrote\n"
                           "table saw\tserra de bancada\n")
    masked, tokens = mask_terms(["Use the Table Saw, not the saw.", "sawdust"], terms)
    assert masked[1] == "sawdust" and "Table" not in masked[0]
    assert unmask_terms(masked, tokens) == ["Use the serra de bancada, not the serrote.",
                                            "sawdust"]
    with pytest.raises(InvalidScriptError, match="line 2"):
        parse_glossary("a\tb\nno tab here\n")
