"""Built-in problems. Each module registers its problems on import; an ImportError here is a
bug to fix, never to hide."""

from problems import algorithmic, image_text, mnist, ocr, text_pairs, translate

__all__ = ["algorithmic", "image_text", "mnist", "ocr", "text_pairs", "translate"]
