"""Curation with real parts: real stdlib code, real MiniLM embeddings and random forest,
a real killed process, real Celery workers on Redis."""

from __future__ import annotations

import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from primer.cli import build_app
from primer.datasets import Producer, open_dataset, write_dataset
from primer.executor import CeleryExecutor
from primer.summary import read_summary
from services.curation import pipeline, readers
from services.curation.annotate import AnnotateConfig, TeacherAnnotator, parse_score
from services.curation.config import CurationConfig, DedupConfig, FilterConfig, ReaderConfig
from services.curation.dedup import MinHasher, cluster, exact_key, removal_reasons
from services.curation.filters import default_filters
from services.curation.steps import drop_counts, run_pipeline
from tests.openai_server import OpenAIServer
from tests.primer.test_executor import celery_workers
from tests.services.curation import corpus

REPO = Path(__file__).resolve().parents[3]
CURATE = importlib.metadata.EntryPoint(name="curate", value="services.curation.cli:curate",
                                       group="primer.commands")
# Small units so a run has several shards to kill in the middle of, and to resume.
OVERRIDES = ["--reader.files_per_unit=20", f"--reader.max_bytes={corpus.MAX_BYTES}",
             "--filters.max_chars=60000", "--annotate.sample_size=200",
             "--classify.n_estimators=50", "--classify.max_tokens=128"]


def _config(src: Path, out: Path, **extra) -> CurationConfig:
    cfg = CurationConfig(input=str(src), output=str(out), workers=1, write_dropped=True,
                         **extra)
    cfg.reader.files_per_unit, cfg.reader.max_bytes = 20, corpus.MAX_BYTES
    cfg.filters.max_chars = 60000
    cfg.annotate.sample_size = 200
    cfg.classify.n_estimators, cfg.classify.max_tokens = 50, 128
    return cfg


def _rows(out: Path) -> dict[str, float]:
    """id → edu_score of a finished output."""
    table = open_dataset(str(out)).to_table(["id", "edu_score"])
    return dict(zip(table.column("id").to_pylist(), table.column("edu_score").to_pylist(),
                    strict=True))


@pytest.fixture(scope="module")
def src(tmp_path_factory) -> Path:
    return corpus.build(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference(src, tmp_path_factory) -> tuple[Path, str]:
    """One uninterrupted run through the `primer curate` command; (output, its stdout)."""
    out = tmp_path_factory.mktemp("ref") / "curated"
    app = build_app(plugins=[CURATE])
    res = CliRunner().invoke(app, ["curate", "--input", str(src), "--output", str(out),
                                   "--workers", "1", "--write-dropped", "--min-score", "0.5",
                                   *OVERRIDES], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    return out, res.output


# -- filters and dedup, unit level ----------------------------------------------------------

def test_each_junk_kind_is_dropped_with_its_reason_and_counted(src):
    dropped = {}
    filters = default_filters(FilterConfig(max_chars=60000),
                              lambda r, why: dropped.__setitem__(Path(r["source"]).name, why))
    files = sorted(str(p) for p in (src / "planted").iterdir())
    kept = list(run_pipeline(readers.read_files(files, corpus.MAX_BYTES), filters))
    expected = {**{k: v for k, (_, v) in corpus.JUNK.items()}, **corpus.SPECIAL}
    assert {k: dropped[k] for k in expected} == expected
    assert sorted(Path(r["source"]).name for r in kept) == sorted(corpus.DUPES)
    assert drop_counts(filters) == {reason: 1 for reason in expected.values()}


def test_planted_exact_and_near_duplicates_collapse_to_one(src):
    hasher = MinHasher(DedupConfig())
    names = ["base.py", *corpus.DUPES]
    texts = [(src / "base.py").read_text()] + \
        [(src / "planted" / n).read_text() for n in corpus.DUPES]
    texts += [p.read_text() for p in sorted((src / "real").iterdir())[:30]]  # unrelated
    bands = np.stack([hasher.bands_of(t) for t in texts])
    exact = np.array([exact_key(t) for t in texts], np.uint64)
    reasons = removal_reasons(cluster(bands, exact, DedupConfig()), exact)
    assert dict(zip(names, reasons[:4], strict=True)) == {"base.py": None, **corpus.DUPES}
    assert reasons[4:] == [None] * 30  # different files are not merged
    # exact dedup alone keeps the near duplicates
    off = DedupConfig(near=False)
    assert removal_reasons(cluster(bands, exact, off), exact)[:4] == \
        [None, "exact_dup", None, None]



def test_short_files_have_no_near_signature_and_never_link():
    hasher = MinHasher(DedupConfig())
    texts = ["import os\n", "import os\n", "# “x” — 1.5\n", "pass"]  # < 5 words each
    bands = np.stack([hasher.bands_of(t) for t in texts])
    assert (bands == 0).all()
    exact = np.array([exact_key(t) for t in texts], np.uint64)
    near_only = removal_reasons(cluster(bands, exact, DedupConfig(exact=False)), exact)
    assert near_only == [None] * 4
    assert removal_reasons(cluster(bands, exact, DedupConfig()), exact)[1] == "exact_dup"


@pytest.mark.parametrize("compat", ["primer", "datatrove"])
def test_compat_datatrove_signatures_equal_datatrove_minhash(src, tmp_path, compat):
    import datatrove.pipeline.dedup.minhash as dt  # the peer, in the dev extra
    import xxhash
    from datatrove.utils.word_tokenizers import WordTokenizer

    class Split(WordTokenizer):
        def word_tokenize(self, text):
            return text.split()

        def sent_tokenize(self, text):
            return [text]

        def span_tokenize(self, text):
            raise NotImplementedError

    step = dt.MinhashDedupSignature(output_folder=str(tmp_path), config=dt.MinhashConfig(),
                                    language=Split())
    step._hash_func = lambda t: xxhash.xxh64_intdigest(t.encode())
    hasher = MinHasher(DedupConfig(compat=compat))
    texts = [p.read_text() for p in sorted((src / "real").iterdir())[:20]]
    texts.append("Ünïcode “quotes” — dashes, 3,14 et ٣٤ 12.5; ＄ fin\u00a0de\tligne x y z")
    same = 0
    for text in texts:
        ours = hasher.signature(hasher.shingles(text))
        theirs = np.array(sum(step.get_signature(step.get_shingles(text)), []), np.uint64)
        same += ours is not None and np.array_equal(ours, theirs)
    assert same == (len(texts) if compat == "datatrove" else 0)


# -- the whole job --------------------------------------------------------------------------

@pytest.mark.slow
def test_end_to_end_counts_every_reason_and_writes_dataset_report_and_model(reference, src):
    out, stdout = reference
    manifest = open_dataset(str(out)).manifest
    report = json.loads((out / "_report" / "report.json").read_text())
    dropped = open_dataset(str(out / "_dropped")).to_table(["source", "reason"]).to_pylist()
    by_name = {Path(r["source"]).name: r["reason"] for r in dropped}
    expected = {**{k: v for k, (_, v) in corpus.JUNK.items()}, **corpus.SPECIAL,
                **corpus.DUPES}
    assert {k: by_name.get(k) for k in expected} == expected
    # counters agree with the dropped records and with the report
    reasons = {}
    for r in dropped:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    assert manifest.drop_counts == reasons
    assert manifest.drop_counts["edu_score_below"] > 0
    assert report["files_seen"] == manifest.rows + sum(manifest.drop_counts.values())
    assert report["files_seen"] == len([p for p in src.rglob("*.py")])
    summary = read_summary(str(out))  # the typed summary the demo report reads
    assert (summary.stage, summary.rows, summary.tokens) == ("curate", manifest.rows,
                                                            manifest.tokens)
    assert {r: n for r, n in summary.drop_counts.items() if n} == manifest.drop_counts
    assert summary.facts["files_seen"] == report["files_seen"]
    assert summary.facts["hist_all"] == report["hist_all"]
    # one of the four copies survives dedup: the base, which sorts first
    assert by_name.get("base.py") in (None, "edu_score_below")
    kept = datasets.load_dataset("parquet", data_files=open_dataset(str(out)).data_files(),
                                 split="train")
    sources = {Path(s).name for s in kept["source"]}
    assert not sources & set(corpus.DUPES)
    assert min(kept["edu_score"]) >= 0.5 and manifest.rows == len(kept) > 0
    assert any(a is not None and a["annotator"] == "heuristic-v2" for a in kept["annotation"])
    assert manifest.tokens == int(report["kept_chars"] / 3.5) > 0
    png = (out / "_report" / "edu_score_hist.png").read_bytes()
    assert png.startswith(b"\x89PNG") and sum(report["hist_all"]) == \
        manifest.rows + manifest.drop_counts["edu_score_below"]
    metrics = json.loads((out / "_work" / "model" / "classifier_metrics.json").read_text())
    assert metrics == report["classifier"] == manifest.metadata["classifier"]
    assert "kept" in stdout and "edu_score_below" in stdout


@pytest.mark.slow
def test_classifier_beats_chance_on_held_out_annotations(reference):
    m = json.loads((reference[0] / "_report" / "report.json").read_text())["classifier"]
    assert m["n_test"] >= 20
    assert m["f1"] > m["chance_f1"] + 0.05, m
    assert m["accuracy"] > m["chance_accuracy"] - 0.1, m


@pytest.mark.slow
def test_killed_run_resumes_and_gives_the_same_output(reference, src, tmp_path):
    out = tmp_path / "curated"
    cfg = _config(src, out, classify={"min_score": 0.5})
    script = ("import json, sys; from services.curation import pipeline, config; "
              "pipeline.run(config.CurationConfig.model_validate(json.loads(sys.argv[1])), "
              "progress=False)")
    proc = subprocess.Popen([sys.executable, "-c", script, cfg.model_dump_json()], cwd=REPO,
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    markers = out / "_work" / "state" / "read" / "_markers"
    deadline = time.monotonic() + 120
    while not (markers.is_dir() and len(list(markers.iterdir())) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(10)
    done_before = {p.name for p in markers.iterdir()}
    assert not (out / "_manifest.json").exists() and len(done_before) < 7
    stages = []
    report = pipeline.run(cfg, progress=False, on_stage=stages.append)
    assert stages == ["read", "dedup", "cluster", "choose", "annotate", "label", "train",
                      "score", "threshold", "select", "commit"]
    assert _rows(out) == pytest.approx(_rows(reference[0]), abs=1e-5)
    assert open_dataset(str(out)).manifest.drop_counts == \
        open_dataset(str(reference[0])).manifest.drop_counts
    assert report["kept"] == len(_rows(reference[0]))
    # the read units finished before the kill were not redone: their shard files are older
    first = out / "_work" / "filtered" / "part-00000.parquet"
    assert first.stat().st_mtime < (out / "_manifest.json").stat().st_mtime


@pytest.mark.slow
def test_rerun_of_a_finished_run_does_nothing_and_another_config_is_refused(reference, src):
    out = reference[0]
    markers = sorted((out / "_work" / "state").rglob("*.json"))
    before = [m.stat().st_mtime_ns for m in markers]
    app = build_app(plugins=[CURATE])
    res = CliRunner().invoke(app, ["curate", "--input", str(src), "--output", str(out),
                                   "--workers", "1", "--write-dropped", "--min-score", "0.5",
                                   *OVERRIDES], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert [m.stat().st_mtime_ns for m in markers] == before  # no unit ran again
    assert _rows(out) == _rows(reference[0])
    with pytest.raises(pipeline.CurationError, match="another config"):
        pipeline.run(_config(src, out, classify={"min_score": 0.9}), progress=False)


@pytest.mark.integration
@pytest.mark.slow
def test_the_same_job_runs_on_celery_workers(reference, src, redis_url, tmp_path):
    out = tmp_path / "curated"
    cfg = _config(src, out, classify={"min_score": 0.5}, executor="celery")
    cfg.redis.url = redis_url
    queue = f"curate-{os.getpid()}"
    with celery_workers(redis_url, queue, tmp_path / "logs", n=2):
        report = pipeline.run(cfg, executor=CeleryExecutor(redis_url, queue=queue, timeout=300),
                              progress=False)
    assert _rows(out) == pytest.approx(_rows(reference[0]), abs=1e-5)
    marker = json.loads((out / "_work/state/score/_markers/score-00000.json").read_text())
    assert marker["pid"] != os.getpid()  # scored in a worker
    assert report["drop_counts"]["near_dup"] >= 2


# -- readers, annotators, errors ------------------------------------------------------------

def test_dataset_and_hf_readers_read_parquet_jsonl_from_any_storage(storage_uri, tmp_path):
    texts = ["def add(a, b):\n    return a + b\n", "print('hi')\n"]
    write_dataset(f"{storage_uri}/ds", [{"text": t} for t in texts], Producer("test"))
    parts = readers.plan(f"{storage_uri}/ds", ReaderConfig())
    got = [r["text"] for p in parts for r in readers.read_partition(p, ReaderConfig())]
    assert got == texts
    jsonl = tmp_path / "j" / "a.jsonl"
    jsonl.parent.mkdir()
    jsonl.write_text("".join(json.dumps({"content": t}) + "\n" for t in texts) + "{bad\n")
    cfg = ReaderConfig(text_column="content")
    recs = [r for p in readers.plan(str(jsonl.parent), cfg)
            for r in readers.read_partition(p, cfg)]
    assert [r.get("text") for r in recs] == [*texts, None] and recs[2]["_reject"] == \
        "undecodable"
    hf = tmp_path / "hf"
    hf.mkdir()
    pq.write_table(pa.table({"content": texts * 3}), hf / "train-00000.parquet")
    cfg = ReaderConfig(text_column="content", hf_limit=5, hf_records_per_unit=2)
    parts = readers.plan(f"hf:{hf}", cfg)  # one row group: one unit, however small the target
    assert [(p["row_groups"], p.get("stop")) for p in parts] == [([0], 5)]
    assert [r["text"] for p in parts for r in readers.read_partition(p, cfg)] == \
        (texts * 3)[:5]


def test_bad_inputs_fail_with_a_clear_message(tmp_path):
    with pytest.raises(readers.InputError, match="not a directory of"):
        readers.plan(str(tmp_path / "nothing-here"), ReaderConfig())
    with pytest.raises(readers.InputError, match="hf: needs a dataset name"):
        readers.plan("hf:", ReaderConfig())
    with pytest.raises(ValueError, match="keep_top or classify.min_score"):
        CurationConfig(classify={"keep_top": 0.2, "min_score": 0.5})


def test_teacher_annotator_parses_scores_retries_malformed_and_counts_them():
    def responder(body):
        code = body["messages"][-1]["content"]
        if "never_scored" in code:
            return "I cannot judge this."
        if "retry_me" in code and body.get("seed") == 0:
            return "hmm"
        return "Score: 5" if "good" in code else "Score: 2"

    with OpenAIServer(responder, fail_rate=0.3, faults=("500", "429"), seed=3) as server:
        cfg = AnnotateConfig(annotator="teacher", max_attempts=2, teacher={
            "url": server.base_url, "model": server.model, "backoff_base_s": 0.01,
            "max_retries": 8})
        annotator = TeacherAnnotator(cfg)
        got = annotator.annotate(["def good(): pass", "def bad(): pass", "x = 'retry_me good'",
                                  "never_scored = 1"])
    assert [a and (a["label"], a["score"]) for a in got] == \
        [(1, 1.0), (0, 0.25), (1, 1.0), None]
    assert got[0]["annotator"].startswith("teacher:")
    assert annotator.stats["malformed"] == 1 and annotator.stats["retried"] == 2
    assert server.injected.total() > 0  # faults were injected and retried through
    assert parse_score("Educational value - score: 3") == 0.5 and parse_score("7") is None
