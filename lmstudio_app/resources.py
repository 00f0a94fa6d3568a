"""Where the bundled files live: the demo corpus and the presets in ``resources/``."""

from __future__ import annotations

from pathlib import Path

RESOURCES_DIR = Path(__file__).resolve().parent.parent / "resources"


def resource_path(*parts: str) -> Path:
    return RESOURCES_DIR.joinpath(*parts)


def demo_corpus_path() -> Path:
    return resource_path("demo_corpus.txt")


def preset_path(name: str) -> Path:
    """``resources/presets/<name>.toml``."""
    return resource_path("presets", f"{name}.toml")


def list_presets() -> list[str]:
    return sorted(p.stem for p in resource_path("presets").glob("*.toml"))
