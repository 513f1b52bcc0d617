"""The stage summary: a typed record a component writes next to its output, read back as
written, on local disk and S3; a missing one is None, a broken one a clear error."""

from __future__ import annotations

import pytest

from primer.storage import open_storage
from primer.summary import SUMMARY_KEY, StageSummary, SummaryError, read_summary, write_summary


def test_round_trip_and_missing(storage_uri):
    out = f"{storage_uri}/curated"
    assert read_summary(out) is None
    written = StageSummary(stage="curate", producer="services.curation", rows=4, tokens=900,
                           drop_counts={"too_short": 2},
                           facts={"classifier": {"f1": 0.8}, "hist_all": [1, 2]})
    url = write_summary(out, written)
    assert url.endswith(SUMMARY_KEY)
    assert read_summary(out) == written
    assert read_summary(open_storage(out)) == written


@pytest.mark.parametrize("text, said", [
    ("{not json", "not a stage summary"),
    ('{"stage": "x", "producer": "y", "rows": -1}', "rows"),
    ('{"stage": "x", "producer": "y", "extra": 1}', "extra"),
    ('{"producer": "y"}', "stage"),
])
def test_a_broken_summary_is_an_error_naming_the_file(tmp_path, text, said):
    (tmp_path / SUMMARY_KEY).write_text(text)
    with pytest.raises(SummaryError, match=said) as e:
        read_summary(str(tmp_path))
    assert str(tmp_path / SUMMARY_KEY) in str(e.value)
