"""A tiny randomly initialised NLLB (M2M100) model, converted to CTranslate2 once per session.

The weights are random (seeded), so the translations are gibberish: the tests check the
engine's plumbing (loading, tokenisation, batching, bounds, glossary), not quality.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import pytest

from dubcore.nllb import NLLB_LANGUAGES
from engines.translate_nllb import SPM_FILE

SEED = 1234
SPM_VOCAB_SIZE = 600  # 3 specials + 202 language codes (user symbols) + ~395 learned pieces
D_MODEL = 32
INIT_STD = 1.0  # large random weights: the output depends on the input (0.02 babbles one word)

_WORDS = ("the cat dog house river city open close speak listen music film voice "
          "morning night friend doctor market water light window street train quickly "
          "slowly never always we you they said asked under over before after "
          "OpenDub Temporal glossary translation").split()


def _corpus(n: int) -> list[str]:
    rng = random.Random(SEED)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 14))).capitalize() + "."
            for _ in range(n)]


def build_tiny_nllb(root: Path) -> Path:
    """Train the SentencePiece model, build and save the HF model and its tokenizer, convert
    to CTranslate2; returns the CTranslate2 model directory."""
    import ctranslate2
    import sentencepiece as spm
    import torch
    import transformers
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel

    text = root / "corpus.txt"
    text.write_text("\n".join(_corpus(400)) + "\n", encoding="utf-8")
    spm.SentencePieceTrainer.train(
        input=str(text), model_prefix=str(root / "spm"), vocab_size=SPM_VOCAB_SIZE,
        model_type="bpe", character_coverage=1.0, user_defined_symbols=list(NLLB_LANGUAGES),
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    sp = spm.SentencePieceProcessor(model_file=str(root / "spm.model"))
    # Model ids = SentencePiece ids, then <pad>; CTranslate2 works on the piece strings.
    vocab = {sp.id_to_piece(i): i for i in range(sp.get_piece_size())}
    vocab["<pad>"] = len(vocab)

    hf = root / "hf"
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
        bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>")
    tokenizer.save_pretrained(hf)
    config = transformers.M2M100Config(
        vocab_size=len(vocab), d_model=D_MODEL, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * D_MODEL,
        decoder_ffn_dim=2 * D_MODEL, max_position_embeddings=1024, scale_embedding=True,
        pad_token_id=vocab["<pad>"], bos_token_id=1, eos_token_id=2,
        decoder_start_token_id=2, dropout=0.0, init_std=INIT_STD)
    torch.manual_seed(SEED)
    transformers.M2M100ForConditionalGeneration(config).save_pretrained(hf)

    out = root / "ct2"
    ctranslate2.converters.TransformersConverter(str(hf)).convert(str(out), quantization=None)
    shutil.copy(root / "spm.model", out / SPM_FILE)
    return out


@pytest.fixture(scope="session")
def tiny_nllb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_nllb(tmp_path_factory.mktemp("tiny-nllb"))
