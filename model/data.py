"""Reading rating files: MovieLens (100k ``u.data``, 1M/10M ``ratings.dat``, ``ratings.csv``), generic
CSV/TSV with or without a header, and Parquet.

Every row is ``user, item[, rating[, timestamp]]``, or ``user, item, timestamp`` under a header that names
them so (:data:`CLICKS`). A row without a rating is an implicit interaction (rating 1.0). Any malformed
line raises :class:`DataFormatError` naming the file, the line number and what is wrong; nothing is
returned half-read.

Two readers give the same result: the columnar one (``model.columnar``, pyarrow, no Python object per
row) runs first; when it cannot vouch for the file, the line-by-line one here reads it and names the bad
line. Parquet files (recognised by their magic bytes) have columns named as the text headers are
(``userId``/``user_id``, ``movieId``/``item_id``, optional ``rating``/``score`` and ``timestamp``/``time``...: any
case, the table ``model.columnar.COLUMN_NAMES``).
"""

from __future__ import annotations

import csv
import math
from array import array
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from model import columnar
from model.raw import MAX_ID_LENGTH, DataFormatError, RawRatings, sorted_vocab

__all__ = ["FORMATS", "FORMAT_CHOICES", "MAX_ID_LENGTH", "DataFormatError", "RawRatings", "load_ratings"]


@dataclass(frozen=True)
class FileFormat:
    """How to split a file: delimiter, header policy, allowed column counts and quoting."""

    name: str
    delimiter: str
    header: bool | None  # True: required, False: none, None: detect from the first line
    columns: tuple[int, ...]  # allowed numbers of fields per line
    # RFC 4180 quoting, as R's write.csv and pandas write it: a field that starts with '"' runs to the next
    # lone '"' ('""' inside is one '"'), delimiters included; a field on one line only.
    quoted: bool = False

    def split(self, line: str) -> list[str]:
        """One line's fields; raises ``ValueError`` for a quote that is never closed."""
        if not (self.quoted and '"' in line):
            return line.split(self.delimiter)
        try:
            return next(csv.reader([line], delimiter=self.delimiter, strict=True))
        except csv.Error as exc:
            raise ValueError(f"bad quoting ({exc})") from None


FORMATS: dict[str, FileFormat] = {
    "ml-100k": FileFormat("ml-100k", "\t", False, (4,)),
    "ml-dat": FileFormat("ml-dat", "::", False, (4,)),
    "ml-csv": FileFormat("ml-csv", ",", True, (4,), quoted=True),
    "csv": FileFormat("csv", ",", None, (2, 3, 4), quoted=True),
    "tsv": FileFormat("tsv", "\t", None, (2, 3, 4), quoted=True),
}
FORMAT_CHOICES = ("auto", *FORMATS)
ML_CSV_HEADER = ["userId", "movieId", "rating", "timestamp"]


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


def _parse_row(
    fields: list[str], fmt: FileFormat, columns: tuple[str, ...] | None = None
) -> tuple[str, str, float, int]:
    """Validate one split line, its columns as ``columns`` names them (default: by position, ``ORDER``);
    raises ``ValueError`` with the reason (the caller adds the place)."""
    if columns == CLICKS and len(fields) == 3:
        fields = [fields[0], fields[1], "1", fields[2]]
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
    timestamp = _timestamp(fields[3]) if len(fields) == 4 else 0
    return user, item, rating, timestamp


def _timestamp(text: str) -> int:
    """Seconds since the epoch: a number (truncated, as ``int(float(x))``), or an ISO 8601 date or time
    (``1997-12-04``, ``1997-12-04T15:55:49Z``; without a zone, UTC), as Parquet's date and timestamp columns are
    read. Only the order within each user matters."""
    try:
        return int(float(text))
    except OverflowError:
        raise ValueError(f"timestamp is not a number: {text.strip()!r}") from None
    except ValueError:
        pass
    stripped = text.strip()
    try:
        when = datetime.fromisoformat(stripped[:-1] + "+00:00" if stripped.endswith(("Z", "z")) else stripped)
    except ValueError:
        raise ValueError(f"timestamp is not a number nor an ISO 8601 date: {stripped!r}") from None
    return int((when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp())


def load_ratings(path: str | Path, fmt: str = "auto", fast: bool = True) -> RawRatings:
    """Read a rating file.

    Args:
        path: file to read (UTF-8 text, a BOM tolerated; or Parquet, detected from its content).
        fmt: one of :data:`FORMAT_CHOICES` for text files; ``auto`` detects it from the first line.
        fast: try the columnar reader first (``False``: line by line only; for tests and benchmarks).
    Returns:
        Rows with ids as int32 codes into sorted vocabularies (see :class:`RawRatings`); the same arrays
        whichever reader produced them.
    Raises:
        DataFormatError: unreadable file, bad encoding, malformed line, or no rows at all.
    """
    path = Path(path)
    if fmt not in FORMAT_CHOICES:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMAT_CHOICES)}")
    scan = columnar.scan_file(path)
    if scan.compressed:
        raise DataFormatError(path, None, f"a {scan.compressed}-compressed file: decompress it first (text or Parquet "
                                          "are read)")  # fmt: skip
    if scan.parquet and fmt == "auto":
        return _check_ratings(columnar.read_parquet(path, scan))
    if scan.parquet:
        raise DataFormatError(path, None, f"a Parquet file, not {fmt}: read it with --format auto")
    if scan.parquet_head and fmt == "auto":  # not a text file with a bad line 2: say what it is
        raise DataFormatError(path, None, "begins like a Parquet file but does not end like one (truncated, or "
                                          "still being written?)")  # fmt: skip
    raw = _read_columnar(path, fmt, scan) if fast else None
    return _check_ratings(raw if raw is not None else _read_lines(path, fmt, scan.fingerprint))


# Ratings all at least this large are times (seconds since the epoch; 1e8 s is March 1973), not ratings or counts.
EPOCH_LIKE = 1e8


def _check_ratings(raw: RawRatings) -> RawRatings:
    """``raw``, unless its ratings are all epoch-like: a click log ``user,item,time`` without a header (or under
    names the readers do not know) had its times read as ratings and trained a rating model on them (train RMSE
    5.5 million, exit 0)."""
    if not raw.implicit and len(raw) and float(raw.ratings.min()) >= EPOCH_LIKE:
        low = float(raw.ratings.min())
        raise DataFormatError(raw.source, None, f"the rating column holds only values of {low:.3g} and more: times "
                                                "(seconds since 1970), not ratings? A header user,item,timestamp "
                                                "reads them as the times of implicit interactions")  # fmt: skip
    return raw


def _read_columnar(path: Path, fmt: str, scan: columnar.FileScan) -> RawRatings | None:
    """The columnar reader with the layout (format, header, width) settled from the first line as the
    line reader would; ``None`` to leave the file to the line reader (including every error)."""
    if scan.first_line is None or scan.first_line_no != 1 or scan.lone_cr:
        return None  # a blank or undecodable head, or "\r" line ends: rare, the line reader copes
    try:
        spec = FORMATS[fmt] if fmt != "auto" else detect_format(path, scan.first_line)
        header = _header_columns(scan.first_line, spec, path, 1)
    except DataFormatError:
        return None
    try:
        width = len(spec.split(scan.first_line))  # a header is as wide as the rows under it
    except ValueError:
        return None
    if width not in spec.columns:
        return None
    names = list(header or ORDER[:width])
    delimiter = spec.delimiter
    if delimiter == "::":  # pyarrow splits on one character: read ":" and demand empty columns between
        names = [part for k, name in enumerate(names) for part in ((name,) if k == 0 else (f"_gap{k}", name))]
        delimiter = ":"
    implicit = "rating" not in names
    return columnar.read_delimited(path, scan, delimiter, names, int(header is not None), implicit, spec.quoted)


def _read_lines(path: Path, fmt: str, fingerprint: str) -> RawRatings:
    """The line-by-line reader: slow (a Python loop) but it names the first bad line."""
    users, items = _Codes(), _Codes()
    ratings, stamps = array("d"), array("q")
    spec: FileFormat | None = None if fmt == "auto" else FORMATS[fmt]
    has_columns = 0
    seen_first = False
    columns: tuple[str, ...] | None = None  # as a header names them; None: by position (ORDER)
    for line_no, line in _text_lines(path):
        if not line.strip():
            continue
        if not seen_first:
            seen_first = True
            spec = spec or detect_format(path, line)
            columns = _header_columns(line, spec, path, line_no)
            if columns is not None:
                has_columns = len(columns)  # every row as wide as the header
                continue
        try:
            fields = spec.split(line)
        except ValueError as exc:
            raise DataFormatError(path, line_no, str(exc)) from None
        width = len(fields)
        # Before the values (a trailing comma is one field too many, not an empty timestamp), when the width is one
        # the format allows (else _parse_row names the widths it allows).
        if has_columns and width != has_columns and width in spec.columns:
            trailing = " (a trailing delimiter?)" if width == has_columns + 1 and not fields[-1].strip() else ""
            raise DataFormatError(path, line_no, f"expected {has_columns} fields like the lines before, got "
                                                 f"{width}{trailing}")  # fmt: skip
        try:
            user, item, rating, stamp = _parse_row(fields, spec, columns)
        except ValueError as exc:
            raise DataFormatError(path, line_no, str(exc)) from None
        has_columns = width
        try:
            stamps.append(stamp)
        except OverflowError:
            raise DataFormatError(path, line_no, f"timestamp out of the int64 range: {fields[3].strip()!r}") from None
        users.add(user)
        items.add(item)
        ratings.append(rating)
    if not ratings:
        raise DataFormatError(path, None, "no ratings found (the file is empty or holds only a header)")
    return RawRatings.from_codes(
        *users.sorted(), *items.sorted(),
        np.asarray(ratings, dtype=np.float32), np.frombuffer(stamps, dtype=np.int64),
        fingerprint, str(path), implicit=has_columns == 2 or columns == CLICKS,
    )  # fmt: skip


class _Codes:
    """Ids seen so far as int32 codes in first-seen order (4 bytes a row, one ``str`` per distinct id)."""

    def __init__(self) -> None:
        self.position: dict[str, int] = {}
        self.codes = array("i")

    def add(self, raw_id: str) -> None:
        self.codes.append(self.position.setdefault(raw_id, len(self.position)))

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        return sorted_vocab(np.frombuffer(self.codes, dtype=np.int32), list(self.position))


def _text_lines(path: Path):
    """``(line number, decoded line without "\r\n")`` for every line, streamed; a BOM is dropped."""
    try:
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                if line_no == 1 and raw.startswith(columnar.BOM):
                    raw = raw[len(columnar.BOM) :]
                try:
                    yield line_no, raw.rstrip(b"\n").decode("utf-8").rstrip("\r")
                except UnicodeDecodeError as exc:
                    raise DataFormatError(path, line_no, f"not valid UTF-8 (byte {exc.start})") from None
    except OSError as exc:
        raise DataFormatError(path, None, f"cannot read file: {exc.strerror or exc}") from exc


def _header_columns(line: str, spec: FileFormat, path: Path, line_no: int) -> tuple[str, ...] | None:
    """The columns the first line names when it is a header (:func:`_header_layout`), None when it is data;
    for ``ml-csv`` it must be exactly the MovieLens one."""
    try:
        fields = spec.split(line)
    except ValueError as exc:
        raise DataFormatError(path, line_no, str(exc)) from None
    if spec.header is True:
        if [f.strip() for f in fields] != ML_CSV_HEADER and spec.name == "ml-csv":
            raise DataFormatError(path, line_no, f"expected the header {','.join(ML_CSV_HEADER)}")
        return _header_layout(fields, path, line_no)
    if spec.header is False:
        return None
    # Detect, explicitly: a header's first field is a column name (COLUMN_NAMES; a user name, or another column's
    # in the wrong place, which _header_layout then refuses by name). A first line whose rating is not a number
    # but whose first field is no such name is a bad data line, not a header.
    named = fields[0].strip().lower() in _COLUMN_OF_NAME
    if len(fields) >= 3 and not _is_number(fields[2]) and not named:
        words = ", ".join(sorted(HEADER_USER_WORDS))
        raise DataFormatError(path, line_no, f"rating is not a number: {fields[2].strip()!r} (not a header either: "
                                             f"a header's first column is named one of {words})")  # fmt: skip
    header = named and (len(fields) < 3 or not _is_number(fields[2]))
    return _header_layout(fields, path, line_no) if header else None


HEADER_USER_WORDS = frozenset(columnar.COLUMN_NAMES["user"])
_COLUMN_OF_NAME = {name: column for column, names in columnar.COLUMN_NAMES.items() for name in names}
ORDER = tuple(columnar.COLUMN_NAMES)  # user, item, rating, timestamp: how text columns are read
CLICKS = ("user", "item", "timestamp")  # interactions with times and no rating, named so by a header


def _header_layout(fields: list[str], path: Path, line_no: int) -> tuple[str, ...]:
    """The columns a header names: text columns are read by position (:data:`ORDER`), and a header that names
    a known column elsewhere (rating and timestamp swapped) is refused, not read as another one; names the
    readers do not know (``value``, ``stamp``) are taken as the column at their place. The one other layout
    is :data:`CLICKS`, ``user,item,timestamp``: implicit interactions with their times."""
    known = [_COLUMN_OF_NAME.get(field.strip().lower()) for field in fields]
    if tuple(known) == CLICKS:
        return CLICKS
    for k, column in enumerate(known):
        if column is not None and (k >= len(ORDER) or column != ORDER[k]):
            expected = ORDER[k] if k < len(ORDER) else "nothing"
            raise DataFormatError(path, line_no, f"column {k + 1} is named {fields[k].strip()!r} but would be read "
                                                 f"as {expected}: text columns go in the order {', '.join(ORDER)}, "
                                                 "or user, item, timestamp (Parquet's go by name)")  # fmt: skip
    return ORDER[: len(fields)]
