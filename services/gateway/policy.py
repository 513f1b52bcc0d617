"""What a submitted run may ask for: the checks between a valid spec and a started run.

A run spec is a request from the network to run units on workers that hold credentials (S3,
Redis, the teacher's API key). So, beyond the spec's own types (:mod:`primer.runs`), a run may
only:

- set the ``config`` keys on its run kind's allow-list (:mod:`primer.policy`, which the
  operator applies to custom resources too): never the sandbox, an environment-variable
  name, an endpoint, a storage URI or a path;
- name an OpenAI-compatible endpoint (``teacher.url``) the operator listed
  (``GatewayConfig.endpoints``); its key is always the workers' own;
- read inputs (``input``, ``checkpoint``) under the configured roots
  (``GatewayConfig.input_roots`` and the storage root), and write only under its own prefix,
  ``<storage root>/runs/<run id>/``.

Every problem is reported at once, as ``(field, message)`` pairs the API turns into a 422.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from primer.policy import Problem, config_problems, endpoint_problems
from services.gateway.config import GatewayConfig
from services.gateway.models import Body, CurationBody, EvaluationBody, GenerationBody


def check(spec: Body, config: GatewayConfig) -> list[Problem]:
    """Every reason to refuse ``spec`` under ``config``; empty when it may run."""
    problems: list[Problem] = []
    roots = (config.storage_root, *config.input_roots)
    if isinstance(spec, EvaluationBody):
        problems += _input("checkpoint", spec.checkpoint, roots)
    else:
        problems += config_problems(spec, spec.config)
    if isinstance(spec, GenerationBody) and spec.teacher.url is not None:
        problems += endpoint_problems("teacher.url", spec.teacher.url, config.endpoints,
                                      "PRIMER_GATEWAY_ENDPOINTS")
    if isinstance(spec, CurationBody) and spec.input is not None:
        problems += _input("input", spec.input, roots, hub=True)
    if spec.output is not None:
        problems += _output(spec.output)
    return problems


def run_output(config: GatewayConfig, run_id: str, spec: Body) -> str:
    """Where the run writes: ``<root>/runs/<run id>/<output or component>`` (checked first)."""
    sub = posixpath.normpath(spec.output) if spec.output is not None else spec.component
    return f"{config.storage_root.rstrip('/')}/runs/{run_id}/{sub}"


def _output(output: str) -> list[Problem]:
    sub = posixpath.normpath(output)
    if "://" in output or output.startswith("/") or sub in (".", "..") or \
            sub.startswith("../"):
        return [("output", f"{output!r} must be a relative folder inside the run's own "
                 "prefix <storage root>/runs/<run id>/ (e.g. 'curated/v1'), not a path or "
                 "URI of its own")]
    return []


# -- storage locations --------------------------------------------------------------------------

@dataclass(frozen=True)
class Location:
    """A storage URI reduced to what containment depends on: where, and which folders."""

    place: str  # "local", or "s3://<bucket>"
    parts: tuple[str, ...]
    absolute: bool = False

    def within(self, root: Location) -> bool:
        return (self.place, self.absolute) == (root.place, root.absolute) and \
            self.parts[:len(root.parts)] == root.parts


def location(uri: str) -> Location:
    """``uri`` as a :class:`Location`, ``..`` folded away; ValueError for any other scheme."""
    if "://" not in uri:
        return _local(uri)
    parsed = urlparse(uri)
    if parsed.scheme == "file" and parsed.netloc in ("", "localhost"):
        return _local(unquote(parsed.path))  # as primer.storage opens it
    if parsed.scheme == "s3" and parsed.netloc:
        parts = _fold(parsed.path)
        if parts is None:
            raise ValueError(f"{uri!r} climbs above its bucket with '..'")
        return Location(f"s3://{parsed.netloc}", parts)
    raise ValueError(f"{uri!r}: only local paths, file:///… and s3://bucket/… are storage")


def _local(path: str) -> Location:
    parts = _fold(path)
    if parts is None:
        raise ValueError(f"{path!r} climbs above where it starts with '..'")
    return Location("local", parts, absolute=path.startswith("/"))


def _fold(path: str) -> tuple[str, ...] | None:
    """Path segments with ``.`` and ``..`` resolved textually; None when ``..`` escapes."""
    out: list[str] = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                return None
            out.pop()
        else:
            out.append(part)
    return tuple(out)


def _input(field: str, uri: str, roots: tuple[str, ...], hub: bool = False) -> list[Problem]:
    if uri.startswith("hf:"):
        if hub and "hf:" in roots:
            return []
        return [(field, f"{uri!r}: Hugging Face datasets are not an input this gateway "
                 "allows (the operator adds 'hf:' to PRIMER_GATEWAY_INPUT_ROOTS to allow "
                 "them)")]
    try:
        where = location(uri)
    except ValueError as exc:
        return [(field, str(exc))]
    allowed = [r for r in roots if r != "hf:"]
    if any(where.within(location(root)) for root in allowed):
        return []
    return [(field, f"{uri!r} is outside the storage roots runs may read from "
             f"({', '.join(allowed)}; PRIMER_DATA and PRIMER_GATEWAY_INPUT_ROOTS)")]
