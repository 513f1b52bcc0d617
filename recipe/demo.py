"""``primer demo``: the phi-1 recipe end to end, at miniature scale, on this machine.

Stages (each one subprocess running the real ``primer`` command a user would type; each
writes a dataset or checkpoint under ``<storage.root>/runs/<run>/``; a rerun skips a stage
whose output is committed, and the components resume unfinished work themselves)::

    sources      this interpreter's Python files → dataset (in process, work units)
    curate       primer curate: filters, dedup, annotate, MiniLM + random forest, keep
    tokenizer    primer pack --tokenizer train: byte-level BPE on the curated code, packed
    pretrain     primer train --preset tiny on the curated code; primer export
    textbooks    primer generate textbooks (teacher: --teacher-url, else the pretrained
    exercises    primer generate exercises  tiny model itself: a toy bootstrapped teacher)
    decontam     primer decontaminate: curated code, textbooks, exercises vs HumanEval/MBPP
    codetextbook primer pack (curated + textbooks) → primer train --train.init_from (phi-1-base)
    finetune     primer finetune on the exercises (skipped, and said so, when none is valid)
    eval         primer eval run (pass@1) and primer eval nll on HumanEval and MBPP
    ablation     (--ablation) same token budget on unfiltered / a random subset of it as large
                 as the filtered code / filtered / filtered+synthetic
    report       report.html (self-contained) + report.md under runs/<run>/report/

The demo drives the components through their commands, and reads what they wrote only
through core formats (dataset manifests, stage summaries, JSON files).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
from rich.console import Console
from rich.markup import escape

from primer.datasets import (
    Manifest,
    Producer,
    ShardInfo,
    commit_dataset,
    open_dataset,
    read_manifest,
    write_shard,
)
from primer.executor import Job, LocalExecutor, WorkUnit
from primer.storage import open_storage

MAX_BYTES = 1 << 20  # larger files are data, not code worth reading
TOY_TEACHER_NOTE = (
    "No --teacher-url was given, so the teacher is the demo's own pretrained tiny model "
    "(a bootstrapped toy teacher): its text is toy-quality, most of it is rejected by "
    "validation, and what passes is not educational. Point the demo at a real teacher with "
    "`primer demo --teacher-url http://HOST:8000/v1 --teacher-model NAME` (any "
    "OpenAI-compatible server: vLLM, TGI, Ollama, OpenAI; key from OPENAI_API_KEY) or "
    "`--teacher-url /path/to/hf-checkpoint` (run in-process with transformers).")


@dataclass(frozen=True)
class Plan:
    """Sizes of everything; ``quick`` is the test suite's setting (≤ 5 min on 2 cores)."""

    files: int
    site_packages: bool
    annotate_sample: int
    embed_tokens: int
    seq_len: int = 128
    vocab: int = 2048
    pretrain_steps: int = 40
    textbook_steps: int = 15
    finetune_steps: int = 10
    count: int = 2  # textbooks and exercises asked for
    specs_factor: float = 4.0  # specs tried per record asked for (toy teacher: all of them)
    max_tokens_textbook: int = 96
    max_tokens_exercise: int = 96
    eval_limit: int | None = 10
    eval_new_tokens: int = 64
    nll_limit: int | None = 20
    decontam_synthetic: tuple[str, ...] = ("ngram", "ast")
    ablation_steps: int = 30
    ablation_seeds: tuple[int, ...] = (0, 1)
    ablation_eval_limit: int | None = 10
    ablation_pass_at_1: bool = True  # NLL always; pass@1 is 0% at this scale but costs most


QUICK = Plan(files=240, site_packages=False, annotate_sample=120, embed_tokens=96,
             pretrain_steps=30, textbook_steps=10)
FULL = Plan(files=1200, site_packages=True, annotate_sample=400, embed_tokens=128,
            pretrain_steps=300, textbook_steps=100, finetune_steps=50, count=8,
            specs_factor=4.0, max_tokens_textbook=256, max_tokens_exercise=192,
            eval_limit=None, eval_new_tokens=128, nll_limit=None,
            decontam_synthetic=("ngram", "ast", "embedding"), ablation_steps=300,
            ablation_seeds=(0, 1, 2), ablation_eval_limit=40)

PAPER = [  # (model, HumanEval pass@1, MBPP pass@1) from Gunasekar et al. 2023
    ("phi-1 (1.3B, paper)", 0.506, 0.555),
    ("phi-1-base (1.3B, paper)", 0.29, None),
    ("phi-1-small (350M, paper)", 0.45, None),
]


# -- stage 0: read this machine's sources (in process) ------------------------------------------

def source_roots(quick: bool) -> list[Path]:
    """Where this interpreter's Python sources live: real code present on every machine."""
    paths = sysconfig.get_paths()
    roots = [Path(paths["stdlib"])]
    if not quick:
        roots.append(Path(paths["purelib"]))
    return [r for r in dict.fromkeys(roots) if r.is_dir()]


def list_sources(roots: list[Path], limit: int | None = None) -> list[str]:
    """Every ``*.py`` under ``roots``; with ``limit``, a stable pseudo-random subset (by a
    hash of the path), so a small sample still spans every root and package."""
    files = sorted(str(p) for root in roots for p in root.rglob("*.py") if p.is_file())
    if limit and len(files) > limit:
        files = sorted(sorted(files, key=lambda f: zlib.crc32(f.encode()))[:limit])
    return files


def read_sources(files: list[str], shard_uri: str, shard_name: str) -> dict[str, Any]:
    """Work unit: read ``files`` into one shard of records; count what was dropped and why."""
    drops: Counter[str] = Counter()
    records = []
    for path in files:
        try:
            raw = Path(path).read_bytes()
        except OSError:
            drops["unreadable"] += 1
            continue
        if not raw.strip():
            drops["empty"] += 1
        elif len(raw) > MAX_BYTES:
            drops["too_large"] += 1
        elif b"\0" in raw:
            drops["binary"] += 1
        else:
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                drops["undecodable"] += 1
                continue
            records.append({"id": hashlib.sha256(raw).hexdigest()[:16], "text": text,
                            "source": path, "lang": "python", "n_chars": len(text)})
    shard = write_shard(shard_uri, shard_name, records)
    return {"shard": shard.__dict__, "drops": dict(drops), "files": len(files)}


def read_stage(raw_uri: str, state_uri: str, quick: bool, files_limit: int,
               workers: int) -> dict[str, Any]:
    files = list_sources(source_roots(quick), limit=files_limit)
    n_units = max(1, min(16, len(files) // 200))
    groups: list[list[str]] = [[] for _ in range(n_units)]
    for f in files:  # stable assignment: the same file lands in the same unit on a rerun
        groups[zlib.crc32(f.encode()) % n_units].append(f)
    units = [WorkUnit(f"read-{i:05d}", "recipe.demo:read_sources",
                      {"files": g, "shard_uri": raw_uri, "shard_name": f"part-{i:05d}.parquet"})
             for i, g in enumerate(groups)]
    result = LocalExecutor(workers=workers).run(Job("read-sources", units, state_uri=state_uri),
                                                progress=False)
    if not result.ok:
        raise DemoError("read-sources", "; ".join(f"{f.unit_id}: {f.error}"
                                                   for f in result.failed))
    outcomes = [result.results[u.id] for u in units]
    drops = sum((Counter(o["drops"]) for o in outcomes), Counter())
    manifest = commit_dataset(raw_uri, [ShardInfo(**o["shard"]) for o in outcomes],
                              Producer("read_sources", hashlib.sha256(
                                  repr(sorted(files)).encode()).hexdigest()[:16]),
                              drop_counts=drops,
                              metadata={"files": len(files),
                                        "roots": [str(r) for r in source_roots(quick)]})
    return {"files": len(files), "rows": manifest.rows, "units_done": len(result.done),
            "units_skipped": len(result.skipped)}


# -- running the real commands --------------------------------------------------------------

class DemoError(RuntimeError):
    """A stage failed: ``detail`` is the error's own last lines, ``log`` the stage's full log."""

    def __init__(self, stage: str, detail: str, log: Path | None = None):
        super().__init__(f"stage {stage} failed: {detail}")
        self.stage, self.detail, self.log = stage, detail, log


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BOX = "╭╮╰╯│─"


def error_tail(output: str, max_lines: int = 8) -> str:
    """The error's own last lines out of a failed command's output: the exception after the
    last frame of a Python traceback (plain, or after a rich traceback box), else the last
    lines printed. Frames stay in the log; the reader needs the message first."""
    lines = [ANSI.sub("", line).rstrip() for line in output.splitlines()]
    boxed = [i for i, line in enumerate(lines) if line.startswith("╰")]
    if boxed:  # a rich traceback: the exception follows its box
        lines = lines[boxed[-1] + 1:]
    frames = [i for i, line in enumerate(lines) if line.startswith('  File "')]
    if frames:  # a plain traceback: skip the last frame's source lines (indented 4+)
        i = frames[-1] + 1
        while i < len(lines) and (lines[i].startswith("    ") or not lines[i].strip()):
            i += 1
        lines = lines[i:]
    lines = [line for line in lines if line.strip() and not set(line.strip()) <= set(BOX)]
    return "\n".join(lines[-max_lines:])


def primer_command() -> str:
    """The ``primer`` console script of this interpreter (what a user runs)."""
    here = Path(sys.executable).parent / "primer"
    return str(here) if here.exists() else (shutil.which("primer") or "primer")


@dataclass
class StageRecord:
    name: str
    status: str  # ran | resumed | skipped
    seconds: float = 0.0
    output: str = ""
    commands: list[str] = field(default_factory=list)
    note: str = ""


class Demo:
    def __init__(self, root: str, run_name: str, plan: Plan, quick: bool, workers: int,
                 teacher_url: str | None, teacher_model: str | None, console: Console):
        store = open_storage(root).child(f"runs/{run_name}")
        if "://" in store.uri and not store.uri.startswith("file://"):
            raise DemoError("setup", f"{store.uri}: the demo runs on local storage "
                            "(exported models and the report are local folders); use "
                            "--storage.root=./primer-data, or run the commands one by one")
        self.run_dir = Path(store.uri.removeprefix("file://"))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.plan, self.quick, self.workers = plan, quick, workers
        self.threads = workers  # per command; 1 while several commands run side by side
        self.teacher_url, self.teacher_model = teacher_url, teacher_model
        self.console = console
        self.stages: list[StageRecord] = []
        self.primer = primer_command()
        (self.run_dir / "logs").mkdir(exist_ok=True)
        self.facts: dict[str, Any] = {}

    def p(self, *parts: str) -> str:
        return str(self.run_dir.joinpath(*parts))

    # -- helpers ---------------------------------------------------------------------------

    def sh(self, stage: str, args: list[str], record: StageRecord) -> str:
        """Run ``primer ARGS`` with its output to logs/<stage>.log; returns stdout."""
        cmd = [self.primer, *args]
        shown = " ".join(_quote(a) for a in ["primer", *args])
        record.commands.append(shown)
        self.console.print(f"  [dim]$ {shown}[/]", highlight=False, soft_wrap=True)
        env = {**os.environ, "COLUMNS": "120", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": str(self.threads), "TRANSFORMERS_VERBOSITY": "error",
               "HF_HUB_OFFLINE": "1",
               "TYPER_STANDARD_TRACEBACK": "1"}  # plain tracebacks: the log reads as text
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        log = self.run_dir / "logs" / f"{stage}.log"
        with log.open("a", encoding="utf-8") as f:
            f.write(f"$ {shown}\n{proc.stdout}\n{proc.stderr}\n[exit {proc.returncode}]\n")
        if proc.returncode != 0:
            tail = error_tail(proc.stderr if proc.stderr.strip() else proc.stdout)
            name = " ".join(["primer", *itertools.takewhile(str.isidentifier, args)])
            raise DemoError(stage, f"`{name}` exited {proc.returncode}\n{tail}", log)
        return proc.stdout

    # -- stages ----------------------------------------------------------------------------

    def timings(self) -> dict[str, Any]:
        path = self.run_dir / "stage-times.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def run_stage(self, name: str, output: str, done: bool, fn) -> StageRecord:
        rec = StageRecord(name, "resumed" if done else "ran", output=output)
        self.stages.append(rec)
        self.console.print(f"[bold]stage {name}[/]" + (" (done before: resumed)" if done else ""))
        t0 = time.monotonic()
        if done:
            prev = self.timings().get(name, {})
            rec.commands = prev.get("commands", [])
            rec.note = prev.get("note", "")
            return rec
        note = fn(rec) or ""
        rec.seconds = round(time.monotonic() - t0, 1)
        if note:
            rec.note = note
            self.console.print(f"  {note}", highlight=False)
        times = self.timings()
        times[name] = {"seconds": rec.seconds, "commands": rec.commands, "note": rec.note}
        (self.run_dir / "stage-times.json").write_text(json.dumps(times, indent=1))
        return rec

    def committed(self, run: str, steps: int) -> bool:
        return (Path(run) / "checkpoints" / f"step-{steps}" / "COMMITTED").exists()

    def train(self, stage: str, rec: StageRecord, data: str, out: str, steps: int,
              extra: list[str] = (), finetune_from: str | None = None) -> None:
        every = max(10, steps // 4)
        common = ["--output", out, "--steps", str(steps), "--resume", "auto",
                  f"--checkpoint.every={every}", "--checkpoint.keep_last=1",
                  f"--data.workers={self.workers}", *extra]
        if finetune_from:
            self.sh(stage, ["finetune", "--preset", "tiny", "--init", finetune_from,
                            "--data", data, *common], rec)
        else:
            self.sh(stage, ["train", "--preset", "tiny", "--data", data, *common], rec)

    def export(self, stage: str, rec: StageRecord, run: str, out: str) -> None:
        if not (Path(out) / "config.json").exists():
            self.sh(stage, ["export", run, out], rec)

    def evaluate(self, stage: str, rec: StageRecord, model: str, out: str,
                 limit: int | None, nll_limit: int | None, pass_at_1: bool = True) -> None:
        pl = self.plan
        lim = [f"--limit={limit}"] if limit else []
        if pass_at_1 and not all((Path(out) / b / "_summary.json").exists()
                                 for b in ("humaneval", "mbpp")):
            self.sh(stage, ["eval", "run", "--model", model, "-b", "humaneval,mbpp",
                            "--output", out, *lim,
                            f"--generation.max_new_tokens={pl.eval_new_tokens}",
                            f"--workers={self.workers}"], rec)
        nlim = [f"--limit={nll_limit}"] if nll_limit else []
        if not (Path(out) / "nll" / "humaneval" / "_summary.json").exists():
            self.sh(stage, ["eval", "nll", "--model", model, "-b", "humaneval",
                            "--output", f"{out}/nll", *nlim], rec)

    def teacher_args(self) -> tuple[list[str], str]:
        if self.teacher_url:
            args = ["--teacher-url", self.teacher_url]
            if self.teacher_model:
                args += ["--teacher-model", self.teacher_model]
            return args, "real"
        return ["--teacher-url", self.p("models", "pretrain"),
                "--teacher-model", "primer-demo-tiny-bootstrap"], "toy"

    def run(self, ablation: bool) -> Path:
        pl, w = self.plan, str(self.workers)
        R = self.p
        t_start = time.monotonic()

        def sources(rec: StageRecord) -> str:
            out = read_stage(R("sources"), R("state", "read-sources"), self.quick, pl.files,
                             self.workers)
            return (f"{out['rows']} of {out['files']} files read into a dataset "
                    f"({out['units_done']} units run, {out['units_skipped']} resumed)")
        self.run_stage("sources", R("sources"), _has_manifest(R("sources")), sources)

        def curate(rec: StageRecord) -> str:
            self.sh("curate", ["curate", "--input", R("sources"), "--output", R("curated"),
                               "--annotator", "heuristic", "--workers", w, "--write-dropped",
                               f"--annotate.sample_size={pl.annotate_sample}",
                               f"--classify.max_tokens={pl.embed_tokens}",
                               "--classify.n_estimators=100"], rec)
            return f"kept {read_manifest(R('curated')).rows} files"
        self.run_stage("curate", R("curated"), _has_manifest(R("curated")) and Path(
            R("curated", "_summary.json")).exists(), curate)

        def tokenizer(rec: StageRecord) -> str:
            self.sh("tokenizer", ["pack", R("curated"), "--output", R("pack-code"),
                                  "--tokenizer", "train", "--vocab", str(pl.vocab),
                                  "--seq-len", str(pl.seq_len), "--workers", w], rec)
            return f"{read_manifest(R('pack-code')).metadata['windows']} windows"
        self.run_stage("tokenizer", R("pack-code"), _has_manifest(R("pack-code")), tokenizer)
        tok = R("pack-code", "tokenizer")

        def pretrain(rec: StageRecord) -> None:
            self.train("pretrain", rec, R("pack-code"), R("pretrain"), pl.pretrain_steps)
            self.export("pretrain", rec, R("pretrain"), R("models", "pretrain"))
        self.run_stage("pretrain", R("pretrain"),
                       self.committed(R("pretrain"), pl.pretrain_steps)
                       and Path(R("models", "pretrain", "config.json")).exists(), pretrain)

        targs, kind = self.teacher_args()
        self.facts["teacher"] = {"kind": kind, "url": targs[1],
                                 "model": targs[3] if len(targs) > 3 else None}
        if kind == "toy":
            self.console.print(f"[yellow]note:[/] {TOY_TEACHER_NOTE}", highlight=False)
        for gen_kind, max_tokens in (("textbooks", pl.max_tokens_textbook),
                                     ("exercises", pl.max_tokens_exercise)):
            def generate(rec: StageRecord, gen_kind=gen_kind, max_tokens=max_tokens) -> str:
                token_key = "textbook" if gen_kind == "textbooks" else "exercise"
                specs = int(pl.count * pl.specs_factor)
                self.sh(gen_kind, ["generate", gen_kind, "--count", str(pl.count),
                                   "--output", R(gen_kind), *targs,
                                   "--generation.allow_fewer=true",
                                   f"--generation.max_specs_factor={pl.specs_factor}",
                                   f"--generation.batch_size={specs}",
                                   f"--generation.max_tokens_{token_key}={max_tokens}",
                                   f"--workers={w}", f"--generation.sandbox_workers={w}"], rec)
                m = read_manifest(R(gen_kind))
                if m.rows:
                    out = self.sh(gen_kind, ["generate", "report", "--dataset", R(gen_kind),
                                             "--no-embeddings"], rec)
                    Path(R(f"{gen_kind}-diversity.json")).write_text(_json_tail(out))
                return (f"{m.rows} of {pl.count} valid after {m.metadata.get('specs')} "
                        f"specs; dropped {dict(m.drop_counts)}")
            self.run_stage(gen_kind, R(gen_kind), _has_manifest(R(gen_kind)), generate)

        # decontamination of everything that trains a model
        checks = [("sources", "text", ["ngram", "ast"]), ("curated", "text", ["ngram", "ast"]),
                  ("textbooks", "text", list(pl.decontam_synthetic)),
                  ("exercises", "solution", list(pl.decontam_synthetic))]
        if not ablation:
            checks = checks[1:]

        def decontam(rec: StageRecord) -> str:
            notes = []
            for name, column, methods in checks:
                out = R(f"{name}-clean")
                if _has_manifest(out):
                    continue
                rows = read_manifest(R(name)).rows
                if rows == 0:
                    notes.append(f"{name}: 0 rows, nothing to check")
                    continue
                self.sh("decontam", ["decontaminate", "--input", R(name), "--output", out,
                                     f"--decontaminate.methods=[{','.join(methods)}]",
                                     f"--decontaminate.text_column={column}"], rec)
            return "; ".join(notes)
        self.run_stage("decontam", R("curated-clean"),
                       all(_has_manifest(R(f"{n}-clean")) or read_manifest(R(n)).rows == 0
                           for n, _, _ in checks), decontam)

        # CodeTextbook = filtered code + synthetic textbooks, continued pretraining
        sources_ct = [R("curated-clean")]
        ct_note = "no valid textbooks: CodeTextbook is the filtered code alone"
        if _has_manifest(R("textbooks-clean")):
            m = read_manifest(R("textbooks-clean"))
            if m.rows and (m.tokens or 0) >= 2 * pl.seq_len:
                code_tokens = read_manifest(R("curated")).tokens or 1  # estimated
                sources_ct = [f"{R('curated-clean')}@{code_tokens}",
                              f"{R('textbooks-clean')}@{m.tokens}"]
                ct_note = f"{m.rows} textbooks ({m.tokens} tokens) mixed with the code"
            elif m.rows:
                ct_note = (f"{m.rows} valid textbooks hold {m.tokens} tokens, under two "
                           f"windows: CodeTextbook is the filtered code alone")
        self.facts["codetextbook"] = ct_note

        def codetextbook(rec: StageRecord) -> str:
            if not _has_manifest(R("pack-codetextbook")):
                self.sh("codetextbook", ["pack", *sources_ct, "--output",
                                         R("pack-codetextbook"), "--tokenizer", tok,
                                         "--seq-len", str(pl.seq_len), "--workers", w], rec)
            self.train("codetextbook", rec, R("pack-codetextbook"), R("base"),
                       pl.textbook_steps, [f"--train.init_from={R('pretrain')}"])
            self.export("codetextbook", rec, R("base"), R("models", "base"))
            return ct_note
        self.run_stage("codetextbook", R("base"),
                       Path(R("models", "base", "config.json")).exists(), codetextbook)

        ex_rows = read_manifest(R("exercises-clean")).rows \
            if _has_manifest(R("exercises-clean")) else 0
        finetuned = Path(R("models", "finetuned", "config.json")).exists()

        def finetune(rec: StageRecord) -> str:
            if ex_rows == 0:
                rec.status = "skipped"
                return ("skipped: 0 valid exercises survived validation and decontamination, "
                        "so there is nothing to finetune on (with a real teacher most "
                        "exercises pass)")
            try:
                self.train("finetune", rec, R("exercises-clean"), R("finetune"),
                           pl.finetune_steps,
                           [f"--data.tokenizer={tok}", "--data.completion_column=solution",
                            f"--data.seq_len={pl.seq_len}"], finetune_from=R("base"))
            except DemoError as e:
                if "fewer than one window" not in str(e):
                    raise
                rec.status = "skipped"
                return (f"skipped: the {ex_rows} valid exercises hold fewer tokens than one "
                        f"{pl.seq_len}-token window")
            self.export("finetune", rec, R("finetune"), R("models", "finetuned"))
            return f"finetuned on {ex_rows} exercises"
        ft = self.run_stage("finetune", R("finetune"), finetuned, finetune)
        if ft.status == "resumed" and not finetuned:
            ft.status = "skipped"
        have_ft = Path(R("models", "finetuned", "config.json")).exists()

        models = ["base"] + (["finetuned"] if have_ft else [])

        def evaluate(rec: StageRecord) -> str:
            for m in models:
                self.evaluate("eval", rec, R("models", m), R("eval", m), pl.eval_limit,
                              pl.nll_limit)
            return f"models: {', '.join(models)}"
        self.run_stage("eval", R("eval"), all(
            (Path(R("eval", m)) / "nll" / "humaneval" / "_summary.json").exists() for m in models),
            evaluate)

        if ablation:
            self.ablation()

        total = time.monotonic() - t_start
        from recipe import report

        facts = {**self.facts, "quick": self.quick, "plan": asdict(self.plan),
                 "workers": self.workers, "models": models, "paper": PAPER,
                 "toy_note": TOY_TEACHER_NOTE, "ablation": ablation,
                 "seconds_this_invocation": round(total, 1),
                 "stages": [asdict(s) for s in self.stages],
                 "stage_times": self.timings()}
        path = report.write(self.run_dir, facts)
        return path

    def ablation(self) -> None:
        pl, w, R = self.plan, str(self.workers), self.p
        tok = R("pack-code", "tokenizer")
        # unfiltered-subset is the control for filtered: the same amount of text, drawn at
        # random from the unfiltered files, so both arms repeat their data equally often and
        # differ only in which files they hold (the full unfiltered arm confounds quality
        # with quantity: it repeats nothing).
        arms = {"unfiltered": [R("sources-clean")],
                "unfiltered-subset": [R("ablation", "subset-unfiltered")],
                "filtered": [R("curated-clean")]}
        syn = None
        if _has_manifest(R("textbooks-clean")) and read_manifest(R("textbooks-clean")).rows:
            syn = R("pack-codetextbook")
        if syn:
            arms["filtered+synthetic"] = [syn]
        self.facts["ablation_synthetic"] = (
            "filtered+synthetic: the filtered code + the valid synthetic textbooks (the "
            "CodeTextbook pack)" if syn else "filtered+synthetic: not trained, because no "
            "synthetic textbook was valid (toy teacher), so it would be the filtered arm again")

        # each arm's packed data: the CodeTextbook pack is one already
        packs = {arm: sources[0] if sources[0] == syn
                 else R("ablation", f"pack-{arm.replace('+', '-')}")
                 for arm, sources in arms.items()}

        def ablate(rec: StageRecord) -> str:
            if not _has_manifest(R("ablation", "subset-unfiltered")):
                size_matched_subset(R("sources-clean"), R("curated-clean"),
                                    R("ablation", "subset-unfiltered"), seed=0)
            for arm, sources in arms.items():
                if not _has_manifest(packs[arm]):
                    self.sh("ablation", ["pack", *sources, "--output", packs[arm], "--tokenizer",
                                         tok, "--seq-len", str(pl.seq_len), "--workers", w], rec)

            def unit(arm: str, seed: int) -> None:
                name = f"{arm.replace('+', '-')}-seed{seed}"
                run, model = R("ablation", name), R("ablation", "models", name)
                if not self.committed(run, pl.ablation_steps):
                    self.train("ablation", rec, packs[arm], run, pl.ablation_steps,
                               [f"--train.seed={seed}", f"--data.seed={seed}"])
                self.export("ablation", rec, run, model)
                self.evaluate("ablation", rec, model, R("ablation", "eval", name),
                              pl.ablation_eval_limit, None, pl.ablation_pass_at_1)

            # Arms and seeds are independent runs: one per worker, one thread each.
            self.threads = 1
            try:
                with ThreadPoolExecutor(self.workers) as pool:
                    for done in [pool.submit(unit, a, s) for a in arms
                                 for s in pl.ablation_seeds]:
                        done.result()
            finally:
                self.threads = self.workers
            return (f"{len(arms)} arms × {len(pl.ablation_seeds)} seeds, "
                    f"{pl.ablation_steps} steps × 16 × {pl.seq_len} tokens each")
        self.run_stage("ablation", R("ablation"), all(
            Path(R("ablation", "eval", f"{a.replace('+', '-')}-seed{s}", "nll", "humaneval",
                   "_summary.json")).exists() for a in arms for s in pl.ablation_seeds), ablate)
        self.facts["ablation_arms"] = {a: [f"{a.replace('+', '-')}-seed{s}"
                                           for s in pl.ablation_seeds] for a in arms}
        # after the stage, so that a resumed run states them too
        self.facts["ablation_packs"] = packs
        self.facts["ablation_pack_tokens"] = {a: read_manifest(p).tokens
                                              for a, p in packs.items()}


def size_matched_subset(source: str, like: str, out: str, seed: int = 0) -> Manifest:
    """A random subset of ``source``'s rows holding at least as many characters of ``text``
    as ``like`` does (the smallest such prefix of a seeded shuffle), written as a dataset."""
    table = open_dataset(source).to_table()
    target = pc.sum(pc.utf8_length(open_dataset(like).to_table(["text"]).column("text")))
    target = target.as_py() or 0
    lengths = pc.utf8_length(table.column("text")).to_pylist()
    order = random.Random(seed).sample(range(table.num_rows), table.num_rows)
    chosen, chars = [], 0
    for i in order:
        if chars >= target:
            break
        chosen.append(i)
        chars += lengths[i] or 0
    shard = write_shard(out, "part-00000.parquet", table.take(sorted(chosen)))
    return commit_dataset(out, [shard], Producer("size_matched_subset"), metadata={
        "source": source, "like": like, "seed": seed, "characters": chars,
        "target_characters": target, "rows_of_source": table.num_rows})


def _has_manifest(uri: str) -> bool:
    return (Path(uri) / "_manifest.json").exists()


def _json_tail(stdout: str) -> str:
    """The JSON document a command printed last (after any log lines)."""
    start = stdout.find("{")
    return stdout[start:] if start >= 0 else "{}"


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " []*?$") else arg


def run(data_root: str = "./primer-data", run_name: str = "demo", quick: bool = False,
        workers: int | None = None, console: Console | None = None, ablation: bool = False,
        teacher_url: str | None = None, teacher_model: str | None = None,
        plan: Plan | None = None) -> Path:
    """Run (or resume) the demo; returns the path of the HTML report. ``plan`` replaces the
    sizes of ``--quick`` or the full run (benchmarks use it; the report lists what changed)."""
    console = console or Console()
    base = QUICK if quick else FULL
    plan = plan or base
    demo = Demo(data_root, run_name, plan, quick, workers or min(2, os.cpu_count() or 1),
                teacher_url, teacher_model, console)
    demo.facts["plan_changes"] = {k: v for k, v in asdict(plan).items()
                                  if v != asdict(base)[k]}
    console.print(f"[bold]primer demo[/] {'--quick ' if quick else ''}run {run_name} → "
                  f"{demo.run_dir}")
    try:
        path = demo.run(ablation)
    except DemoError as e:
        head, _, detail = str(e).partition("\n")
        console.print(f"[bold red]error:[/] {escape(head)}", highlight=False, soft_wrap=True)
        if detail:
            console.print(escape(textwrap.indent(detail, "  ")), highlight=False,
                          soft_wrap=True)
        if e.log:
            console.print(f"[bold]full log:[/] {e.log}", highlight=False, soft_wrap=True)
        console.print("Fix the cause and rerun the same command: finished stages are resumed.")
        raise SystemExit(1) from None
    console.print(f"[bold green]report:[/] {path}", highlight=False)
    console.print(f"markdown: {path.with_suffix('.md')}", highlight=False)
    return path
