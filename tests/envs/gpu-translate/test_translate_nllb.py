"""NllbTranslator on a tiny random NLLB model (conftest.py): plumbing, bounds, glossary."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import ctranslate2
import pytest
import sentencepiece as spm

from dubcore.errors import ConfigurationError, UnsupportedLanguageError
from dubcore.nllb import NLLB_LANGUAGES, PRIMARY_LANGUAGES, nllb_code
from engines.translate import Translator, split_sentences
from engines.translate_nllb import (
    PREFETCH_COMMAND,
    SPM_FILE,
    NllbTranslator,
    _restore,
    load,
    max_output_tokens,
)

SEGMENTS = [
    "The cat said hello. The dog listened!",
    "",
    "OpenDub opens the window quickly.",
    "Night.",
    "   ",
    "We always speak before the train. They never asked. You said it slowly?",
    "Music.",
    "The doctor opened the market under the light of the street.",
]


@pytest.fixture(scope="module")
def translator(tiny_nllb_dir: Path) -> NllbTranslator:
    return NllbTranslator(tiny_nllb_dir, max_batch_size=3, beam_size=2, intra_threads=1)


@pytest.fixture(scope="module")
def sp(tiny_nllb_dir: Path) -> spm.SentencePieceProcessor:
    return spm.SentencePieceProcessor(model_file=str(tiny_nllb_dir / SPM_FILE))


# ---- language table ---------------------------------------------------------------------

def test_table_is_the_checkpoints_language_list() -> None:
    from transformers.models.nllb.tokenization_nllb import FAIRSEQ_LANGUAGE_CODES

    assert len(NLLB_LANGUAGES) == 202
    assert sorted(NLLB_LANGUAGES) == sorted(FAIRSEQ_LANGUAGE_CODES)
    tags = list(NLLB_LANGUAGES.values())
    assert len(set(tags)) == len(tags)  # one code per tag: the map inverts
    assert all(re.fullmatch(r"[a-z]{2,3}(-[A-Z][a-z]{3})?", t) for t in tags)
    assert all(nllb_code(tag) == code for code, tag in NLLB_LANGUAGES.items())
    assert sorted(NllbTranslator.languages) == sorted(tags)


@pytest.mark.parametrize(("tag", "code"), [
    ("pt-BR", "por_Latn"), ("pt-PT", "por_Latn"), ("pt", "por_Latn"), ("en-US", "eng_Latn"),
    ("es-419", "spa_Latn"), ("zh", "zho_Hans"), ("zh-CN", "zho_Hans"), ("zh-TW", "zho_Hant"),
    ("zh-HK", "zho_Hant"), ("zh-Hant", "zho_Hant"), ("zh-Hans-TW", "zho_Hans"),
    ("yue-HK", "yue_Hant"), ("sr", "srp_Cyrl"), ("sr-Cyrl-RS", "srp_Cyrl"),
    ("sr-Latn", None), ("no", "nob_Latn"), ("nn", "nno_Latn"), ("fil", "tgl_Latn"),
    ("ar", "arb_Arab"), ("ar-EG", "arb_Arab"), ("fa", "pes_Arab"), ("ms", "zsm_Latn"),
    ("ks-Deva", "kas_Deva"), ("ks", "kas_Arab"), ("ace", "ace_Latn"), ("az-Arab", "azb_Arab"),
    ("EN", "eng_Latn"), ("pt_BR", "por_Latn"), ("por_Latn", "por_Latn"),
    ("xx", None), ("und", None), ("", None), ("english", None), ("en-Cyrl", None),
])
def test_bcp47_to_nllb(tag: str, code: str | None) -> None:
    assert nllb_code(tag) == code


def test_supports(translator: NllbTranslator) -> None:
    assert translator.supports("en", "pt-BR")
    assert translator.supports("zh-TW", "sr")
    assert not translator.supports("en", "sr-Latn")
    assert not translator.supports("xx", "en")
    assert not translator.supports("auto", "en")


def test_declares(translator: NllbTranslator) -> None:
    engine: Translator = translator  # the Protocol holds
    assert engine.name == "nllb"
    assert translator.model_id == "facebook/nllb-200-distilled-600M"
    assert translator.model_revision is None
    assert translator.device == "cpu"
    assert len(translator.languages) == 202
    assert {"en", "pt", "zh-Hans", "zh-Hant", "sr"} <= set(translator.languages)


def test_registry_loader_reads_the_settings(tiny_nllb_dir: Path, tmp_path: Path) -> None:
    from dubcore.settings import Settings

    (tmp_path / "nllb").symlink_to(tiny_nllb_dir)
    engine = load(Settings(model_cache_dir=tmp_path, device="cpu",
                           model_revisions={"nllb": "f8d333a"}))
    assert (engine.device, engine.model_revision) == ("cpu", "f8d333a")
    assert engine.supports("en", "pt-BR")
    assert len(PRIMARY_LANGUAGES) == 196  # 202 codes, six languages in two scripts
    assert {"zh", "sr", "pt", "ks", "ace", "yue"} <= PRIMARY_LANGUAGES


def test_unsupported_language_raises(translator: NllbTranslator) -> None:
    with pytest.raises(UnsupportedLanguageError, match="sr-Latn"):
        translator.translate(["hello"], "en", "sr-Latn")


# ---- configuration ----------------------------------------------------------------------

@pytest.mark.parametrize("missing", ["model.bin", SPM_FILE])
def test_missing_file_names_it(tiny_nllb_dir: Path, tmp_path: Path, missing: str) -> None:
    broken = tmp_path / "model"
    shutil.copytree(tiny_nllb_dir, broken)
    (broken / missing).unlink()
    with pytest.raises(ConfigurationError) as e:
        NllbTranslator(broken)
    assert missing in e.value.message
    assert PREFETCH_COMMAND in e.value.message
    other = "model.bin" if missing == SPM_FILE else SPM_FILE
    assert other not in e.value.message


def test_corrupt_model_is_a_configuration_error(tiny_nllb_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "model"
    shutil.copytree(tiny_nllb_dir, broken)
    (broken / "model.bin").write_bytes(b"not a model")
    with pytest.raises(ConfigurationError, match="cannot load the NLLB model"):
        NllbTranslator(broken)


def test_missing_package_names_the_extra(tiny_nllb_dir: Path,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import fails as if absent
    with pytest.raises(ConfigurationError, match="gpu-translate extra"):
        NllbTranslator(tiny_nllb_dir)


@pytest.mark.skipif(ctranslate2.get_cuda_device_count() > 0, reason="a CUDA device is here")
def test_cuda_without_a_gpu(tiny_nllb_dir: Path) -> None:
    with pytest.raises(ConfigurationError, match="no CUDA device"):
        NllbTranslator(tiny_nllb_dir, device="cuda")


@pytest.mark.skipif(ctranslate2.get_cuda_device_count() == 0, reason="no CUDA device")
def test_cuda_translates_like_cpu(tiny_nllb_dir: Path, translator: NllbTranslator) -> None:
    gpu = NllbTranslator(tiny_nllb_dir, device="cuda", compute_type="float32",
                         max_batch_size=3, beam_size=2)
    assert gpu.device == "cuda"
    out = gpu.translate(SEGMENTS, "en", "pt-BR")
    assert len(out) == len(SEGMENTS)
    assert [o == "" for o in out] == [not s.strip() for s in SEGMENTS]


# ---- translation ------------------------------------------------------------------------

def test_batches_keep_order_and_empty_segments(translator: NllbTranslator) -> None:
    n_sentences = sum(len(split_sentences(s)) for s in SEGMENTS)
    assert n_sentences > 2 * translator.max_batch_size  # several batches
    seen: list[float] = []
    out = translator.translate(SEGMENTS, "en", "pt-BR", seen.append)
    assert len(out) == len(SEGMENTS)
    assert [o == "" for o in out] == [not s.strip() for s in SEGMENTS]
    spoken = [o for o in out if o]
    assert len(set(spoken)) == len(spoken)  # distinct, so a change of order would show
    # Batched (sorted by length, 3 at a time) gives what each segment gives alone.
    alone = [translator.translate([s], "en", "pt-BR")[0] for s in SEGMENTS]
    assert out == alone
    assert seen == sorted(seen) and seen[-1] == 1.0
    assert len(seen) >= -(-n_sentences // translator.max_batch_size)


def test_outputs_are_bounded_by_input_length(translator: NllbTranslator, tiny_nllb_dir: Path,
                                             sp: spm.SentencePieceProcessor) -> None:
    sentences = ["Night.", "The cat said hello to the dog before the night train.",
                 " ".join(["music"] * 120)]
    out = translator.translate(sentences, "en", "fr")
    for sentence, text in zip(sentences, out, strict=True):
        n_in, n_out = len(sp.encode(sentence)), len(sp.encode(text))
        assert max_output_tokens(n_in) // 2 < n_out <= max_output_tokens(n_in), (sentence, text)
    # Unbounded, the random model babbles to CTranslate2's limit: the bound is what ends it.
    raw = ctranslate2.Translator(str(tiny_nllb_dir)).translate_batch(
        [["eng_Latn", *sp.encode(sentences[0], out_type=str), "</s>"]],
        target_prefix=[["fra_Latn"]], beam_size=2, max_decoding_length=256)
    assert len(raw[0].hypotheses[0]) == 256
    assert max_output_tokens(len(sp.encode(sentences[0]))) == 26


def test_no_language_codes_or_specials_in_output(translator: NllbTranslator) -> None:
    out = " ".join(translator.translate(SEGMENTS, "en", "de"))
    assert not any(code in out for code in NLLB_LANGUAGES)
    assert "</s>" not in out and "<unk>" not in out and "\u2047" not in out


def test_glossary_terms_are_in_their_segments(translator: NllbTranslator) -> None:
    terms = [("OpenDub", "OpenDublagem"), ("window", "janela"), ("cat", "gato"),
             ("train", "comboio"), ("the light", "a luz")]
    out = translator.translate(SEGMENTS, "en", "pt-BR", terms=terms)
    for segment, text in zip(SEGMENTS, out, strict=True):
        for source, target in terms:
            occurs = re.search(rf"(?<!\w){re.escape(source)}(?!\w)", segment, re.IGNORECASE)
            if occurs:
                assert target in text, (segment, text)
            elif target not in {"a luz"}:
                assert target not in text, (segment, text)
        assert "XQ" not in text
    assert out[1] == "" and out[4] == ""


def test_glossary_without_matches_changes_nothing(translator: NllbTranslator) -> None:
    plain = translator.translate(SEGMENTS, "en", "es")
    assert translator.translate(SEGMENTS, "en", "es", terms=[("zebra", "cebra")]) == plain


@pytest.mark.parametrize("mangled", ["XQ0Z", "xq0z", "XQ 0 Z", "XQ-0Z", "(XQ0Z)", "XQ0 Z."])
def test_restore_finds_mangled_placeholders(mangled: str) -> None:
    text, found = _restore(f"Abre {mangled} agora", "XQ0Z", "OpenDub")
    assert found
    assert "OpenDub" in text and "XQ" not in text.upper()


@pytest.mark.parametrize("other", ["XQ10Z", "XQ1Z", "XQ0", "Q0Z"])
def test_restore_leaves_other_tokens(other: str) -> None:
    assert _restore(f"Abre {other} agora", "XQ0Z", "OpenDub") == (f"Abre {other} agora", False)
