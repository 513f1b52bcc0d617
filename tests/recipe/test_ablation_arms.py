"""The ablation's control arm: a random subset of the unfiltered files as large as the filtered
code, so that the control and the filtered arm repeat their data equally often."""

from __future__ import annotations

from primer.datasets import Producer, open_dataset, read_manifest, write_dataset
from recipe.demo import size_matched_subset


def dataset(path, texts):
    write_dataset(str(path), [{"id": f"f{i}", "text": t} for i, t in enumerate(texts)],
                  Producer("test"))
    return str(path)


def test_the_subset_is_the_shortest_seeded_draw_that_reaches_the_filtered_size(tmp_path):
    texts = [("x" * (10 + 7 * i)) for i in range(60)]
    source = dataset(tmp_path / "sources", texts)
    like = dataset(tmp_path / "curated", ["y" * 400, "z" * 333])  # 733 characters
    m = size_matched_subset(source, like, str(tmp_path / "subset"), seed=3)

    rows = open_dataset(str(tmp_path / "subset")).to_table().to_pylist()
    got = {r["id"]: r["text"] for r in rows}
    assert all(texts[int(i[1:])] == t for i, t in got.items())  # rows of the source, intact
    chars = sum(map(len, got.values()))
    assert chars >= 733 and m.metadata["characters"] == chars
    assert chars - max(map(len, got.values())) < 733  # the draw stopped once it was enough
    assert m.rows == len(rows) < len(texts) and read_manifest(str(tmp_path / "subset")).rows

    again = size_matched_subset(source, like, str(tmp_path / "again"), seed=3)
    other = size_matched_subset(source, like, str(tmp_path / "other"), seed=4)

    def ids(name):
        return open_dataset(str(tmp_path / name)).to_table(["id"]).column("id").to_pylist()
    assert ids("again") == ids("subset") and again.rows == m.rows
    assert set(ids("other")) != set(ids("subset")) and other.metadata["seed"] == 4


def test_a_source_smaller_than_the_target_is_taken_whole(tmp_path):
    source = dataset(tmp_path / "sources", ["a" * 10, "b" * 20])
    like = dataset(tmp_path / "curated", ["c" * 100])
    m = size_matched_subset(source, like, str(tmp_path / "subset"))
    assert m.rows == 2 and m.metadata["characters"] == 30
