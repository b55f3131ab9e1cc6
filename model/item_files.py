"""Reading item metadata files into :class:`model.items.ItemAttributes` (``scripts/train.py --items FILE``).

Formats (detected from the bytes):

- MovieLens ``movies.csv`` (header ``movieId,title,genres``): ``title``, ``genres`` (a list, ``|``-separated;
  ``(no genres listed)`` is none) and ``year`` (an int, from the title's trailing ``(1995)``);
- MovieLens 1M/10M ``movies.dat`` (``id::title::genres``, latin-1): the same three;
- MovieLens 100k ``u.item`` (``|``-separated, latin-1, 19 genre flags): ``title``, ``year`` (from the release
  date) and ``genres`` (the flagged ones; ``unknown`` is none);
- any other CSV or TSV with a header: the first column is the item id, every other column an attribute. A
  column where some value holds ``|`` is a list (values split on ``|``), a column of integers is an ``int``,
  anything else a ``str``. Empty cells are no value;
- Parquet: the first column is the item id; list columns are lists, integer columns ints, others strings.

A malformed file raises ``DataFormatError`` (``FILE:LINE: reason``) and nothing is returned half-read.
Rows of items the model does not know are dropped (counted); the model's items without a row have no values.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from model.items import (
    MAX_ATTRIBUTES,
    MAX_VALUE_LENGTH,
    MAX_VALUES_PER_ITEM,
    ItemAttributes,
    build,
    canonical,
    name_error,
)
from model.raw import MAX_ID_LENGTH, DataFormatError

ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRES = {"unknown", "(no genres listed)"}
MOVIELENS_NAMES, MOVIELENS_KINDS = ("title", "year", "genres"), ("str", "int", "list")
YEAR_IN_TITLE = re.compile(r"\((\d{4})\)\s*$")
INTEGER = re.compile(r"[+-]?\d{1,18}")


@dataclass
class ItemTable:
    """A metadata file as read: attribute names and kinds, and each row's values (lists of strings)."""

    path: str
    names: list[str]
    kinds: list[str]
    rows: dict[str, list[list[str]]] = field(default_factory=dict)  # item id -> values per attribute
    lines: dict[str, int] = field(default_factory=dict)  # item id -> its line (for duplicates)

    def add(self, line: int, item_id: str, values: list[list[str]]) -> None:
        if not item_id:
            raise DataFormatError(self.path, line, "empty item id")
        if len(item_id) > MAX_ID_LENGTH:
            raise DataFormatError(self.path, line, f"item id longer than {MAX_ID_LENGTH} characters")
        if item_id in self.rows:
            raise DataFormatError(self.path, line, f"item {item_id!r} already described on line {self.lines[item_id]}")
        for name, kind, vals in zip(self.names, self.kinds, values):
            if len(vals) > MAX_VALUES_PER_ITEM:
                raise DataFormatError(self.path, line, f"{name}: more than {MAX_VALUES_PER_ITEM} values")
            if any(len(v) > MAX_VALUE_LENGTH for v in vals):
                raise DataFormatError(self.path, line, f"{name}: a value longer than {MAX_VALUE_LENGTH} characters")
            if kind == "int" and vals and canonical("int", vals[0]) is None:
                raise DataFormatError(self.path, line, f"{name}: {vals[0]!r} is not an integer")
        self.rows[item_id], self.lines[item_id] = values, line

    @classmethod
    def of_model(cls, attrs: ItemAttributes, item_ids: Sequence[str], source: str) -> ItemTable:
        """The table a model's stored attributes came from, for the items it describes (``item_ids``: the model's,
        in index order): what a retrain keeps when no file is named."""
        table = cls(source, [a.name for a in attrs.attributes], [a.kind for a in attrs.attributes])
        for idx, item in enumerate(item_ids):
            values = [[a.vocab[c] for c in a.values[a.indptr[idx] : a.indptr[idx + 1]]] for a in attrs.attributes]
            if any(values):
                table.rows[item] = values
        return table

    def align(self, item_ids: Sequence[str]) -> ItemAttributes:
        """The attributes of the model's items (``item_ids``, in index order); rows of other items are dropped."""
        position = {item: idx for idx, item in enumerate(item_ids)}
        rows = {position[item]: values for item, values in self.rows.items() if item in position}
        return build(self.names, self.kinds, rows, len(item_ids))

    def summary(self, item_ids: Sequence[str]) -> str:
        """One line for the training log: what was read and how much of the model it describes."""
        described = sum(item in self.rows for item in item_ids)
        return (f"items: {self.path}: {len(self.rows)} rows, attributes {', '.join(self.names)}; "
                f"{described} of the model's {len(item_ids)} items described")  # fmt: skip


def read_items(path: str | Path) -> ItemTable:
    """Read a metadata file (format detected; see the module docstring)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataFormatError(path, None, f"cannot read: {exc.strerror or exc}") from None
    if data.startswith(b"PAR1"):
        return _read_parquet(path)
    first = data.split(b"\n", 1)[0].decode("utf-8", errors="replace").lstrip("\ufeff").strip()
    if "::" in first:
        return _read_movielens(path, _decode(path, data, "latin-1"), "::", _movies_dat_row)
    flags = first.split("|")[5:]
    if len(flags) == len(ML100K_GENRES) and set(flags) <= {"0", "1"}:
        return _read_movielens(path, _decode(path, data, "latin-1"), "|", _u_item_row)
    text = _decode(path, data, "utf-8").lstrip("\ufeff")
    if first.lower() == "movieid,title,genres":
        table = ItemTable(str(path), list(MOVIELENS_NAMES), list(MOVIELENS_KINDS))
        for line, cells in _csv_rows(path, text, ",", skip_header=True):
            _check_width(path, line, cells, 3)
            table.add(line, cells[0].strip(), _movielens_values(cells[1], cells[2].split("|")))
        return table
    return _read_generic(path, text, "\t" if "\t" in first else ",")


def _decode(path: Path, data: bytes, encoding: str) -> str:
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        raise DataFormatError(path, data[: exc.start].count(b"\n") + 1, f"not {encoding} text") from None


def _check_width(path: Path, line: int, cells: list[str], width: int) -> None:
    if len(cells) != width:
        raise DataFormatError(path, line, f"expected {width} fields, got {len(cells)}")


def _movielens_values(title: str, genres: list[str]) -> list[list[str]]:
    title = title.strip()
    year = YEAR_IN_TITLE.search(title)
    genres = [g.strip() for g in genres if g.strip() and g.strip() not in NO_GENRES]
    return [[title] if title else [], [year.group(1)] if year else [], genres]


def _movies_dat_row(path: Path, line: int, cells: list[str]) -> tuple[str, list[list[str]]]:
    _check_width(path, line, cells, 3)
    return cells[0].strip(), _movielens_values(cells[1], cells[2].split("|"))


def _u_item_row(path: Path, line: int, cells: list[str]) -> tuple[str, list[list[str]]]:
    _check_width(path, line, cells, 5 + len(ML100K_GENRES))
    flags = cells[5:]
    if not set(flags) <= {"0", "1"}:
        raise DataFormatError(path, line, "genre flags must be 0 or 1")
    genres = [g for g, flag in zip(ML100K_GENRES, flags) if flag == "1"]
    values = _movielens_values(cells[1], genres)
    date = cells[2].strip()  # 01-Jan-1995
    values[1] = [date[-4:]] if re.fullmatch(r"\d{2}-\w{3}-\d{4}", date) else []
    return cells[0].strip(), values


def _read_movielens(path: Path, text: str, sep: str, parse) -> ItemTable:
    table = ItemTable(str(path), list(MOVIELENS_NAMES), list(MOVIELENS_KINDS))
    for line, raw in enumerate(text.splitlines(), start=1):
        if raw.strip():
            table.add(line, *parse(path, line, raw.rstrip("\r").split(sep)))
    return table


def _csv_rows(path: Path, text: str, delimiter: str, skip_header: bool = False):
    """(first line of the record, cells) for every non-empty record; csv errors name their line."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    line = 1
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1
            if skip_header and start == 1:
                continue
            if cells and any(c.strip() for c in cells):
                yield start, cells
    except csv.Error as exc:
        raise DataFormatError(path, reader.line_num, f"malformed CSV: {exc}") from None


def _read_generic(path: Path, text: str, delimiter: str) -> ItemTable:
    records = list(_csv_rows(path, text, delimiter))
    if not records:
        raise DataFormatError(path, 1, "empty file: expected a header (item id, then attribute names)")
    (_, header), body = records[0], records[1:]
    names = [h.strip().lstrip("\ufeff") for h in header[1:]]
    if not names or len(names) > MAX_ATTRIBUTES:
        raise DataFormatError(path, 1, f"the header must name 1 to {MAX_ATTRIBUTES} attribute columns")
    for name in names:
        if name_error(name) or names.count(name) > 1:
            raise DataFormatError(path, 1, name_error(name) or f"column {name!r} appears twice")
    for line, cells in body:
        _check_width(path, line, cells, len(header))
    columns = [[cells[a + 1].strip() for _, cells in body] for a in range(len(names))]
    kinds = [_column_kind(col) for col in columns]
    table = ItemTable(str(path), names, kinds)
    for r, (line, cells) in enumerate(body):
        values = []
        for kind, col in zip(kinds, columns):
            cell = col[r]
            parts = [p.strip() for p in cell.split("|")] if kind == "list" else [canonical(kind, cell) or cell]
            values.append([p for p in parts if p])
        table.add(line, cells[0].strip(), values)
    return table


def _column_kind(cells: list[str]) -> str:
    if any("|" in c for c in cells):
        return "list"
    present = [c for c in cells if c]
    return "int" if present and all(INTEGER.fullmatch(c) for c in present) else "str"


def _read_parquet(path: Path) -> ItemTable:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        tbl = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable Parquet is a refusal naming the file
        raise DataFormatError(path, None, f"not readable as Parquet ({type(exc).__name__}: {exc})") from None
    if tbl.num_columns < 2 or tbl.num_columns > MAX_ATTRIBUTES + 1:
        raise DataFormatError(path, None, f"expected an item id column and 1 to {MAX_ATTRIBUTES} attribute columns")
    names = tbl.column_names[1:]
    for name in names:
        if name_error(name):
            raise DataFormatError(path, None, name_error(name))
    kinds = []
    for col in tbl.columns[1:]:
        kind = "list" if pa.types.is_list(col.type) or pa.types.is_large_list(col.type) else "str"
        kinds.append("int" if pa.types.is_integer(col.type) else kind)
    table = ItemTable(str(path), list(names), kinds)
    ids = tbl.column(0).to_pylist()
    columns = [c.to_pylist() for c in tbl.columns[1:]]
    for row, item in enumerate(ids):
        if item is None:
            raise DataFormatError(path, None, f"row {row + 1}: null item id")
        values = []
        for kind, col in zip(kinds, columns):
            cell = col[row]
            cells = [] if cell is None else cell if kind == "list" else [cell]
            values.append([str(v).strip() for v in cells if v is not None and str(v).strip()])
        try:
            table.add(row + 1, str(item), values)
        except DataFormatError as exc:
            raise DataFormatError(path, None, f"row {row + 1}: {exc.reason}") from None
    return table
