"""Durability under load: labellers keep submitting to a real `posttrain label serve` process that is SIGKILLed
mid-load; every judgement it acknowledged is in the database and the database passes `PRAGMA integrity_check`.
(`python -m posttrain.feedback.loadtest` runs the full-size measurement: 16 clients, 200 half-open connections.)"""

from posttrain.feedback.loadtest import run


def test_sigkill_mid_load_loses_no_acknowledged_judgement(tmp_path):
    report = run(str(tmp_path), clients=4, seconds=0.8, tasks=100)
    assert report["acknowledged"] > 0
    assert report["acknowledged_lost"] == 0 and report["stored"] >= report["acknowledged"]
    assert report["integrity_check"] == "ok"
    assert "Traceback" not in report["server_stderr"]
