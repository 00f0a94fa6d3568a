"""The built-in corpus readers: plain text, and JSON Lines with a "text" field per record."""

from __future__ import annotations

import json
from pathlib import Path

from lmstudio_app.data.files import TEXT_EXTENSIONS, read_text_file
from lmstudio_app.errors import DataError
from lmstudio_app.specs import CorpusReaderSpec

JSONL_TEXT_FIELD = "text"


def read_plain_text(path: Path) -> str:
    """UTF-8 text with the core's checks (empty, binary, wrong encoding)."""
    return read_text_file(path)


def read_jsonl(path: Path) -> str:
    """One record per line: an object with a "text" string, or a bare JSON string.

    Records are joined with a blank line, as files are. Blank lines are skipped; any other bad
    line is an error naming the file and line number.
    """
    records: list[str] = []
    for number, line in enumerate(read_text_file(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if isinstance(record, dict):
            if JSONL_TEXT_FIELD not in record:
                raise DataError(f'{path}:{number}: the record has no "{JSONL_TEXT_FIELD}" field')
            record = record[JSONL_TEXT_FIELD]
            if not isinstance(record, str):
                kind = type(record).__name__
                raise DataError(f'{path}:{number}: "{JSONL_TEXT_FIELD}" is {kind}, not a string')
        elif not isinstance(record, str):
            kind = type(record).__name__
            raise DataError(f'{path}:{number}: expected an object with a "{JSONL_TEXT_FIELD}" string, got {kind}')
        if record:
            records.append(record)
    if not records:
        raise DataError(f'{path}: no records with "{JSONL_TEXT_FIELD}" in the file')
    return "\n\n".join(records)


READER_SPECS: list[CorpusReaderSpec] = [
    CorpusReaderSpec("text", "Plain text (UTF-8)", TEXT_EXTENSIONS, read_plain_text),
    CorpusReaderSpec("jsonl", 'JSON Lines: one {"text": ...} record per line', (".jsonl",), read_jsonl),
]
