"""Built-in problems. Each module registers its problems on import; an ImportError here is a
bug to fix, never to hide."""

from problems import (
    algorithmic,
    fsdd,
    image_text,
    mnist,
    morse,
    ocr,
    rna_design,
    speech,
    text_lm,
    text_pairs,
    translate,
)

__all__ = ["algorithmic", "fsdd", "image_text", "mnist", "morse", "ocr", "rna_design", "speech",
           "text_lm", "text_pairs", "translate"]
