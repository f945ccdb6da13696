"""A tiny randomly initialised XTTS v2, saved once per session in the layout of the
``coqui/XTTS-v2`` release (config.json, model.pth, vocab.json, speakers_xtts.pth).

It is XTTS's real architecture (``TTS.tts.models.xtts.Xtts``: GPT-2 with the perceiver
conditioning resampler, the HiFi-GAN decoder with its ResNet speaker encoder) with a GPT
of 2 layers of 64 channels and a short audio-token budget. The weights are random (seeded),
so the speech is noise: the tests check the engine's plumbing, not quality.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import pytest

from engines.synthesize_xtts import XttsEngine
from tests.envs.shared import skip_gpu_without_cuda

SEED = 1234
GPT_LAYERS = 2
GPT_CHANNELS = 64
GPT_HEADS = 4
#: Audio tokens per input: at most 40 - 1 - 2 = 37 are generated (~1.7 s each of 1024
#: samples at 22.05 kHz), which keeps a CPU run short.
MAX_AUDIO_TOKENS = 40
STOCK_SPEAKERS = ("Claribel Dervla", "Andrew Chipper", "Custom Person")
LANGUAGE_TOKENS = ["en", "es", "fr", "de", "it", "pt", "pl", "tr", "ru", "nl", "cs", "ar",
                   "zh-cn", "hu", "ko", "ja", "hi"]

_WORDS = ("the cat dog house river city open close speak listen music film voice morning "
          "night friend doctor market water light window street train quickly slowly never "
          "always we you they said asked under over before after olá bom dia obrigado "
          "coração não está você ça été über straße niño mañana").split()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu_without_cuda(items, reason="no CUDA device here")


def _vocab(path: Path) -> int:
    """A BPE vocabulary in XTTS's format: [STOP]=0, [UNK]=1, [SPACE]=2, language tags,
    [START]; the text front end writes ``[en]hello[SPACE]world``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    rng = random.Random(SEED)
    corpus = [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(3, 12)))
              for _ in range(400)]
    corpus.append("abcdefghijklmnopqrstuvwxyz0123456789.,;:!?'-")
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[STOP]", "[UNK]", "[SPACE]", *[f"[{c}]" for c in LANGUAGE_TOKENS], "[START]"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300,
                                                        special_tokens=specials))
    tok.save(str(path))
    return int(tok.get_vocab_size())


def build_tiny_xtts(root: Path) -> Path:
    import torch
    from tokenizers import Tokenizer
    from TTS.tts.configs.xtts_config import XttsArgs, XttsConfig
    from TTS.tts.models.xtts import Xtts

    root.mkdir(parents=True, exist_ok=True)
    _vocab(root / "vocab.json")
    tok = Tokenizer.from_file(str(root / "vocab.json"))
    torch.manual_seed(SEED)
    args = XttsArgs(
        gpt_layers=GPT_LAYERS, gpt_n_model_channels=GPT_CHANNELS, gpt_n_heads=GPT_HEADS,
        gpt_max_audio_tokens=MAX_AUDIO_TOKENS, gpt_max_text_tokens=402,
        gpt_max_prompt_tokens=70, gpt_num_audio_tokens=1026, gpt_start_audio_token=1024,
        gpt_stop_audio_token=1025, gpt_use_perceiver_resampler=True,
        gpt_number_text_tokens=tok.get_vocab_size(),
        gpt_start_text_token=tok.token_to_id("[START]"),
        gpt_stop_text_token=tok.token_to_id("[STOP]"),
        decoder_input_dim=GPT_CHANNELS, d_vector_dim=512)
    # Inference settings as the XTTS v2 release's config.json has them.
    config = XttsConfig(model_args=args, temperature=0.75, length_penalty=1.0,
                        repetition_penalty=5.0, top_k=50, top_p=0.85, gpt_cond_len=30,
                        gpt_cond_chunk_len=4, max_ref_len=30)
    model = Xtts(config)
    torch.save({"model": model.state_dict()}, root / "model.pth")
    config.save_json(str(root / "config.json"))
    g = torch.Generator().manual_seed(SEED + 1)
    speakers = {}
    for name in STOCK_SPEAKERS:
        emb = torch.randn(1, 512, 1, generator=g)
        speakers[name] = {"gpt_cond_latent": torch.randn(1, 32, GPT_CHANNELS, generator=g),
                          "speaker_embedding": emb / emb.norm()}
    torch.save(speakers, root / "speakers_xtts.pth")
    return root


@dataclass(frozen=True)
class TinyXtts:
    model_dir: Path
    stock_speakers: tuple[str, ...] = STOCK_SPEAKERS
    max_audio_tokens: int = MAX_AUDIO_TOKENS
    gpt_channels: int = GPT_CHANNELS


@pytest.fixture(scope="session")
def tiny_xtts(tmp_path_factory: pytest.TempPathFactory) -> TinyXtts:
    return TinyXtts(build_tiny_xtts(tmp_path_factory.mktemp("xtts") / "XTTS-v2"))


@pytest.fixture(scope="session")
def xtts_dir(tiny_xtts: TinyXtts) -> Path:
    return tiny_xtts.model_dir


@pytest.fixture(scope="session")
def engine(xtts_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> XttsEngine:

    return XttsEngine(xtts_dir, "cpu", tmp_path_factory.mktemp("references"))
