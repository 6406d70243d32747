"""The report: JSON round trip, markdown tables with escaped generations, plots only where models are compared."""

import json

from posttrain.eval.report import escape_md, write_report


def _results(models):
    return {
        "models": models,
        "metrics": {
            "likelihood": {
                m: {"loss": 1.0 + i, "perplexity": 2.718 * (i + 1), "tokens": 10}
                for i, m in enumerate(models)
            }
        },
        "per_task": {},
        "rows": {},
        "win_rates": [],
        "samples": {
            "accuracy": [{"prompt": "a | b\nc", "reference": "*x*", **{m: "<b>hi</b>" for m in models}}]
        },
        "config": {"model": "m"},
    }


def test_escape_md():
    assert escape_md("a | b\nc") == "a \\| b<br>c"
    assert escape_md("*x* _y_ <b>") == "\\*x\\* \\_y\\_ \\<b\\>"
    assert escape_md("x" * 10, limit=4) == "xxxx…"


def test_write_report_single_model_has_tables_and_no_plots(tmp_path):
    paths = write_report(_results(["sft"]), tmp_path)
    assert [p.name for p in paths] == ["report.json", "report.md"]
    assert json.loads((tmp_path / "report.json").read_text())["metrics"]["likelihood"]["sft"]["tokens"] == 10
    md = (tmp_path / "report.md").read_text()
    assert "| model | loss | perplexity | tokens |" in md
    assert "| sft | 1 | 2.718 | 10 |" in md
    assert "| a \\| b<br>c | \\*x\\* | \\<b\\>hi\\</b\\> |" in md  # one escaped row: the table stays intact


def test_write_report_plots_comparisons(tmp_path):
    paths = write_report(_results(["base", "sft"]), tmp_path)
    png = tmp_path / "plot_likelihood.png"
    assert png in paths and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert write_report(_results(["base", "sft"]), tmp_path / "np", plots=False)[-1].name == "report.md"


def test_a_failing_report_leaves_the_previous_one(tmp_path, monkeypatch):
    """Everything is rendered before anything is written, and each file is replaced whole: a failure part way
    (here: rendering the markdown) leaves the previous report.json and report.md as they were."""
    import posttrain.eval.report as report

    write_report(_results(["a"]), tmp_path, plots=False)
    old = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken(results):
        raise RuntimeError("render failed")

    monkeypatch.setattr(report, "render_markdown", broken)
    try:
        write_report(_results(["b"]), tmp_path, plots=False)
    except RuntimeError:
        pass
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == old
