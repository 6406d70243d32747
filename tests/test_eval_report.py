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


def test_plot_panels_show_values_and_axes_that_show_the_differences():
    """Values on every bar; a rate on a fixed 0-1 axis (all zeros: a row of 0.00, not an empty -0.04..0.04 axis); a
    loss on an axis around its values (2.41 vs 2.38 visible); a KL estimate with its 0 line and its sign explained."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from posttrain.eval.report import _panel, metric_kind

    fig, (a, b, c) = plt.subplots(1, 3)
    _panel(a, "refusal_rate", ["base", "sft"], [0.0, 0.0])
    _panel(b, "loss", ["base", "sft"], [2.41, 2.38])
    _panel(c, "kl", ["base", "sft"], [-0.0003, 0.42])
    assert a.get_ylim() == (0.0, 1.12) and [t.get_text() for t in a.texts] == ["0", "0"]
    low, high = b.get_ylim()
    assert 2.2 < low < 2.38 and high < 2.6 and "not from 0" in b.get_title()
    assert [t.get_text() for t in b.texts] == ["2.41", "2.38"]
    assert any(line.get_ydata()[0] == 0.0 for line in c.get_lines()) and "unbiased" in c.get_title()
    plt.close(fig)
    assert [metric_kind(k, [0.5]) for k in ("exact", "loss", "kl_per_token", "mean_response_tokens")] == [
        "rate",
        "loss",
        "kl",
        "count",
    ]
