"""The fast readers: delimited text through ``pyarrow.csv`` and Parquet, straight to int32 id codes.

Ids are read as ``dictionary<int32, string>`` columns, so a 20M-row file costs one Python ``str`` per
distinct id (stripped and sorted once, :func:`model.raw.sorted_vocab`) and no Python object per row.

:func:`read_delimited` only succeeds on input the line-by-line reader in ``model.data`` would accept with
the same result; it returns ``None`` whenever it cannot promise that (a conversion error, a ragged line,
an id that is empty or too long after stripping, a NaN rating, a lone ``\\r``...), and the caller then
runs the line-by-line reader, which names the offending line. Parquet has no lines: its errors name the
column (and row) directly.
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from model.files import atomic_write
from model.raw import MAX_ID_LENGTH, DataFormatError, DataWarning, RawRatings, vocab_remap

BOM = b"\xef\xbb\xbf"
PARQUET_MAGIC = b"PAR1"
ID_TYPE = pa.dictionary(pa.int32(), pa.string())
# The names each column goes by, compared case-insensitively: Parquet's columns are found by them, and a text
# header is read by them (MovieLens ``userId,movieId,rating,timestamp``, generic ``user_id,item_id,rating,timestamp``,
# a play log's ``customer_id,product_id,ts``). A name outside the table is read by its place (text) or not at all
# (Parquet, with a warning): a click log's ``time`` read as its ratings trained a rating model on epoch seconds.
COLUMN_NAMES = {
    "user": ("user", "user_id", "userid", "uid", "customer", "customer_id", "customerid", "visitor_id"),
    "item": (
        "item",
        "item_id",
        "itemid",
        "iid",
        "movie",
        "movie_id",
        "movieid",
        "product",
        "product_id",
        "productid",
        "sku",
        "track_id",
        "article_id",
    ),  # fmt: skip
    "rating": ("rating", "score", "stars", "preference"),
    "timestamp": (
        "timestamp",
        "time",
        "ts",
        "datetime",
        "date",
        "event_time",
        "event_timestamp",
        "unix_time",
        "unixtime",
        "created_at",
        "when",
    ),  # fmt: skip
}
_INT64_LIMIT = 2.0**63  # float64 timestamps at or past this do not fit int64
_CHUNK = 8 << 20


@dataclass(frozen=True)
class FileScan:
    """What one streaming pass over the bytes tells: fingerprint, the first non-blank line, line ends."""

    fingerprint: str  # "sha256:" + hex digest of the bytes after any BOM
    first_line: str | None  # decoded, "\r" stripped; None when not found in the first chunk (or not UTF-8)
    first_line_no: int
    lone_cr: bool  # a "\r" not followed by "\n": pyarrow ends a line there, the line reader does not
    parquet: bool
    parquet_head: bool = False  # begins like Parquet (its magic, then binary); without ``parquet``: truncated
    compressed: str | None = None  # "gzip", "zip"...: a compressed file, read as text it was "not valid UTF-8"


# What compressed files begin with (their magic numbers; each holds a byte no UTF-8 text file begins with, unlike
# bzip2's "BZh"): refused by name, not as undecodable text.
COMPRESSED = {b"\x1f\x8b": "gzip", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip"}


def scan_file(path: Path) -> FileScan:
    """Hash the file in chunks (never all of it in memory) and look at its head and line ends."""
    digest, head, prev_cr, cr, crlf = hashlib.sha256(), b"", False, 0, 0
    try:
        with open(path, "rb") as f:
            chunk = f.read(_CHUNK)
            # Parquet's first page header follows its magic: a binary byte (thrift), never printable text.
            text_after = len(chunk) > 4 and (32 <= chunk[4] < 127 or chunk[4] in b"\t\r\n")
            parquet_head = chunk.startswith(PARQUET_MAGIC) and len(chunk) > 4 and not text_after
            parquet = parquet_head and _ends_with_magic(f)
            compressed = next((name for magic, name in COMPRESSED.items() if chunk.startswith(magic)), None)
            if chunk.startswith(BOM):
                chunk = chunk[len(BOM) :]
            head = chunk[: 1 << 16]
            while chunk:
                digest.update(chunk)
                here = chunk.count(b"\r")
                if here or prev_cr:  # most files have no "\r" at all: one pass then
                    cr += here
                    crlf += chunk.count(b"\r\n") + (prev_cr and chunk.startswith(b"\n"))
                prev_cr = chunk.endswith(b"\r")
                chunk = f.read(_CHUNK)
    except OSError as exc:
        raise DataFormatError(path, None, f"cannot read file: {exc.strerror or exc}") from exc
    lone_cr = cr != crlf
    first_line, first_line_no = _first_line(head)
    return FileScan("sha256:" + digest.hexdigest(), first_line, first_line_no, lone_cr, parquet, parquet_head,
                    compressed)  # fmt: skip


def _ends_with_magic(f) -> bool:
    pos = f.tell()
    f.seek(-len(PARQUET_MAGIC), 2)
    tail = f.read(len(PARQUET_MAGIC))
    f.seek(pos)
    return tail == PARQUET_MAGIC


def _first_line(head: bytes) -> tuple[str | None, int]:
    """The first non-blank line among the complete lines of ``head``, and its 1-based number."""
    for line_no, raw in enumerate(head.split(b"\n")[:-1], start=1):
        try:
            line = raw.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            return None, line_no
        if line.strip():
            return line, line_no
    return None, 0


def read_delimited(
    path: Path, scan: FileScan, delimiter: str, names: list[str], skip_rows: int, implicit: bool, quoted: bool = False
) -> RawRatings | None:
    """Read a text file whose layout the caller already settled; ``None`` when it cannot vouch for it.

    Args:
        delimiter: one character (``"::"`` files are read with ``":"`` and ``names`` holding the empty
            columns in between, named ``_gap...``).
        names: column names in order: ``user``, ``item``, optional ``rating``, ``timestamp``, gaps.
        skip_rows: 1 to skip a header on the first line, else 0.
        quoted: RFC 4180 quotes (``model.data.FileFormat.quoted``); a quoted field may not span lines.
    """
    types = {n: ID_TYPE if n in ("user", "item") or n.startswith("_gap") else pa.float64() for n in names}
    table = None
    # Times as numbers, else as ISO 8601 throughout the file: all without a zone (UTC, as the line reader reads
    # them), or all with one. Anything else (a mix, fractions of a second) is the line reader's.
    for stamp_type in (
        pa.float64(),
        *([pa.timestamp("s"), pa.timestamp("s", tz="UTC")] if "timestamp" in names else []),
    ):
        try:
            table = pa_csv.read_csv(
                path,
                read_options=pa_csv.ReadOptions(column_names=names, skip_rows=skip_rows, block_size=16 << 20),
                parse_options=pa_csv.ParseOptions(
                    delimiter=delimiter,
                    quote_char='"' if quoted else False,
                    double_quote=True,
                    escape_char=False,
                    newlines_in_values=False,
                    ignore_empty_lines=True,
                ),
                convert_options=pa_csv.ConvertOptions(
                    column_types={**types, "timestamp": stamp_type} if "timestamp" in names else types,
                    null_values=[],
                    strings_can_be_null=False,
                    quoted_strings_can_be_null=False,
                ),
            )
            break
        except pa.ArrowInvalid as exc:
            # Another type for the times helps only when they were the column that failed: a bad rating would
            # otherwise have the whole file parsed three times before the line reader names its line.
            if "timestamp" not in names or f"column #{names.index('timestamp')}:" not in str(exc):
                break
        except UnicodeDecodeError:
            break
    if table is None:
        return None
    table = _times_in_seconds(table)
    if table.num_rows == 0 or any(_has_text(table.column(n)) for n in names if n.startswith("_gap")):
        return None
    n, columns = table.num_rows, _columns(table)
    del table  # the columns are freed one by one as they are converted
    raw = _from_columns(columns, n, scan.fingerprint, str(path), implicit)
    pa.default_memory_pool().release_unused()  # hand the freed table back to the OS before training starts
    return raw


def _columns(table: pa.Table) -> dict[str, pa.ChunkedArray]:
    return {name: table.column(name) for name in table.column_names if not name.startswith("_gap")}


def _has_text(column: pa.ChunkedArray) -> bool:
    return any(len(s) for chunk in column.chunks for s in chunk.dictionary.to_pylist())


def _from_columns(
    columns: dict[str, pa.ChunkedArray], n: int, fingerprint: str, source: str, implicit: bool
) -> RawRatings | None:
    """Codes, ratings and timestamps out of ``user``/``item`` dictionary columns and optional numeric
    ``rating``/``timestamp`` ones; ``None`` if a value is bad.

    Pops each column out of ``columns`` and converts it chunk by chunk, so its memory is released as the
    arrays are filled (when the caller holds no other reference to the table)."""
    user = _codes(columns.pop("user"))
    item = _codes(columns.pop("item")) if user is not None else None
    ratings = np.ones(n, np.float32)
    timestamps = np.zeros(n, np.int64)
    ok = item is not None
    if ok and "rating" in columns:
        ok = _convert(columns.pop("rating"), ratings, np.inf)
    if ok and "timestamp" in columns:
        ok = _convert(columns.pop("timestamp"), timestamps, _INT64_LIMIT)  # truncates like int(float(x))
    return RawRatings.from_codes(*user, *item, ratings, timestamps, fingerprint, source, implicit) if ok else None


def _convert(column: pa.ChunkedArray, out: np.ndarray, limit: float) -> bool:
    """Fill ``out`` (n,) from a numeric column chunk by chunk; False on a null, or a float not < ``limit``
    in magnitude (NaN included). Integers are copied as they are (no detour through float64)."""
    if column.null_count:
        return False
    start = 0
    for chunk in column.chunks:
        values = chunk.to_numpy(zero_copy_only=False)
        if values.dtype.kind == "u" and values.size and values.max() >= _INT64_LIMIT:
            return False
        if values.dtype.kind == "f" and not (np.abs(values) < limit).all():
            return False
        out[start : start + len(values)] = values
        start += len(values)
    return True


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    """Shape (n,), float64, NaN where null (so the finiteness check refuses nulls too)."""
    return pc.fill_null(column.cast(pa.float64()), float("nan")).to_numpy()


def _codes(column: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray] | None:
    """(int32 codes into the sorted stripped vocabulary, vocabulary) of a dictionary column, or ``None``
    if an id is empty or longer than :data:`MAX_ID_LENGTH` after stripping (or null)."""
    if column.null_count:
        return None
    column = column.unify_dictionaries() if column.num_chunks > 1 else column
    dictionary = column.chunks[0].dictionary.to_pylist() if column.num_chunks else []
    stripped = [s.strip() for s in dictionary]
    if any(not s or len(s) > MAX_ID_LENGTH for s in stripped):
        return None
    remap, vocab = vocab_remap(stripped)
    out = np.empty(len(column), np.int32)
    start = 0
    for chunk in column.chunks:
        out[start : start + len(chunk)] = remap[chunk.indices.to_numpy(zero_copy_only=False)]
        start += len(chunk)
    return out, vocab


def read_parquet(path: Path, scan: FileScan) -> RawRatings:
    """Read a Parquet file with a user and an item column, optionally rating and timestamp (names in
    :data:`COLUMN_NAMES`, any case). Ids may be integers or strings; they become ``str``.

    Raises:
        DataFormatError: a required column missing, a column of the wrong type, or a bad value (its row).
    """
    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataFormatError(path, None, f"cannot read Parquet: {exc}") from exc
    chosen = _parquet_columns(path, schema)
    table = pq.read_table(path, columns=list(chosen.values()))
    table = table.rename_columns(list(chosen))
    # A rating or time column found under another of its names (``ts``, ``score``...) that cannot be one (text,
    # or with missing values) is not read, with the rest: such files loaded before those names were known.
    skipped: list[str] = []
    for name in ("rating", "timestamp"):
        column = table.column(name) if name in chosen else None
        if (
            column is not None
            and chosen[name].lower() != name
            and (column.null_count or not (_numeric(column.type) or _temporal(column.type)))
        ):
            table, not_read = table.drop_columns([name]), chosen.pop(name)
            skipped.append(not_read)
            warnings.warn(f"{path}: column {not_read!r} not read as the {name}: it holds text or missing values",
                          DataWarning, stacklevel=3)  # fmt: skip
    unread = [n for n in schema.names if n not in (*chosen.values(), *skipped) and not n.startswith("__index_level_")]
    if unread:  # a rating or time column under another name would otherwise vanish: the data read as implicit
        warnings.warn(f"{path}: columns not read: {', '.join(unread)} (a rating column is named one of "
                      f"{', '.join(COLUMN_NAMES['rating'])}; a time column one of "
                      f"{', '.join(COLUMN_NAMES['timestamp'])}; any case)", DataWarning, stacklevel=3)  # fmt: skip
    if table.num_rows == 0:
        raise DataFormatError(path, None, "no ratings found (the file holds no rows)")
    for name in ("user", "item"):
        column = _id_column(path, chosen[name], table.column(name))
        table = table.set_column(table.column_names.index(name), name, column)
    table = _times_in_seconds(table)  # Parquet's own timestamp or date type
    for name in ("rating", "timestamp"):
        if name in chosen and not _numeric(table.schema.field(name).type):
            kind = table.schema.field(name).type
            raise DataFormatError(path, None, f"column {chosen[name]!r} ({name}) must be numeric, got {kind}")
    raw = _from_columns(_columns(table), table.num_rows, scan.fingerprint, str(path), "rating" not in chosen)
    if raw is None:
        raise DataFormatError(path, None, _parquet_problem(table, chosen))
    return raw


def _parquet_columns(path: Path, schema: pa.Schema) -> dict[str, str]:
    """Our column name -> the file's column name; ``user`` and ``item`` are required."""
    by_lower = {name.lower(): name for name in schema.names}
    chosen = {}
    for ours, accepted in COLUMN_NAMES.items():
        found = next((by_lower[a] for a in accepted if a in by_lower), None)
        if found is not None:
            chosen[ours] = found
        elif ours in ("user", "item"):
            raise DataFormatError(
                path,
                None,
                f"no {ours} column: expected one of {', '.join(accepted)} (any case); "
                f"the file has {', '.join(schema.names) or 'no columns'}",
            )
    return chosen  # without a rating: implicit interactions, with their times when there is a timestamp


def _numeric(kind: pa.DataType) -> bool:
    return pa.types.is_integer(kind) or pa.types.is_floating(kind)


def _temporal(kind: pa.DataType) -> bool:
    return pa.types.is_timestamp(kind) or pa.types.is_date(kind)


def _times_in_seconds(table: pa.Table) -> pa.Table:
    """``table`` with a ``timestamp`` column of a time or date type (Parquet's own, or ISO 8601 text parsed by the CSV
    reader) as int64 seconds since the epoch; any other table unchanged."""
    if "timestamp" not in table.column_names or not _temporal(table.schema.field("timestamp").type):
        return table
    return table.set_column(table.column_names.index("timestamp"), "timestamp", _epoch_seconds(table["timestamp"]))


def _epoch_seconds(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """A timestamp or date column as int64 seconds since the epoch (UTC), sub-second parts dropped: what a
    numeric timestamp column holds (only the order within each user matters)."""
    kind = column.type
    seconds = pa.timestamp("s", tz=kind.tz if pa.types.is_timestamp(kind) else None)
    return pc.cast(column, seconds, safe=False).cast(pa.int64())


def _id_column(path: Path, label: str, column: pa.ChunkedArray) -> pa.ChunkedArray:
    """Dictionary-encode first (cheap on ints), then turn only the distinct values into strings."""
    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = kind.value_type
    if not (pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataFormatError(path, None, f"column {label!r} (an id) must be integer or string, got {kind}")
    encoded = pc.dictionary_encode(column)
    chunks = [
        pa.DictionaryArray.from_arrays(chunk.indices.cast(pa.int32()), chunk.dictionary.cast(pa.string()))
        for chunk in encoded.chunks
    ]
    return pa.chunked_array(chunks, type=ID_TYPE)


def _parquet_problem(table: pa.Table, chosen: dict[str, str]) -> str:
    """The first bad value, named by column and row, for a table :func:`_from_columns` refused."""
    for name in ("user", "item"):
        column = table.column(name)
        for row, value in enumerate(column.to_pylist()):
            text = None if value is None else value.strip()
            if not text:
                return f"column {chosen[name]!r} row {row}: empty or missing {name} id"
            if len(text) > MAX_ID_LENGTH:
                return f"column {chosen[name]!r} row {row}: {name} id longer than {MAX_ID_LENGTH} characters"
    for name, limit in (("rating", np.inf), ("timestamp", _INT64_LIMIT)):
        if name in chosen:
            values = _floats(table.column(name))
            bad = np.flatnonzero(~(np.abs(values) < limit))
            if len(bad):
                return f"column {chosen[name]!r} row {bad[0]}: {name} is missing, not finite or too large"
    return "a value could not be read"


def write_table(table: pa.Table, path: str | Path) -> Path:
    """Write a rating table as the readers read it back: Parquet for a ``.parquet`` name (any case), else CSV with
    a plain header line (the column names; pyarrow would quote them) and values quoted where they must be (an id
    holding a comma). Written to a temporary name and renamed in (:func:`model.files.atomic_write`)."""
    path = Path(path)

    def write(tmp: str) -> None:
        if path.suffix.lower() == ".parquet":
            pq.write_table(table, tmp)
        else:
            with open(tmp, "wb") as f:
                f.write((",".join(table.column_names) + "\n").encode())
                pa_csv.write_csv(table, f, pa_csv.WriteOptions(include_header=False, quoting_style="needed"))

    return atomic_write(path, write)
