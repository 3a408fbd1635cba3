"""sentencepiece tokenizer.model -> llama2.c tokenizer.bin, exactly as llama2.c's exporter writes it.

Layout (docs/FORMAT.md, "Tokenizer file"): uint32 max_token_length, then per token a float32 score, a
uint32 byte length and the UTF-8 bytes. The pieces are rewritten as llama2.c does: BOS becomes
"\\n<s>\\n", EOS "\\n</s>\\n", the sentencepiece space mark U+2581 a plain space; byte pieces
("<0x0A>") and <unk> stay as they are (run decodes "<0xHH>" itself).
"""

from __future__ import annotations

import struct
from pathlib import Path

from ..errors import ConvertError

SPACE_MARK = "\u2581"


def tokenizer_bytes(model_path: Path) -> bytes:
    """The tokenizer.bin contents for a sentencepiece model file."""
    try:
        import sentencepiece
    except ImportError:
        raise ConvertError(
            "converting a sentencepiece tokenizer.model needs the sentencepiece package: pip install sentencepiece (the convert extra)"
        )
    try:
        sp = sentencepiece.SentencePieceProcessor(model_file=str(model_path))
    except (OSError, RuntimeError) as e:
        raise ConvertError(f"{model_path}: not a sentencepiece model ({str(e).splitlines()[0] if str(e) else e})")
    pieces, scores = [], []
    for i in range(sp.vocab_size()):
        if i == sp.bos_id():
            piece = "\n<s>\n"
        elif i == sp.eos_id():
            piece = "\n</s>\n"
        else:
            try:
                piece = sp.id_to_piece(i)
            except UnicodeDecodeError as e:  # (sentencepiece's wrapper decodes every piece)
                raise ConvertError(
                    f"{model_path}: token {i}'s piece is not valid UTF-8 ({e.reason}); the file is damaged"
                )
        pieces.append(piece.replace(SPACE_MARK, " ").encode("utf-8"))
        scores.append(sp.get_score(i))
    out = [struct.pack("<I", max(len(p) for p in pieces))]
    for piece, score in zip(pieces, scores):
        out.append(struct.pack("<fI", score, len(piece)))
        out.append(piece)
    return b"".join(out)
