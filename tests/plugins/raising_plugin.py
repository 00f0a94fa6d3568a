"""A test plugin whose model hook raises; its reader hook still works."""

from pathlib import Path

from lmstudio_app import CorpusReaderSpec, hookimpl


@hookimpl
def lmstudio_models() -> list:
    raise RuntimeError("raising_plugin is broken on purpose")


def read_shouty(path: Path) -> str:
    return path.read_text(encoding="utf-8").lower()


@hookimpl
def lmstudio_corpus_readers() -> list[CorpusReaderSpec]:
    return [CorpusReaderSpec("shouty", "Lower-cases .SHOUT files.", (".shout",), read_shouty)]
