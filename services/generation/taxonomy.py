"""The topic taxonomy (``data/topics.yaml``) and the seeded stream of prompt specs.

A spec is a pure function of ``(seed, kind, index)``: spec ``i`` is the same in every
process, every run and every redelivery, so a work unit is just a range of indices.
"""

from __future__ import annotations

import functools
import hashlib
import random
from dataclasses import asdict, dataclass
from importlib import resources
from typing import Any, Literal

import yaml

Kind = Literal["textbooks", "exercises"]
KINDS: tuple[str, ...] = ("textbooks", "exercises")


@dataclass(frozen=True)
class Concept:
    name: str
    area: str
    level: str


@dataclass(frozen=True)
class Taxonomy:
    concepts: tuple[Concept, ...]
    audiences: tuple[str, ...]
    styles: tuple[str, ...]
    lengths: dict[str, int]
    function_verbs: tuple[str, ...]
    function_objects: tuple[str, ...]

    @property
    def digest(self) -> str:
        """Changes when the taxonomy does (recorded in the dataset manifest)."""
        return hashlib.sha256(repr(self).encode()).hexdigest()[:16]


@functools.cache
def load_taxonomy() -> Taxonomy:
    raw = yaml.safe_load(resources.files("services.generation").joinpath(
        "data/topics.yaml").read_text(encoding="utf-8"))
    concepts = tuple(Concept(name, area, level)
                     for area, levels in raw["areas"].items()
                     for level, names in levels.items() for name in names)
    return Taxonomy(concepts, tuple(raw["audiences"]), tuple(raw["styles"]),
                    dict(raw["lengths"]), tuple(raw["function_verbs"]),
                    tuple(raw["function_objects"]))


@dataclass(frozen=True)
class Spec:
    """One prompt's constraints. Textbooks use audience/style/length; exercises use
    function_name."""

    kind: str
    index: int
    seed: int
    """The teacher's sampling seed for this spec (derived from the stream seed and index)."""
    concept: Concept
    audience: str = ""
    style: str = ""
    length: str = ""
    function_name: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def spec_at(kind: str, seed: int, index: int, taxonomy: Taxonomy | None = None) -> Spec:
    """Spec ``index`` of the stream ``(kind, seed)``."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    tax = taxonomy or load_taxonomy()
    rng = random.Random(f"{kind}:{seed}:{index}")  # str seeds hash with SHA-512: stable
    concept = rng.choice(tax.concepts)
    teacher_seed = rng.randrange(2**31)
    if kind == "textbooks":
        return Spec(kind, index, teacher_seed, concept, audience=rng.choice(tax.audiences),
                    style=rng.choice(tax.styles), length=rng.choice(sorted(tax.lengths)))
    name = f"{rng.choice(tax.function_verbs)}_{rng.choice(tax.function_objects)}"
    return Spec(kind, index, teacher_seed, concept, function_name=name)


def specs(kind: str, seed: int, start: int, count: int) -> list[Spec]:
    tax = load_taxonomy()
    return [spec_at(kind, seed, i, tax) for i in range(start, start + count)]
