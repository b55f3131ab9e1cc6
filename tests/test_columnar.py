"""The columnar reader (pyarrow) against the line-by-line one: same rows, same id maps; Parquet input;
errors deep in a large file still name the line."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model import columnar, data
from model.data import DataFormatError, load_ratings
from model.idmap import IdMap
from model.interactions import build_dataset
from model.raw import DataWarning
from tests.conftest import write_lines

UNICODE = ["é", "Z", "a", "ß", "日本", "A", "ä", "z"]


def _cases() -> list[tuple[str, list[str] | bytes, str]]:
    """(file name, content, format) pairs: varied ids, headers, widths and formats."""
    rng = np.random.default_rng(0)
    numeric = [str(x) for x in rng.permutation(60)] + ["010", "1e3", "-4", "9.0"]
    rows = [(numeric[k % len(numeric)], UNICODE[k % len(UNICODE)], 0.5 + (k % 10) / 2, 10**9 + k) for k in range(97)]
    return [
        ("u.data", [f"{u}\t{i}\t{r:g}\t{t}" for u, i, r, t in rows], "ml-100k"),
        ("ratings.dat", [f"{u}::{i}::{r:g}::{t}" for u, i, r, t in rows], "ml-dat"),
        ("ratings.csv", ["userId,movieId,rating,timestamp"] + [f"{u},{i},{r},{t}" for u, i, r, t in rows], "ml-csv"),
        ("plain.csv", [f"{i},{u},{r}" for u, i, r, _ in rows], "csv"),
        ("header.csv", ["user,item,rating,ts"] + [f"{u},{i},{r},{t}.75" for u, i, r, t in rows], "csv"),
        ("clicks.csv", ["user,item"] + [f"{u},{i}" for u, i, _, _ in rows], "csv"),
        ("noheader2.csv", [f"{u},{i}" for u, i, _, _ in rows], "csv"),
        ("spaces.csv", [f" {u} ,  {i}  , {r} , {t} " for u, i, r, t in rows] + ["0,é,1,1"], "csv"),
        ("plain.tsv", ["user_id\titem_id\trating"] + [f"{u}\t{i}\t{r}" for u, i, r, _ in rows], "tsv"),
        ("bom.csv", "\ufeffuser,item,rating\r\n3,b,4\r\n\r\n1,a,2\r\n2,a,1.5e0\n".encode(), "csv"),
        ("floats.csv", ["user,item,rating,timestamp", "1,2,3,1.5e9", "1,3,2,-7.9", "2,2,1,1234567.999"], "csv"),
        # R's write.csv / pandas quoting: quoted header and ids, a delimiter and a doubled quote inside one.
        ("quoted.csv", ['"user","item","rating"', '"u,1","i1",4', '"u2","say ""hi""",3.5', 'u3,"i1","2"'], "csv"),
        ("quoted.tsv", ['"user_id"\t"item_id"', '"a\tb"\t"i1"', 'c\t"i2"'], "tsv"),
        # ISO 8601 times, all without a zone (UTC) or all with one: the columnar reader takes both.
        (
            "iso.csv",
            ["user,item,rating,timestamp"]
            + [f"{u},{i},{r},2020-01-{1 + t % 28:02d}T0{t % 10}:00:00" for u, i, r, t in rows],
            "csv",
        ),  # fmt: skip
        ("isodates.csv", ["user,item,timestamp"] + [f"{u},{i},1997-12-{1 + t % 28:02d}" for u, i, _, t in rows], "csv"),
        (
            "isozoned.csv",
            ["user,item,rating,timestamp"]
            + [f"{u},{i},{r},2020-01-01T00:00:{t % 60:02d}{'Z' if t % 2 else '+01:00'}" for u, i, r, t in rows],
            "csv",
        ),  # fmt: skip
    ]


@pytest.mark.parametrize(("name", "content", "fmt"), _cases(), ids=[c[0] for c in _cases()])
def test_columnar_reader_matches_the_line_reader(tmp_path, name, content, fmt):
    path = write_lines(tmp_path / name, content)
    for forced in ("auto", fmt):
        scan = columnar.scan_file(path)
        fast = data._read_columnar(path, forced, scan)
        assert fast is not None, "the columnar reader should take this file"
        slow = load_ratings(path, forced, fast=False)
        for attr in ("user_codes", "item_codes", "ratings", "timestamps"):
            got, want = getattr(fast, attr), getattr(slow, attr)
            assert got.dtype == want.dtype and np.array_equal(got, want), attr
        assert fast.user_vocab.tolist() == slow.user_vocab.tolist()
        assert fast.item_vocab.tolist() == slow.item_vocab.tolist()
        assert (fast.fingerprint, fast.source, fast.implicit) == (slow.fingerprint, slow.source, slow.implicit)


@pytest.mark.parametrize(("name", "content", "fmt"), _cases()[:4], ids=[c[0] for c in _cases()[:4]])
def test_id_maps_equal_the_ones_fit_on_raw_strings(tmp_path, name, content, fmt):
    """What ``build_dataset`` did before codes: ``IdMap.fit`` over the per-row strings."""
    raw = load_ratings(write_lines(tmp_path / name, content))
    ds = build_dataset(raw)
    user_map, user_idx = IdMap.fit(raw.user_ids)
    item_map, item_idx = IdMap.fit(raw.item_ids)
    assert ds.user_map.ids == user_map.ids and ds.item_map.ids == item_map.ids
    assert np.array_equal(ds.interactions.user_idx, user_idx)
    assert np.array_equal(ds.interactions.item_idx, item_idx)


@pytest.mark.parametrize(
    "content",
    [
        ["1,a,3", "   ", "2,b,4"],  # a blank line of spaces: one pyarrow column, skipped by the line reader
        ["", "1,a,3", "2,b,4"],  # a leading blank line
        ["a:b::c::5::1", "d::e::4::2"],  # ':' inside an id of a '::' file
        ["1,a,3", "1,a,nan"],  # refused by both: the line reader names the line
    ],
)
def test_files_the_columnar_reader_leaves_to_the_line_reader(tmp_path, content):
    path = write_lines(tmp_path / "r.txt", content)
    assert data._read_columnar(path, "auto", columnar.scan_file(path)) is None
    try:
        want = load_ratings(path, fast=False)
    except DataFormatError as exc:
        with pytest.raises(DataFormatError, match=str(exc).replace("(", r"\(").replace(")", r"\)")):
            load_ratings(path)
        return
    got = load_ratings(path)
    assert got.user_ids.tolist() == want.user_ids.tolist() and got.item_ids.tolist() == want.item_ids.tolist()
    assert "a:b" in got.user_ids.tolist() or len(got) == 2


@pytest.mark.parametrize(
    ("bad_line", "reason"),
    [
        ("7,x,notanumber", "rating is not a number: 'notanumber'"),
        ("7,x", "expected 3 fields like the lines before, got 2"),
        ("7, ,3", "empty item id"),
        ("7,x,inf", "rating is not finite"),
        (f"{'u' * 300},x,3", "user id longer than 256 characters"),
        ("7,x,3,4", "expected 3 fields like the lines before, got 4"),
    ],
)
def test_a_bad_line_deep_in_a_large_file_is_named(tmp_path, bad_line, reason):
    lines = [f"{k % 1000},{k % 377},{1 + k % 5}" for k in range(200_000)]
    lines[150_000] = bad_line
    path = write_lines(tmp_path / "big.csv", lines)
    with pytest.raises(DataFormatError) as info:
        load_ratings(path)
    assert info.value.line == 150_001 and reason in str(info.value)


def test_invalid_utf8_deep_in_a_file_is_named(tmp_path):
    body = b"".join(b"%d,%d,3\n" % (k, k % 7) for k in range(50_000))
    path = write_lines(tmp_path / "bad.csv", body + b"1,\xff,3\n")
    with pytest.raises(DataFormatError, match=r"bad.csv:50001: not valid UTF-8"):
        load_ratings(path)


def test_timestamp_past_int64_is_an_error_with_its_line(tmp_path):
    path = write_lines(tmp_path / "r.csv", ["1,2,3,100", "1,3,3,1e300"])
    with pytest.raises(DataFormatError, match=r"r.csv:2: timestamp out of the int64 range"):
        load_ratings(path)


def _parquet(path, columns: dict[str, pa.Array]):
    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_reads_like_the_same_csv(tmp_path):
    users, items = [3, 1, 2, 10, 1], [20, 7, 7, 300, 20]
    ratings, stamps = [4.5, 3.0, 1.0, 5.0, 0.5], [5, 4, 3, 2, 1]
    pq_path = _parquet(
        tmp_path / "r.parquet",
        {"userId": pa.array(users, pa.int32()), "movieId": items, "rating": pa.array(ratings, pa.float32()),
         "timestamp": stamps},
    )  # fmt: skip
    rows = [",".join(map(str, row)) for row in zip(users, items, ratings, stamps)]
    csv_path = write_lines(tmp_path / "r.csv", ["userId,movieId,rating,timestamp", *rows])
    got, want = load_ratings(pq_path), load_ratings(csv_path)
    assert got.user_ids.tolist() == want.user_ids.tolist() == ["3", "1", "2", "10", "1"]
    assert got.item_ids.tolist() == want.item_ids.tolist()
    assert np.array_equal(got.ratings, want.ratings) and np.array_equal(got.timestamps, want.timestamps)
    assert got.fingerprint.startswith("sha256:") and not got.implicit
    assert build_dataset(got).user_map.ids == build_dataset(want).user_map.ids == ["1", "10", "2", "3"]


def test_parquet_string_ids_are_stripped_and_two_columns_are_implicit(tmp_path):
    path = _parquet(tmp_path / "clicks.pq", {"user_id": [" a", "a", "b "], "item_id": ["x", "y", "x"]})
    raw = load_ratings(path)
    assert raw.implicit and raw.user_ids.tolist() == ["a", "a", "b"] and raw.ratings.tolist() == [1.0] * 3


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"userId": [1, 2], "rating": [3.0, 4.0]}, "no item column: expected one of item, item_id"),
        ({"who": [1, 2], "movieId": [1, 2]}, "the file has who, movieId"),
        ({"userId": [1, 2], "movieId": [1, 2], "rating": ["good", "bad"]}, "column 'rating' (rating) must be numeric"),
        ({"userId": [1, 2], "movieId": [1, 2], "rating": [3.0, None]}, "column 'rating' row 1: rating is missing"),
        ({"userId": ["a", ""], "movieId": [1, 2]}, "column 'userId' row 1: empty or missing user id"),
        ({"userId": [1.5, 2.0], "movieId": [1, 2]}, "column 'userId' (an id) must be integer or string"),
    ],
)
def test_parquet_with_a_wrong_or_missing_column_names_it(tmp_path, columns, message):
    path = _parquet(tmp_path / "bad.parquet", columns)
    with pytest.raises(DataFormatError) as info:
        load_ratings(path)
    assert message in str(info.value) and str(info.value).startswith(f"{path}: ")


def test_quoted_fields_are_ids_without_their_quotes_and_a_quote_left_open_names_its_line(tmp_path):
    raw = load_ratings(write_lines(tmp_path / "r.csv", ['"user","item","rating"', '"u,1","i1",4', 'u2,"i ""2""",3']))
    assert raw.user_ids.tolist() == ["u,1", "u2"] and raw.item_ids.tolist() == ["i1", 'i "2"']
    with pytest.raises(DataFormatError, match=r"open.csv:3: bad quoting"):
        load_ratings(write_lines(tmp_path / "open.csv", ["u1,i1,4", "u2,i2,3", '"u3,i3,5', "u4,i4,1"]))


def test_a_truncated_parquet_file_is_named_as_one(tmp_path):
    """It was read as text and reported as a bad TSV line 2."""
    path = _parquet(tmp_path / "r.parquet", {"user_id": ["a", "b"] * 50, "item_id": list(range(100))})
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataFormatError, match="begins like a Parquet file but does not end like one"):
        load_ratings(path)
    for first in ("PAR1", "PAR100", "PAR1 "):  # ids that begin with the magic are still text
        text = write_lines(tmp_path / "par1.csv", [f"{first},i1,4", "u2,i2,3"])
        assert load_ratings(text).user_ids.tolist() == [first.strip(), "u2"]


def test_a_parquet_timestamp_or_date_column_is_read_as_epoch_seconds(tmp_path):
    """Native Parquet time types were refused ('must be numeric, got timestamp[ms]')."""
    import datetime as dt

    when = [dt.datetime(2020, 1, 1, 0, 0, 1, 500000), dt.datetime(2020, 1, 1, 0, 0, 3)]
    columns = {"user_id": ["a", "a"], "item_id": ["x", "y"], "rating": [4.0, 5.0]}
    got = load_ratings(_parquet(tmp_path / "ms.parquet", {**columns, "timestamp": pa.array(when, pa.timestamp("ms"))}))
    assert got.timestamps.tolist() == [1577836801, 1577836803]
    utc = pa.array(when, pa.timestamp("us", tz="UTC"))
    assert load_ratings(_parquet(tmp_path / "tz.parquet", {**columns, "timestamp": utc})).timestamps.tolist() == [
        1577836801, 1577836803]  # fmt: skip
    days = pa.array([dt.date(2020, 1, 2), dt.date(2020, 1, 1)], pa.date32())
    assert load_ratings(_parquet(tmp_path / "d.parquet", {**columns, "timestamp": days})).timestamps.tolist() == [
        1577923200, 1577836800]  # fmt: skip


def test_parquet_reads_rating_and_time_under_common_names_and_warns_of_columns_it_does_not_read(tmp_path):
    """Found by review: ``score`` and ``ts`` were dropped without a word and the file trained as implicit data."""
    columns = {"customer_id": ["a", "b"], "product_id": ["x", "y"], "score": [4.0, 2.0], "ts": [10, 20]}
    raw = load_ratings(_parquet(tmp_path / "named.parquet", columns))
    assert not raw.implicit and raw.ratings.tolist() == [4.0, 2.0] and raw.timestamps.tolist() == [10, 20]
    path = _parquet(tmp_path / "extra.parquet", {"user_id": ["a", "b"], "item_id": ["x", "y"], "device": [1, 2],
                                                  "grade": [4.0, 2.0]})  # fmt: skip
    with pytest.warns(DataWarning, match=r"extra\.parquet: columns not read: device, grade \(a rating column is"):
        raw = load_ratings(path)
    assert raw.implicit


def test_a_compressed_file_or_a_parquet_file_read_as_text_is_named_as_such(tmp_path):
    """Both were refused as 'not valid UTF-8 (byte 1)' on line 1."""
    import gzip

    path = tmp_path / "r.csv.gz"
    path.write_bytes(gzip.compress(b"u1,i1,4\nu2,i2,3\n"))
    with pytest.raises(DataFormatError, match=r"r\.csv\.gz: a gzip-compressed file: decompress it first"):
        load_ratings(path)
    pq_path = _parquet(tmp_path / "r.parquet", {"user_id": ["a", "b"], "item_id": ["x", "y"]})
    with pytest.raises(DataFormatError, match=r"r\.parquet: a Parquet file, not csv: read it with --format auto"):
        load_ratings(pq_path, "csv")


def test_a_column_under_a_time_or_rating_alias_that_cannot_be_one_is_not_read_not_refused(tmp_path):
    """Found by review: with ``ts``/``created_at`` known as time names, a Parquet file whose such column held text or
    a null (ignored before) was refused. It is left unread, with a warning; pandas' index column is not named."""
    text = {"user_id": ["a", "b"], "item_id": ["x", "y"], "rating": [4.0, 3.0],
            "created_at": ["2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z"], "__index_level_0__": [7, 8]}  # fmt: skip
    nulls = {"user_id": ["a", "b"], "item_id": ["x", "y"], "score": pa.array([4.0, None]), "ts": [1, 2]}
    with pytest.warns(DataWarning, match="column 'created_at' not read as the timestamp") as caught:
        raw = load_ratings(_parquet(tmp_path / "text.parquet", text))
    assert raw.ratings.tolist() == [4.0, 3.0] and raw.timestamps.tolist() == [0, 0]
    assert not any("__index_level_0__" in str(w.message) for w in caught)
    with pytest.warns(DataWarning, match="column 'score' not read as the rating"):
        raw = load_ratings(_parquet(tmp_path / "nulls.parquet", nulls))
    assert raw.implicit and raw.timestamps.tolist() == [1, 2]
    with pytest.raises(DataFormatError, match="column 'timestamp' \\(timestamp\\) must be numeric"):  # its own name
        load_ratings(_parquet(tmp_path / "own.parquet", {"user_id": ["a"], "item_id": ["x"], "timestamp": ["x"]}))
