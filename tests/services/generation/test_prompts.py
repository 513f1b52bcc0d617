import importlib.metadata
import re

from typer.testing import CliRunner

from primer.cli import build_app
from services.generation.config import GenerationSettings
from services.generation.prompts import messages, request
from services.generation.taxonomy import load_taxonomy, spec_at, specs

PLUGIN = importlib.metadata.EntryPoint(name="generate", value="services.generation.cli:app",
                                       group="primer.commands")


def test_taxonomy_has_200_concepts_with_levels_audiences_and_styles():
    tax = load_taxonomy()
    assert len(tax.concepts) >= 200
    assert len({c.name for c in tax.concepts}) == len(tax.concepts)
    assert {c.level for c in tax.concepts} == {"beginner", "intermediate", "advanced"}
    assert len(tax.audiences) >= 5 and len(tax.styles) >= 3 and len(tax.lengths) >= 3


def test_spec_stream_is_seeded_deterministic_and_diverse():
    a = specs("textbooks", 3, 100, 200)
    assert a == specs("textbooks", 3, 100, 200)
    assert a[5] == spec_at("textbooks", 3, 105)  # any index on its own, in any process
    assert a != specs("textbooks", 4, 100, 200)
    assert len({s.concept for s in a}) > 100 and len({s.audience for s in a}) == 10
    ex = specs("exercises", 3, 0, 200)
    assert all(re.fullmatch(r"[a-z]+_[a-z_]+", s.function_name) for s in ex)
    assert len({s.function_name for s in ex}) > 150


def test_prompts_come_from_template_files_with_every_field_filled():
    for kind in ("textbooks", "exercises"):
        spec = spec_at(kind, 0, 7)
        system, user = messages(spec)
        assert system["role"] == "system" and user["role"] == "user"
        assert spec.concept.name in user["content"] and "$" not in user["content"]
    book = spec_at("textbooks", 0, 7)
    text = messages(book)[1]["content"]
    assert book.audience in text and str(load_taxonomy().lengths[book.length]) in text
    ex = spec_at("exercises", 0, 7)
    assert f"`{ex.function_name}`" in messages(ex)[1]["content"]
    req = request(ex, GenerationSettings(temperature=0.5))
    assert req.seed == ex.seed and req.temperature == 0.5 and req.max_tokens == 768


def test_dry_run_prints_prompts_and_a_cost_estimate_and_sends_nothing(tmp_path):
    result = CliRunner().invoke(build_app(plugins=[PLUGIN]), [
        "generate", "textbooks", "--count", "1000", "--teacher-url", "http://127.0.0.1:9/v1",
        "--teacher-model", "m", "--output", str(tmp_path / "out"), "--dry-run",
        "--teacher.price_input_per_1k=0.5", "--teacher.price_output_per_1k=1.5"])
    assert result.exit_code == 0, result.output
    first = messages(spec_at("textbooks", 0, 0))[1]["content"]
    assert first.splitlines()[0] in result.output
    # 1250 requests × (prompt ≈ 100 tokens × $0.5 + 1536 × $1.5) / 1000 ≈ $2,940
    cost = float(re.search(r"estimated cost: at most \$([\d,.]+)", result.output)
                 .group(1).replace(",", ""))
    assert 2_900 < cost < 3_100
    assert not (tmp_path / "out").exists()
