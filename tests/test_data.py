"""Parsing every supported file format, and a clear error for every kind of malformed line."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from model.data import DataFormatError, load_ratings
from tests.conftest import write_lines


@pytest.mark.parametrize(
    ("name", "lines", "expected_format"),
    [
        ("u.data", ["196\t242\t3\t881250949", "186\t302\t3\t891717742"], "ml-100k"),
        ("ratings.dat", ["1::1193::5::978300760", "1::661::3::978302109"], "ml-dat"),
        ("ratings.csv", ["userId,movieId,rating,timestamp", "1,1193,5.0,978300760", "1,661,3.5,978302109"], "ml-csv"),
        ("plain.csv", ["1,1193,5", "1,661,3.5"], "csv"),
        ("header.csv", ["user,item,rating", "1,1193,5", "1,661,3.5"], "csv"),
        ("plain.tsv", ["1\t1193\t5\t978300760", "1\t661\t3.5\t978302109"], "tsv"),
        ("header.tsv", ["user_id\titem_id\trating", "1\t1193\t5", "1\t661\t3.5"], "tsv"),
    ],
)
def test_every_format_detected_and_forced(tmp_path, name, lines, expected_format):
    path = write_lines(tmp_path / name, lines)
    for fmt in ("auto", expected_format):
        raw = load_ratings(path, fmt)
        assert raw.user_ids.tolist() == (["196", "186"] if name == "u.data" else ["1", "1"])
        assert len(raw) == 2
        assert raw.ratings.dtype == np.float32
        assert raw.fingerprint.startswith("sha256:")


def test_values_and_timestamps_are_kept(tmp_path):
    raw = load_ratings(write_lines(tmp_path / "r.csv", ["userId,movieId,rating,timestamp", "7,x9,4.5,1000"]))
    assert (raw.user_ids[0], raw.item_ids[0], float(raw.ratings[0]), int(raw.timestamps[0])) == ("7", "x9", 4.5, 1000)
    assert not raw.implicit


def test_two_columns_are_implicit_interactions(tmp_path):
    raw = load_ratings(write_lines(tmp_path / "clicks.csv", ["user,item", "a,b", "a,c"]))
    assert raw.implicit and raw.ratings.tolist() == [1.0, 1.0]


def test_crlf_bom_and_blank_lines_are_tolerated(tmp_path):
    path = write_lines(tmp_path / "r.csv", b"\xef\xbb\xbfuser,item,rating\r\n1,2,3\r\n\r\n4,5,1\r\n")
    raw = load_ratings(path)
    assert raw.user_ids.tolist() == ["1", "4"] and raw.item_ids.tolist() == ["2", "5"]


@pytest.mark.parametrize(
    ("content", "line", "reason"),
    [
        (["1\t2\t3\t4", "1\t2\t3"], 2, "expected 4 fields"),
        (["1,2,3", "1,2,x"], 2, "rating is not a number: 'x'"),
        (["1,2,3", ",2,3"], 2, "empty user id"),
        (["1,2,3", "1, ,3"], 2, "empty item id"),
        (["1,2,3", "1,2,inf"], 2, "rating is not finite"),
        (["1,2,3,4", "1,2,3,soon"], 2, "timestamp is not a number"),
        (["1,2,3", "1,2,3,4"], 2, "expected 3 fields like the lines before"),
        (["1,2,3", "1,2,3,4,5"], 2, "expected 2 or 3 or 4 fields"),
        (b"1,2,3\n1,\xff\xfe,3\n", 2, "not valid UTF-8"),
        (["just-one-column"], 1, "cannot detect the format"),
    ],
)
def test_malformed_lines_name_file_and_line(tmp_path, content, line, reason):
    path = write_lines(tmp_path / "bad.csv", content)
    with pytest.raises(DataFormatError) as info:
        load_ratings(path)
    assert info.value.line == line
    assert reason in str(info.value)
    assert str(info.value).startswith(f"{path}:{line}: ")


@pytest.mark.parametrize("content", [b"", b"\n\n", b"user,item,rating\n"])
def test_empty_file_or_header_only_is_an_error(tmp_path, content):
    with pytest.raises(DataFormatError, match="no ratings found"):
        load_ratings(write_lines(tmp_path / "empty.csv", content))


def test_missing_file_is_an_error(tmp_path):
    with pytest.raises(DataFormatError, match="cannot read file"):
        load_ratings(tmp_path / "nope.csv")


def test_forced_format_that_does_not_fit(tmp_path):
    path = write_lines(tmp_path / "r.csv", ["1,2,3,4"])
    with pytest.raises(DataFormatError, match="expected 4 fields separated by '::'"):
        load_ratings(path, "ml-dat")


def test_ml_csv_requires_its_header(tmp_path):
    with pytest.raises(DataFormatError, match="expected the header"):
        load_ratings(write_lines(tmp_path / "r.csv", ["u,i,r,t", "1,2,3,4"]), "ml-csv")


def test_unknown_format_name(tmp_path):
    with pytest.raises(ValueError, match="unknown format"):
        load_ratings(write_lines(tmp_path / "r.csv", ["1,2,3"]), "parquet")


def test_a_non_numeric_rating_on_the_first_line_is_an_error_not_a_header(tmp_path):
    """Before: 'u1,i1,great' on line 1 was silently dropped as a header."""
    path = write_lines(tmp_path / "r.csv", ["u1,i1,great", "u2,i2,4"])
    with pytest.raises(DataFormatError, match=r"r\.csv:1: rating is not a number: 'great' \(not a header either"):
        load_ratings(path)
    for header in ("user,item,rating", "userId,movieId,score,when", "UID,iid,r"):
        raw = load_ratings(write_lines(tmp_path / "h.csv", [header, "u2,i2,4" + (",5" if "when" in header else "")]))
        assert raw.user_ids.tolist() == ["u2"]


@pytest.mark.parametrize(
    "rows",
    [
        ["user_id,item_id,timestamp,rating", "u1,i1,881250949,4", "u2,i2,881250950,3"],
        ["uid,rating,item", "u1,4,i1", "u2,3,i2"],
    ],
)
def test_a_header_naming_a_column_out_of_its_place_is_refused(tmp_path, rows):
    """Text columns are read by position: rating and timestamp swapped trained on ratings of 10^9 (RMSE 1.8e8).
    Unknown names keep their place."""
    path = write_lines(tmp_path / "h.csv", rows)
    for fmt in ("csv", "auto"):
        with pytest.raises(DataFormatError, match=r"h\.csv:1: column [23] is named '(timestamp|rating)' but would be"):
            load_ratings(path, fmt)


@pytest.mark.parametrize("header", ["user,item,timestamp", "user_id,movieId,Timestamp", "uid\titem\ttimestamp"])
def test_a_clicks_file_with_times_is_implicit_interactions_in_time(tmp_path, header):
    """user,item,timestamp (a click or play log, what sequence models train on) trained its times as ratings;
    now implicit rows with their times, alike in both readers and in Parquet."""
    sep = "\t" if "\t" in header else ","
    lines = [header, *(sep.join(row) for row in (("u1", "i1", "300"), ("u1", "i2", "100"), ("u2", "i1", "200")))]
    path = write_lines(tmp_path / ("c.tsv" if sep == "\t" else "c.csv"), lines)
    for raw in (load_ratings(path), load_ratings(path, fast=False)):
        assert raw.implicit and raw.ratings.tolist() == [1.0, 1.0, 1.0]
        assert list(zip(raw.user_ids, raw.item_ids, raw.timestamps.tolist())) == [
            ("u1", "i1", 300), ("u1", "i2", 100), ("u2", "i1", 200)]  # fmt: skip
    wide = write_lines(tmp_path / "w.csv", ["user,item,timestamp", "u1,i1,300", "u1,i2,4,100"])
    for fast in (True, False):
        with pytest.raises(DataFormatError, match=r"w\.csv:3: expected 3 fields"):
            load_ratings(wide, fast=fast)
    pq.write_table(pa.table({"user": ["u1", "u2"], "item": ["i1", "i1"], "timestamp": [300, 200]}), tmp_path / "c.pq")
    raw = load_ratings(tmp_path / "c.pq")  # was "timestamp without a rating column"
    assert raw.implicit and raw.timestamps.tolist() == [300, 200]


@pytest.mark.parametrize(
    ("header", "implicit"),
    [("user,item,time", True), ("user_id,item_id,ts", True), ("customer_id,product_id,stars,ts", False),
     ("visitor_id,sku,score,event_time", False)],
)  # fmt: skip
def test_common_rating_and_time_names_are_read_by_name(tmp_path, header, implicit):
    """Found by review: a click log ``user,item,time`` (or ``ts``) had its times read as ratings (by position) and
    trained a rating model on epoch seconds, exit 0; ``customer_id,...`` was refused as a bad first line."""
    rows = [("u1", "i1", "881250949"), ("u1", "i2", "881250950"), ("u2", "i1", "881250951")]
    if not implicit:
        rows = [(u, i, "4", t) for u, i, t in rows]
    path = write_lines(tmp_path / "h.csv", [header, *(",".join(row) for row in rows)])
    for raw in (load_ratings(path), load_ratings(path, fast=False)):
        assert raw.implicit == implicit and raw.timestamps.tolist() == [881250949, 881250950, 881250951]
        assert raw.ratings.tolist() == [1.0 if implicit else 4.0] * 3


def test_times_in_the_rating_column_are_refused_not_trained_on(tmp_path):
    """Without a header the third column is the rating: epoch seconds there are refused with what to do."""
    path = write_lines(tmp_path / "clicks.csv", ["u1,i1,881250949", "u1,i2,881250950", "u2,i1,881250951"])
    for fast in (True, False):
        with pytest.raises(DataFormatError, match=r"clicks\.csv: the rating column holds only values of 8\.81e\+08 and "
                                                  r"more: times .*A header user,item,timestamp"):  # fmt: skip
            load_ratings(path, fast=fast)
    assert load_ratings(write_lines(tmp_path / "plays.csv", ["u1,i1,12000", "u2,i1,3"])).ratings.tolist() == [12000, 3]
    pq.write_table(pa.table({"user": ["u1", "u2"], "item": ["i1", "i1"], "rating": [881250949.0, 881250950.0]}),
                   tmp_path / "clicks.parquet")  # fmt: skip
    with pytest.raises(DataFormatError, match=r"clicks\.parquet: the rating column holds only values of 8\.81e\+08"):
        load_ratings(tmp_path / "clicks.parquet")


def test_a_header_with_another_columns_name_first_names_the_misplaced_column(tmp_path):
    """``item_id,user_id,...`` was refused as "rating is not a number: 'rating'", not for its column order."""
    path = write_lines(tmp_path / "h.csv", ["item_id,user_id,rating,timestamp", "i1,u1,4,881250949"])
    for fmt in ("auto", "csv"):
        with pytest.raises(DataFormatError, match=r"h\.csv:1: column 1 is named 'item_id' but would be read as user"):
            load_ratings(path, fmt)


def test_iso_dates_and_times_in_text_are_read_as_epoch_seconds_as_in_parquet(tmp_path):
    """ISO 8601 times were refused in CSV ('timestamp is not a number') while Parquet's date columns were read."""
    lines = ["user,item,rating,timestamp", "u1,i1,4,2020-01-02", "u1,i2,5,2020-01-01T00:00:03Z",
             "u2,i1,3,2020-01-01 01:00:00+01:00", "u2,i2,3,1577836801"]  # fmt: skip
    path = write_lines(tmp_path / "iso.csv", lines)
    for fast in (True, False):
        assert load_ratings(path, fast=fast).timestamps.tolist() == [1577923200, 1577836803, 1577836800, 1577836801]
    bad = write_lines(tmp_path / "bad.csv", ["user,item,rating,timestamp", "u1,i1,4,2020-01-02", "u1,i2,5,yesterday"])
    with pytest.raises(DataFormatError, match=r"bad\.csv:3: timestamp is not a number nor an ISO 8601 date"):
        load_ratings(bad)


def test_a_trailing_delimiter_is_named_as_a_field_too_many(tmp_path):
    """It was refused as "timestamp is not a number: ''" under a three-column header."""
    path = write_lines(tmp_path / "t.csv", ["user,item,rating", "u1,i1,4,", "u2,i2,3,"])
    for fast in (True, False):
        with pytest.raises(DataFormatError, match=r"t\.csv:2: expected 3 fields like the lines before, got 4 \(a "
                                                  r"trailing delimiter\?\)"):  # fmt: skip
            load_ratings(path, fast=fast)
