"""DeepSeek-OCR resolution modes.

vLLM fixes the mode per server process (module constants in its DeepSeek-OCR processor), so a mode
belongs to a model server's configuration, not to a request. launcher.py keeps its own copy of this
table because it runs under vLLM's interpreter, where aigwd is not importable; a test keeps the two equal.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_MODE", "MODES", "OcrMode", "get"]


@dataclass(frozen=True)
class OcrMode:
    name: str
    base_size: int  # global view, padded to base_size x base_size
    image_size: int  # tile size when cropping; resize target for small modes
    crop_mode: bool
    vision_tokens: str  # per image, for operators choosing a mode


MODES: dict[str, OcrMode] = {
    mode.name: mode
    for mode in (
        OcrMode("tiny", 512, 512, False, "64"),
        OcrMode("small", 640, 640, False, "100"),
        OcrMode("base", 1024, 1024, False, "256"),
        OcrMode("large", 1280, 1280, False, "400"),
        OcrMode("gundam", 1024, 640, True, "256 + n x 100 (n = 2..6 tiles of 640; none for images up to 640)"),
    )
}

# What upstream vLLM runs when nothing is changed.
DEFAULT_MODE = "gundam"


def get(name: str) -> OcrMode:
    """The mode called `name` (case and surrounding spaces ignored)."""
    mode = MODES.get(name.strip().lower())
    if mode is None:
        raise ValueError(f"unknown DeepSeek-OCR mode {name!r}; valid modes: {', '.join(MODES)}")
    return mode
