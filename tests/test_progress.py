"""Progress off a terminal: plain lines at an interval (step, loss, lr, tokens/s, ETA), one last line at the end,
nothing on stdout; on a terminal a tqdm bar."""

import io

from posttrain.progress import Progress, duration


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_plain_lines_off_a_terminal_with_eta_and_a_last_line():
    out = io.StringIO()
    bar = Progress(100, "train sft", "step", stream=out, interval_s=0.0)
    bar.update(1, loss=2.5, lr=3e-4, tok_s=1000)
    bar.update(49, loss=1.25)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # every update at interval 0; close adds nothing when the last state was printed
    assert lines[0].startswith("[train sft] step 1/100 (1%) loss 2.5 lr 0.0003 tok_s 1000 | ")
    assert "step 50/100 (50%) loss 1.25" in lines[1] and "ETA" in lines[1]


def test_the_interval_limits_lines_and_close_prints_the_final_state():
    out = io.StringIO()
    bar = Progress(1000, "generate", "prompt", stream=out, interval_s=3600)
    for _ in range(1000):
        bar.update(1)
    bar.close()
    assert out.getvalue().splitlines() == [out.getvalue().splitlines()[-1]]
    assert out.getvalue().startswith("[generate] prompt 1000/1000 (100%) | ") and "ETA" not in out.getvalue()


def test_disabled_prints_nothing_and_a_terminal_gets_a_bar():
    out = io.StringIO()
    bar = Progress(10, "x", stream=out, enabled=False, interval_s=0)
    bar.update(5)
    bar.close()
    assert out.getvalue() == ""
    tty = Tty()
    bar = Progress(10, "x", stream=tty, interval_s=0)
    assert bar.bar is not None
    bar.update(10, loss=1.0)
    bar.close()
    assert "10/10" in tty.getvalue()


def test_duration():
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m05s"]


def test_sft_under_a_pipe_writes_progress_lines_to_stderr_only(tmp_path, monkeypatch, capfd):
    """`posttrain sft ... | tee log` (stderr not a TTY): progress lines with step, loss, lr and tokens/s appear while
    it trains, stdout keeps only the final JSON line."""
    import json

    from helpers import training_files
    from posttrain.cli import main as cli

    d = training_files(tmp_path, 8)
    monkeypatch.setenv("POSTTRAIN_PROGRESS_EVERY_S", "0")
    args = [f"model={d / 'model'}", f"data={d / 'sft.jsonl'}", f"output_dir={tmp_path / 'run'}"]
    assert cli(["sft", *args, "train.max_steps=3", "train.batch_size=4"]) == 0
    out, err = capfd.readouterr()
    lines = [x for x in err.splitlines() if x.startswith("[train run] step ")]
    assert [x.split()[3] for x in lines] == ["1/3", "2/3", "3/3"]
    assert all(" loss " in x and " lr " in x and " tok_s " in x for x in lines)
    assert json.loads(out.strip().splitlines()[-1])["steps"] == 3
