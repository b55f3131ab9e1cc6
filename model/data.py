"""Reading rating files: MovieLens (100k ``u.data``, 1M/10M ``ratings.dat``, ``ratings.csv``) and
generic CSV/TSV, with or without a header.

Every row is ``user, item[, rating[, timestamp]]``. A row without a rating is an implicit interaction
(rating 1.0). Any malformed line raises :class:`DataFormatError` naming the file, the line number and
what is wrong; nothing is returned half-read.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np


class DataFormatError(ValueError):
    """A rating file could not be parsed. ``str()`` reads ``FILE:LINE: reason``."""

    def __init__(self, path: str | Path, line: int | None, reason: str):
        self.path, self.line, self.reason = str(path), line, reason
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class FileFormat:
    """How to split a file: delimiter, header policy and allowed column counts."""

    name: str
    delimiter: str
    header: bool | None  # True: required, False: none, None: detect from the first line
    columns: tuple[int, ...]  # allowed numbers of fields per line


FORMATS: dict[str, FileFormat] = {
    "ml-100k": FileFormat("ml-100k", "\t", False, (4,)),
    "ml-dat": FileFormat("ml-dat", "::", False, (4,)),
    "ml-csv": FileFormat("ml-csv", ",", True, (4,)),
    "csv": FileFormat("csv", ",", None, (2, 3, 4)),
    "tsv": FileFormat("tsv", "\t", None, (2, 3, 4)),
}
FORMAT_CHOICES = ("auto", *FORMATS)
# Longer ids could be trained on but never asked for: the service refuses ids over this length.
MAX_ID_LENGTH = 256
ML_CSV_HEADER = ["userId", "movieId", "rating", "timestamp"]


@dataclass
class RawRatings:
    """Parsed rows with raw (string) ids, before id mapping.

    Attributes:
        user_ids, item_ids: shape (n,), dtype object (str).
        ratings: shape (n,), float32.
        timestamps: shape (n,), int64 (0 where the file had none).
        fingerprint: sha256 of the file bytes (or of the generator's arguments).
        source: where the rows came from, for messages and the checkpoint.
        implicit: True when the file carried no rating column.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    ratings: np.ndarray
    timestamps: np.ndarray
    fingerprint: str
    source: str
    implicit: bool = False

    def __len__(self) -> int:
        return len(self.ratings)


def detect_format(path: str | Path, first_line: str) -> FileFormat:
    """Choose a format from the file name and its first non-empty line."""
    if "::" in first_line:
        return FORMATS["ml-dat"]
    if first_line.split(",") == ML_CSV_HEADER:
        return FORMATS["ml-csv"]
    if "\t" in first_line:
        return FORMATS["tsv"]
    if "," in first_line:
        return FORMATS["csv"]
    raise DataFormatError(path, 1, "cannot detect the format: expected fields separated by '\\t', ',' or '::'")


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _parse_row(fields: list[str], fmt: FileFormat) -> tuple[str, str, float, int]:
    """Validate one split line; raises ``ValueError`` with the reason (the caller adds the place)."""
    if len(fields) not in fmt.columns:
        want = " or ".join(str(c) for c in fmt.columns)
        raise ValueError(f"expected {want} fields separated by {fmt.delimiter!r}, got {len(fields)}")
    user, item = fields[0].strip(), fields[1].strip()
    if not user:
        raise ValueError("empty user id")
    if not item:
        raise ValueError("empty item id")
    for name, raw_id in (("user", user), ("item", item)):
        if len(raw_id) > MAX_ID_LENGTH:
            raise ValueError(f"{name} id longer than {MAX_ID_LENGTH} characters ({len(raw_id)})")
    rating = 1.0
    if len(fields) >= 3:
        try:
            rating = float(fields[2])
        except ValueError:
            raise ValueError(f"rating is not a number: {fields[2].strip()!r}") from None
        if not math.isfinite(rating):
            raise ValueError(f"rating is not finite: {fields[2].strip()!r}")
    timestamp = 0
    if len(fields) == 4:
        try:
            timestamp = int(float(fields[3]))
        except (ValueError, OverflowError):
            raise ValueError(f"timestamp is not a number: {fields[3].strip()!r}") from None
    return user, item, rating, timestamp


def load_ratings(path: str | Path, fmt: str = "auto") -> RawRatings:
    """Read a rating file.

    Args:
        path: file to read (UTF-8; a BOM is tolerated).
        fmt: one of :data:`FORMAT_CHOICES`; ``auto`` detects it from the first line.
    Raises:
        DataFormatError: unreadable file, bad encoding, malformed line, or no rows at all.
    """
    path = Path(path)
    if fmt not in FORMAT_CHOICES:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMAT_CHOICES)}")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataFormatError(path, None, f"cannot read file: {exc.strerror or exc}") from exc
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]

    users: list[str] = []
    items: list[str] = []
    ratings: list[float] = []
    stamps: list[int] = []
    spec: FileFormat | None = None if fmt == "auto" else FORMATS[fmt]
    has_columns = 0
    seen_first = False
    for line_no, raw in enumerate(data.split(b"\n"), start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise DataFormatError(path, line_no, f"not valid UTF-8 (byte {exc.start})") from None
        if not line.strip():
            continue
        if not seen_first:
            seen_first = True
            spec = spec or detect_format(path, line)
            if _is_header(line, spec, path, line_no):
                continue
        fields = line.split(spec.delimiter)
        try:
            user, item, rating, stamp = _parse_row(fields, spec)
        except ValueError as exc:
            raise DataFormatError(path, line_no, str(exc)) from None
        width = len(fields)
        if has_columns and width != has_columns:
            raise DataFormatError(path, line_no, f"expected {has_columns} fields like the lines before, got {width}")
        has_columns = width
        users.append(user)
        items.append(item)
        ratings.append(rating)
        stamps.append(stamp)
    if not ratings:
        raise DataFormatError(path, None, "no ratings found (the file is empty or holds only a header)")
    return RawRatings(
        user_ids=np.array(users, dtype=object),
        item_ids=np.array(items, dtype=object),
        ratings=np.array(ratings, dtype=np.float32),
        timestamps=np.array(stamps, dtype=np.int64),
        fingerprint="sha256:" + hashlib.sha256(data).hexdigest(),
        source=str(path),
        implicit=has_columns == 2,
    )


def _is_header(line: str, spec: FileFormat, path: Path, line_no: int) -> bool:
    """Whether the first line is a header; for ``ml-csv`` it must be exactly the MovieLens one."""
    fields = line.split(spec.delimiter)
    if spec.header is True:
        if [f.strip() for f in fields] != ML_CSV_HEADER and spec.name == "ml-csv":
            raise DataFormatError(path, line_no, f"expected the header {','.join(ML_CSV_HEADER)}")
        return True
    if spec.header is False:
        return False
    # Detect, explicitly: a header names its user column with one of HEADER_USER_WORDS. A first line whose
    # rating is not a number but whose first field is no such name is a bad data line, not a header.
    named = fields[0].strip().lower() in HEADER_USER_WORDS
    if len(fields) >= 3 and not _is_number(fields[2]) and not named:
        words = ", ".join(sorted(HEADER_USER_WORDS))
        raise DataFormatError(path, line_no, f"rating is not a number: {fields[2].strip()!r} (not a header either: "
                                             f"a header's first column is named one of {words})")  # fmt: skip
    return named and (len(fields) < 3 or not _is_number(fields[2]))


HEADER_USER_WORDS = frozenset({"user", "user_id", "userid", "uid"})
