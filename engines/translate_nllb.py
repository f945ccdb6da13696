"""Production translation: NLLB-200 through CTranslate2 (GPU or CPU), segment by segment.

The model is a CTranslate2 conversion of an NLLB-200 checkpoint (default
``facebook/nllb-200-distilled-600M``), fetched at image-build time into a local directory
(``python deploy/prefetch_models.py --engine nllb``) holding ``model.bin``,
``config.json``, the vocabulary and the SentencePiece model ``sentencepiece.bpe.model``.
Nothing is downloaded at run time, and ``transformers`` is not needed: the text is cut into
pieces with ``sentencepiece`` directly, as NLLB expects::

    source = [src_code, *pieces, "</s>"]      target_prefix = [tgt_code]

Every input text is one segment. Its sentences (`split_sentences`) are translated together
with the sentences of every other segment, sorted by length into batches of at most
``max_batch_size``, and joined again per segment; an empty segment stays empty. Each
sentence's output is bounded by its own input length (`max_output_tokens`), so a model that
babbles cannot run to the decoder's limit; batches hold sentences of one length bucket, so a
sentence's translation does not depend on the other sentences of its batch.

Glossary (``terms=[(source_term, target_term)]``): every target term whose source term occurs
in a segment appears in that segment's output. The engine guarantees it in three steps:

1. mask: each source term is replaced (`mask_terms`) by a placeholder token that NLLB
   copies (``XQ0Z``...), before the segment is cut into sentences (so a term holding a
   full stop survives the split);
2. restore: the placeholder is found again in the output, also mangled as the model may
   leave it (other case, spaces or punctuation inside ``XQ 0 Z``), and replaced by the
   target term;
3. constrained prefix: a sentence whose output lost a placeholder is decoded again with the
   missing target terms forced as the start of its target prefix, so the model writes the
   rest of the sentence after them. The forced terms are put back as text, not as decoded
   pieces, so they are present even where SentencePiece cannot spell them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dubcore.errors import ConfigurationError, EngineError, UnsupportedLanguageError
from dubcore.nllb import NLLB_LANGUAGES, nllb_code
from engines.translate import mask_terms, split_sentences

if TYPE_CHECKING:
    from dubcore.settings import Settings

log = logging.getLogger(__name__)

MODEL_ID = "facebook/nllb-200-distilled-600M"
SPM_FILE = "sentencepiece.bpe.model"  # the name NLLB checkpoints give their SentencePiece model
REQUIRED_FILES = ("model.bin", "config.json", SPM_FILE)
PREFETCH_COMMAND = "python deploy/prefetch_models.py --engine nllb"
EOS = "</s>"

MAX_LENGTH_RATIO = 2.0  # output tokens per input token; NLLB stays well under 1.5 between
MAX_LENGTH_EXTRA = 10  # ... scripts, plus a margin for very short inputs
LENGTH_BUCKET = 8  # input pieces; sentences within one bucket share a decoding bound
MAX_INPUT_TOKENS = 512  # NLLB was trained on sequences up to 512 tokens (language code incl.)

# Pieces a model may emit that are no text: language codes and specials (SentencePiece
# decodes "<unk>" as a double question mark sign).
_NOT_SPOKEN = frozenset([*NLLB_LANGUAGES, EOS, "<s>", "<unk>", "<pad>"])
_PLACEHOLDER = re.compile(r"\s*XQ\d+Z")  # mask_terms' tokens; one left over is not spoken

def _import_runtime() -> tuple[Any, Any]:
    try:
        import ctranslate2
        import sentencepiece
    except ImportError as e:
        raise ConfigurationError(
            "the NLLB translator needs the gpu-translate extra "
            f"(ctranslate2, sentencepiece): {e}") from e
    return ctranslate2, sentencepiece


class NllbTranslator:
    """NLLB-200 (CTranslate2) for every pair of its 202 language-script pairs."""

    name = "nllb"
    languages: tuple[str, ...] = tuple(sorted(NLLB_LANGUAGES.values()))
    """BCP-47 tags; `nllb_code` also takes regions and aliases (pt-BR, zh-TW, fil)."""

    def __init__(self, model_dir: Path, device: str = "cpu", compute_type: str = "default",
                 inter_threads: int = 1, intra_threads: int = 0, max_batch_size: int = 32,
                 beam_size: int = 4, model_id: str = MODEL_ID,
                 model_revision: str | None = None) -> None:
        if max_batch_size < 1 or beam_size < 1:
            raise ConfigurationError("max_batch_size and beam_size must be at least 1")
        ctranslate2, sentencepiece = _import_runtime()
        model_dir = Path(model_dir)
        missing = [f for f in REQUIRED_FILES if not (model_dir / f).is_file()]
        if missing:
            raise ConfigurationError(
                f"NLLB model files missing in {model_dir}: {', '.join(missing)}; "
                f"fetch them at image-build time with `{PREFETCH_COMMAND}`")
        if device.split(":")[0] == "cuda" and ctranslate2.get_cuda_device_count() == 0:
            raise ConfigurationError(
                "the NLLB translator is configured for device 'cuda' but CTranslate2 sees "
                "no CUDA device; use device 'cpu' or run this worker on a GPU")
        device_type, _, index = device.partition(":")
        self.device = device
        self.model_id = model_id
        self.model_revision = model_revision
        self.max_batch_size = max_batch_size
        self.beam_size = beam_size
        self._sp = sentencepiece.SentencePieceProcessor(model_file=str(model_dir / SPM_FILE))
        try:
            self._model = ctranslate2.Translator(
                str(model_dir), device=device_type, device_index=int(index or 0),
                compute_type=compute_type, inter_threads=inter_threads,
                intra_threads=intra_threads)
        except (RuntimeError, ValueError) as e:
            raise ConfigurationError(f"cannot load the NLLB model in {model_dir}: {e}") from e
        log.info("loaded %s from %s on %s (%s)", model_id, model_dir, device, compute_type)

    # ---- languages ----------------------------------------------------------------------

    def _code(self, tag: str) -> str | None:
        code = nllb_code(tag)
        if code is None or self._sp.piece_to_id(code) == self._sp.unk_id():
            return None  # a model converted without this language's token
        return code

    def supports(self, source: str, target: str) -> bool:
        return self._code(source) is not None and self._code(target) is not None

    def _codes(self, source: str, target: str) -> tuple[str, str]:
        src, tgt = self._code(source), self._code(target)
        if src is None or tgt is None:
            missing = source if src is None else target
            raise UnsupportedLanguageError(f"NLLB-200 does not translate {missing!r} "
                                           f"({source} -> {target})")
        return src, tgt

    # ---- translation --------------------------------------------------------------------

    def translate(self, texts: list[str], source: str, target: str,
                  progress: Callable[[float], None] | None = None, *,
                  terms: Sequence[tuple[str, str]] = ()) -> list[str]:
        """One translation per segment of ``texts``, in order; ``terms`` is a glossary
        (source term, target term) whose target terms the output is guaranteed to hold."""
        src, tgt = self._codes(source, target)
        masked, tokens = mask_terms(texts, list(terms)) if terms else (list(texts), {})
        sentences: list[str] = []
        owners: list[int] = []  # the segment each sentence belongs to
        for i, text in enumerate(masked):
            for sentence in split_sentences(text):
                sentences.append(sentence)
                owners.append(i)
        outputs = self._translate_sentences(sentences, src, tgt, tokens, progress)
        joined: list[list[str]] = [[] for _ in texts]
        for owner, out in zip(owners, outputs, strict=True):
            if out:
                joined[owner].append(out)
        return [" ".join(parts) for parts in joined]

    def _translate_sentences(self, sentences: list[str], src: str, tgt: str,
                             tokens: dict[str, str],
                             progress: Callable[[float], None] | None) -> list[str]:
        pieces = [self._pieces(s) for s in sentences]
        buckets: dict[int, list[int]] = {}
        for i in sorted(range(len(sentences)), key=lambda i: len(pieces[i])):
            buckets.setdefault(max_output_tokens(len(pieces[i])), []).append(i)
        batches = [group[start:start + self.max_batch_size] for group in buckets.values()
                   for start in range(0, len(group), self.max_batch_size)]
        outputs = [""] * len(sentences)
        done = 0
        for batch in batches:
            decoded = self._decode([pieces[i] for i in batch], src, [[tgt]] * len(batch))
            for i, out_pieces in zip(batch, decoded, strict=True):
                text = self._sp.decode(out_pieces)
                outputs[i] = self._enforce(text, sentences[i], pieces[i], src, tgt, tokens)
            done += len(batch)
            if progress:
                progress(done / len(sentences))
        return outputs

    def _pieces(self, sentence: str) -> list[str]:
        pieces: list[str] = self._sp.encode(sentence, out_type=str)
        return pieces[:MAX_INPUT_TOKENS - 2]  # room for the language code and </s>

    def _decode(self, batch: list[list[str]], src: str,
                prefixes: list[list[str]]) -> list[list[str]]:
        """Target pieces after each prefix's language code, each cut to its own bound."""
        limits = [max_output_tokens(len(p)) for p in batch]
        prefix_lengths = [len(p) for p in prefixes]
        try:
            results = self._model.translate_batch(
                [[src, *p, EOS] for p in batch], target_prefix=prefixes,
                beam_size=self.beam_size,
                max_decoding_length=max(a + b for a, b in zip(limits, prefix_lengths,
                                                              strict=True)),
                max_input_length=MAX_INPUT_TOKENS)
        except RuntimeError as e:  # CTranslate2 reports decoding failures as RuntimeError
            raise EngineError(f"NLLB translation failed: {e}") from e
        out = []
        for result, limit, n_prefix in zip(results, limits, prefix_lengths, strict=True):
            hypothesis = result.hypotheses[0][1:n_prefix + limit]  # after the language code
            out.append(hypothesis[:n_prefix - 1] + [t for t in hypothesis[n_prefix - 1:]
                                                     if t not in _NOT_SPOKEN])
        return out

    def _enforce(self, text: str, sentence: str, pieces: list[str], src: str, tgt: str,
                 tokens: dict[str, str]) -> str:
        """Put each glossary term back (steps 2 and 3 of the module docstring)."""
        wanted = [t for t in tokens if t in sentence]
        missing = []
        for token in wanted:
            text, found = _restore(text, token, tokens[token])
            if not found:
                missing.append(token)
        if not missing:
            return _PLACEHOLDER.sub("", text).strip()
        forced = " ".join(tokens[t] for t in missing)
        log.info("glossary token(s) %s lost; forcing %r as the target prefix", missing, forced)
        prefix = [tgt, *self._sp.encode(forced, out_type=str)]
        rest_pieces = self._decode([pieces], src, [prefix])[0][len(prefix) - 1:]
        rest = self._sp.decode(rest_pieces)
        for token in wanted:  # the continuation may hold placeholders of its own
            rest = _restore(rest, token, tokens[token])[0]
        return f"{forced} {_PLACEHOLDER.sub('', rest).strip()}".strip()


def load(settings: Settings) -> NllbTranslator:
    """The registry's loader: NLLB-200 from ``<models_dir>/nllb`` on
    ``DUB_DEVICE``, recording the revision it was prefetched at (``DUB_MODEL_REVISIONS``)."""
    return NllbTranslator(settings.models_dir / NllbTranslator.name, device=settings.device,
                          model_revision=settings.model_revisions.get(NllbTranslator.name))


def max_output_tokens(input_tokens: int) -> int:
    """The most target pieces a sentence of ``input_tokens`` pieces may translate into.

    Lengths are rounded up to a bucket, and a batch holds one bucket only: its sentences
    share one decoding bound, so a sentence translates the same whatever batch it is in.
    """
    bucketed = -(-input_tokens // LENGTH_BUCKET) * LENGTH_BUCKET
    return int(MAX_LENGTH_RATIO * bucketed) + MAX_LENGTH_EXTRA


def _restore(text: str, token: str, target: str) -> tuple[str, bool]:
    """``text`` with every copy of ``token`` (also as ``xq 0 z``, ``XQ-0Z``) replaced by
    ``target``, and whether one was found."""
    gaps = r"[\s\W_]{0,2}"
    pattern = re.compile(gaps.join(re.escape(c) for c in token), re.IGNORECASE)
    restored, n = pattern.subn(lambda _: target, text)
    return restored, n > 0
