"""The commit's selection: the first ``count`` records in stream order whose near-duplicate
keys no earlier kept record has (issue 16), on batch markers and shards written here."""

from __future__ import annotations

import hashlib
import random
from collections import Counter

import pyarrow.parquet as pq
import pytest

from primer.datasets import open_dataset, write_shard
from primer.executor import WorkUnit, run_unit
from services.generation import run
from services.generation.batch import SCHEMAS, shard_name
from services.generation.config import GenerateConfig
from services.generation.run import GenerationError, commit_unit, select, units_for, work_uri

FIXTURE_BATCH = "tests.services.generation.test_select:fixture_batch"
BATCH = 5


def key(band: int, label: str) -> str:
    """A key in ``band_keys``'s format; the same label gives the same 64-bit value."""
    return f"{band}:{hashlib.blake2b(label.encode(), digest_size=8).hexdigest()}"


def keys_of(name: str, shared: dict[int, str] | None = None, bands: int = 8) -> list[str]:
    """The keys of record ``name``; ``shared`` replaces some bands by another's label."""
    return [key(b, f"{(shared or {}).get(b, name)}#{b}") for b in range(bands)]


def fixture_batch(start: int, count: int, output: str, rows: list[list]) -> dict:
    """A batch unit's result over ``rows`` ([name, keys] or [None, reason]), with its shard."""
    kept = [(name, keys) for name, keys in rows if name is not None]
    drops = Counter(reason for name, reason in rows if name is None)
    shard = None
    if kept:
        info = write_shard(output, shard_name(start), [
            {"id": name, "text": f"the text of {name}", "topic": "t", "audience": "a",
             "style": "s", "teacher": "fixture", "prompt_hash": name} for name, _ in kept],
            SCHEMAS["textbooks"])
        shard = {"name": info.name, "rows": info.rows, "bytes": info.bytes,
                 "sha256": info.sha256}
    return {"start": start, "count": count, "shard": shard, "drops": dict(drops),
            "usage": {"prompt_tokens": 3 * count, "completion_tokens": 5 * len(kept),
                      "requests": count},
            "indices": list(range(start, start + len(kept))),
            "tokens": [len(name) for name, _ in kept], "keys": [k for _, k in kept]}


def config() -> GenerateConfig:
    config = GenerateConfig()
    config.generation.batch_size = BATCH
    return config


def write_batches(output: str, batches: list[list[list]]) -> None:
    units = units_for("textbooks", output, config(), 0, BATCH * len(batches))
    for unit, rows in zip(units, batches, strict=True):
        args = {"start": unit.args["start"], "count": BATCH, "output": output, "rows": rows}
        run_unit(WorkUnit(unit.id, FIXTURE_BATCH, args), work_uri(output))


def commit(output: str, count: int, stop: int) -> dict:
    gen = config()
    return commit_unit("textbooks", count, output, stop, gen.teacher.model_dump(),
                       gen.generation.model_dump(), gen.sandbox.model_dump(mode="json"))


def test_commit_publishes_the_first_count_records_without_near_duplicates(tmp_path):
    out = str(tmp_path / "books")
    write_batches(out, [
        [["A", keys_of("A")], ["B", keys_of("B")], [None, "refusal"], ["C", keys_of("C")],
         [None, "too_short"]],
        # A2 is A again; E shares one band with B; F's band-0 value is C's band-1 value (a
        # different band: not a duplicate); D2 shares a band with D in its own batch.
        [["D", keys_of("D")], ["A2", keys_of("A")], ["E", keys_of("E", {3: "B"})],
         ["F", [key(0, "C#1")] + keys_of("F")[1:]], ["D2", keys_of("D2", {5: "D"})]],
        # G shares a band with E, which was dropped: G is kept. Count is reached at H.
        [["G", keys_of("G", {3: "E"})], ["H", keys_of("H")], [None, "refusal"],
         ["I", keys_of("A")], ["J", keys_of("J")]],
        [[None, "refusal"], ["K", keys_of("K")], [None, "refusal"], [None, "refusal"],
         [None, "refusal"]],
        [[None, "refusal"]] * BATCH,  # no shard at all
    ])
    result = commit(out, 7, 5 * BATCH)

    dataset = open_dataset(out)
    manifest = dataset.manifest
    assert [r["id"] for r in dataset] == ["A", "B", "C", "D", "F", "G", "H"]
    assert result["rows"] == manifest.rows == 7
    # A whole shard is published as it is; a partly kept one as a filtered copy.
    assert [(s.name, s.rows) for s in manifest.shards] == [
        ("part-000000000.parquet", 3), ("part-000000005-k2.parquet", 2),
        ("part-000000010-k2.parquet", 2)]
    assert manifest.drop_counts == {"near_dup": 3, "refusal": 11, "too_short": 1}
    assert manifest.tokens == 7
    meta = manifest.metadata
    assert (meta["valid"], meta["specs"], meta["surplus_valid"]) == (7, 25, 3)
    assert meta["usage"] == {"prompt_tokens": 75, "completion_tokens": 5 * 13}
    assert sum(manifest.drop_counts.values()) + 7 + meta["surplus_valid"] == meta["specs"]
    with open(tmp_path / "books" / "part-000000005-k2.parquet", "rb") as f:
        assert pq.read_table(f).column("id").to_pylist() == ["D", "F"]


def test_commit_before_every_batch_finished_or_with_too_few_records(tmp_path):
    out = str(tmp_path / "books")
    write_batches(out, [[["A", keys_of("A")], ["A2", keys_of("A")]] + [[None, "refusal"]] * 3])
    with pytest.raises(GenerationError, match="only 1 of 2 valid records in 5 specs"):
        commit(out, 2, BATCH)
    with pytest.raises(GenerationError, match=r"commit before every batch of specs \[0, 10\)"):
        commit(out, 1, 2 * BATCH)


def reference(results: list[dict], count: int) -> tuple[list[tuple[int, list[int]]], Counter,
                                                         int, int]:
    """The selection as first defined: one set of every kept record's keys."""
    seen: set[str] = set()
    chosen, drops, kept, surplus = [], Counter(), 0, 0
    for result in results:
        drops.update(result["drops"])
        positions = []
        for pos, keys in enumerate(result["keys"]):
            if kept == count:
                surplus += 1
            elif any(k in seen for k in keys):
                drops["near_dup"] += 1
            else:
                seen.update(keys)
                positions.append(pos)
                kept += 1
        if positions:
            chosen.append((result["start"], positions))
    return chosen, drops, kept, surplus


@pytest.mark.parametrize(("seed", "bands", "group"),
                         [(0, 8, 4096), (1, 8, 100), (2, 12, 100), (3, 1, 1)])
def test_select_makes_the_same_first_come_decisions_as_one_set_of_keys(seed, bands, group,
                                                                        monkeypatch):
    """Many batches whose records share random bands with earlier ones (kept or dropped,
    in an earlier batch or their own), decided a few batches at a time or all at once;
    two-digit bands take the general parser."""
    monkeypatch.setattr(run, "GROUP", group)
    rng = random.Random(seed)
    names = [f"r{i}" for i in range(3000)]
    results = []
    for start in range(0, 3000, 60):
        batch = names[start:start + rng.randint(0, 60)]
        keys = [keys_of(n, {b: rng.choice(names[:start + i + 1]) for b in range(bands)
                            if rng.random() < 0.3 / bands}, bands) for i, n in enumerate(batch)]
        results.append({"start": start, "count": 60, "shard": None,
                        "drops": {"refusal": 60 - len(batch)}, "usage": {},
                        "tokens": [1] * len(batch), "keys": keys})
    available = reference(results, len(names))[2]
    count = rng.randint(available // 3, available - 50)
    chosen, drops, kept, surplus = reference(results, count)
    assert drops["near_dup"] > 40 and kept == count and surplus > 40  # not a trivial case

    selection = select(iter(results), count)
    assert [(start, list(pos)) for start, _, pos in selection.rows] == chosen
    assert (selection.drops, selection.kept, selection.surplus) == (drops, kept, surplus)
    assert selection.specs == 60 * len(results) and selection.tokens == kept


def test_a_malformed_key_is_named_with_its_batch():
    good = {"start": 0, "count": 1, "shard": None, "drops": {}, "usage": {}, "tokens": [1],
            "keys": [["0:" + "b" * 16]]}
    bad = {**good, "start": 60, "keys": [["0:" + "a" * 16, "1:XYZ"]]}
    with pytest.raises(GenerationError, match=r"batch at spec 60: near-dup key '1:XYZ'"):
        select([good, bad], 5)
    with pytest.raises(GenerationError, match=r"batch at spec 60: near-dup key 7 is not"):
        select([good, {**bad, "keys": [["1:" + "c" * 16, 7]]}], 5)
    with pytest.raises(GenerationError, match=r"batch at spec 60: near-dup key '01:"):
        select([good, {**bad, "keys": [["01:" + "c" * 16]]}], 5)


def test_the_bench_selects_the_same_records_as_the_code_it_replaced(tmp_path):
    from bench import generation_select

    report = generation_select.main(["--records", "3000", "--batch", "64"])
    new, old = report["runs"]
    assert (new["impl"], old["impl"]) == ("new", "old") and new["kept"] == 2700
    assert new["near_dup"] > 0 and report["summary"]["same_selection"]
