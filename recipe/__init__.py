"""The recipe: applications built on the core and the components — the end-to-end demo, its
report, and ``primer serve``. Nothing imports ``recipe`` (an import-linter contract); it may
import ``primer``, ``services`` and ``model``."""
