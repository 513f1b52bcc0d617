"""The rehearsal tier runs the built images (``make images``) as containers; the packed data
set of the model tests is shared with it."""

from __future__ import annotations

from tests.model.conftest import packed, text_dataset  # noqa: F401  (fixtures)
