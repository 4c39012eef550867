"""The signature check shared by every path: batch files, V2 and /invocations."""

import numpy as np
import pandas as pd
import pytest

from mlferry.errors import SchemaMismatch
from mlferry.schema import Column, conform, extra_columns

DIABETES = [Column(n, "double") for n in ("age", "bmi", "bp")]
TENURE = [Column("tenure_months", "long"), Column("monthly_charges", "double")]


def test_conform_casts_whole_numbers_to_double_in_signature_order():
    frame = pd.DataFrame({"bp": [80, 90], "bmi": [25, 31], "age": [50, 61]})
    out = conform(frame, DIABETES)
    assert list(out.columns) == ["age", "bmi", "bp"]
    assert all(out.dtypes == np.float64)
    assert out["bmi"].tolist() == [25.0, 31.0]


def test_conform_names_every_missing_column_and_the_expected_ones():
    frame = pd.DataFrame({"age": [50.0]})
    with pytest.raises(
        SchemaMismatch,
        match=r"columns 'bmi', 'bp' are missing; "
        r"the model expects: age, bmi, bp",
    ):
        conform(frame, DIABETES)


def test_conform_names_column_and_row_of_text_in_a_number_column():
    frame = pd.DataFrame(
        {"age": ["50", "61", "abc"], "bmi": [1.0] * 3, "bp": [1.0] * 3}
    )
    with pytest.raises(
        SchemaMismatch, match=r"column 'age', row 3: 'abc' is not a number"
    ):
        conform(frame, DIABETES)


def test_conform_counts_rows_from_the_chunk_offset():
    frame = pd.DataFrame({"age": [1.0, np.nan], "bmi": [1.0] * 2, "bp": [1.0] * 2})
    with pytest.raises(
        SchemaMismatch, match=r"column 'age', row 102: missing value"
    ) as info:
        conform(frame, DIABETES, row_offset=100)
    assert (info.value.column, info.value.row) == ("age", 102)


def test_conform_rejects_a_null_in_a_double_column():
    frame = pd.DataFrame({"age": [1.0], "bmi": [None], "bp": [1.0]})
    with pytest.raises(SchemaMismatch, match=r"column 'bmi', row 1: missing value"):
        conform(frame, DIABETES)


def test_conform_rejects_a_gap_in_an_integer_column_naming_row_two():
    # pandas turns [12, None] into float64; the gap must be reported, not a cast error.
    frame = pd.DataFrame({"tenure_months": [12, None], "monthly_charges": [70.5, 30.0]})
    with pytest.raises(
        SchemaMismatch, match=r"column 'tenure_months', row 2: missing value.*long"
    ):
        conform(frame, TENURE)


def test_conform_keeps_integers_exact_for_a_long_column():
    frame = pd.DataFrame({"tenure_months": [2**53 + 1], "monthly_charges": [1.0]})
    assert conform(frame, TENURE)["tenure_months"].iloc[0] == 2**53 + 1


def test_conform_rejects_a_fraction_in_an_integer_column():
    frame = pd.DataFrame({"tenure_months": [1.5], "monthly_charges": [1.0]})
    with pytest.raises(SchemaMismatch, match=r"1.5 is not a whole number"):
        conform(frame, TENURE)


def test_conform_casts_int64_to_int32_and_rejects_overflow():
    columns = [Column("x", "integer")]
    assert conform(pd.DataFrame({"x": [1, -1]}), columns)["x"].dtype == np.int32
    with pytest.raises(
        SchemaMismatch, match=r"column 'x', row 2: 3000000000 does not fit"
    ):
        conform(pd.DataFrame({"x": [1, 3_000_000_000]}), columns)


def test_conform_leaves_out_extra_columns_and_reports_them():
    frame = pd.DataFrame(
        {"customer_id": ["C-1"], "age": [1.0], "bmi": [2.0], "bp": [3.0]}
    )
    assert list(conform(frame, DIABETES).columns) == ["age", "bmi", "bp"]
    assert extra_columns(frame, DIABETES) == ["customer_id"]


def test_conform_decodes_bytes_to_text_for_a_string_column():
    columns = [Column("color", "string")]
    out = conform(pd.DataFrame({"color": [b"red", "blue"]}), columns)
    assert out["color"].tolist() == ["red", "blue"]
    assert all(isinstance(v, str) for v in out["color"])


def test_conform_rejects_bytes_that_are_not_utf8():
    columns = [Column("color", "string")]
    with pytest.raises(
        SchemaMismatch, match=r"column 'color': a value is not valid UTF-8"
    ):
        conform(pd.DataFrame({"color": [b"caf\xe9"]}), columns)


def test_conform_passes_frames_through_when_the_model_has_no_signature():
    frame = pd.DataFrame({"anything": [1]})
    assert conform(frame, None) is frame


def test_conform_of_an_empty_frame_gives_typed_empty_columns():
    frame = pd.DataFrame({"age": [], "bmi": [], "bp": []}, dtype=object)
    out = conform(frame, DIABETES)
    assert len(out) == 0
    assert all(out.dtypes == np.float64)


@pytest.mark.parametrize("bad", [np.inf, -np.inf, "inf", "1e400"])
def test_conform_rejects_infinite_values(bad):
    frame = pd.DataFrame({"age": [1.0, bad], "bmi": [1.0] * 2, "bp": [1.0] * 2})
    with pytest.raises(
        SchemaMismatch, match=r"column 'age', row 2: .* is not a finite"
    ):
        conform(frame, DIABETES)


def test_conform_rejects_a_float32_overflow():
    with pytest.raises(SchemaMismatch, match=r"does not fit float|not a finite number"):
        conform(pd.DataFrame({"x": [1.7e308]}), [Column("x", "float")])


def test_conform_refuses_timestamps_in_a_number_column():
    frame = pd.DataFrame(
        {"age": pd.to_datetime(["2024-01-01"]), "bmi": [1.0], "bp": [1.0]}
    )
    with pytest.raises(SchemaMismatch, match=r"column 'age', row 1: a datetime64"):
        conform(frame, DIABETES)


def test_conform_refuses_duplicate_columns():
    frame = pd.DataFrame([[1.0, 2.0, 3.0, 4.0]], columns=["age", "bmi", "bp", "bmi"])
    with pytest.raises(SchemaMismatch, match=r"column 'bmi' appears more than once"):
        conform(frame, DIABETES)
