from primer.datasets import DatasetWriter, Producer
from services.generation.report import distinct_n, diversity_report
from services.generation.taxonomy import load_taxonomy


def test_distinct_n_counts_unique_ngrams():
    assert distinct_n(["a b a b"], (1, 2)) == {"distinct_1": 0.5, "distinct_2": round(2 / 3, 4)}
    assert distinct_n(["x y z", "x y z"], (3,)) == {"distinct_3": 0.5}


def test_report_measures_similarity_and_coverage(tmp_path):
    tax = load_taxonomy()
    texts = ["Binary search halves a sorted list until it finds the target value.",
             "Dictionaries map keys to values; lookups take constant time on average.",
             "A for loop repeats its body once for every item of a sequence.",
             "Recursion solves a problem by calling the same function on a smaller input."]
    rows = [{"id": str(i), "text": t, "topic": tax.concepts[i].name,
             "audience": tax.audiences[i % 2], "style": tax.styles[0]}
            for i, t in enumerate(texts)]
    rows.append({**rows[0], "id": "copy"})  # an exact duplicate: its neighbour is itself
    uri = str(tmp_path / "ds")
    with DatasetWriter(uri, Producer("test")) as writer:
        writer.write_many(rows)
    report = diversity_report(uri)
    assert report["records"] == 5 and report["sampled"] == 5
    assert report["topics_used"] == 4 and report["topics_total"] == len(tax.concepts)
    assert report["audiences_used"] == 2 and report["styles_used"] == 1
    assert report["nn_sim_max"] > 0.99 and report["share_nn_sim_above_0.95"] == 0.4
    assert report["nn_sim_p50"] < 0.5  # the distinct texts are far from each other
    assert 0 < report["distinct_1"] < 1 and report["distinct_4"] < 1
