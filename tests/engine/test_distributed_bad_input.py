"""Bad input under torchrun is told once per node, not once per rank: the ranks of a node check the same
arguments against the same files, so they fail alike and the first to hit a message prints it (the others
exit with the same status, silently); a message only one rank hits is still printed by it
(worker.engine.launch.first_to_say, used by worker.cli.main)."""

from __future__ import annotations

import tempfile

import pytest

from tests.engine.torchrun_helpers import run


def test_a_missing_data_file_under_two_ranks_is_told_once(tmp_path):
    missing = tmp_path / "missing.txt"
    out = tmp_path / "out"
    code, log = run(
        ["-m", "worker.cli", "distill", "worker/demo/teacher", "--data", str(missing), "-o", str(out)]
    )
    message = f"prunescope distill: error: --data: data source not found: {missing}"
    assert code != 0 and log.count(message) == 1, log
    assert "exitcode  : 2" in log, log  # the launch ends with the CLI's bad-input status
    assert not out.exists()


@pytest.fixture
def a_rank(monkeypatch, tmp_path):
    """This process as one of torchrun's 2 ranks on one node (each call of main: one rank of the launch);
    the launch's markers under tmp_path."""
    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "0")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return monkeypatch


BAD = ["evaluate", "worker/demo/teacher", "--limit", "0"]
SAID = "prunescope evaluate: error: --limit must be at least 1, got 0"


def test_the_second_rank_to_hit_an_error_exits_silently_with_the_same_status(a_rank, capsys):
    from worker.cli import main

    assert main(BAD) == 2
    assert capsys.readouterr().err.strip() == SAID
    assert main(BAD) == 2
    assert capsys.readouterr().err == ""
    usage_error = ["evaluate", "worker/demo/teacher", "--no-such-flag"]
    for says in (True, False):  # argparse's usage error alike
        with pytest.raises(SystemExit) as exit_:
            main(usage_error)
        assert exit_.value.code == 2
        assert ("unrecognized arguments: --no-such-flag" in capsys.readouterr().err) is says


def test_an_error_of_one_rank_alone_and_a_restarted_launch_are_told(a_rank, capsys):
    from worker.cli import main

    assert main(BAD) == 2
    assert SAID in capsys.readouterr().err
    assert main(["evaluate", "worker/demo/teacher", "--limit", "-1"]) == 2  # another message
    assert "--limit must be at least 1, got -1" in capsys.readouterr().err
    a_rank.setenv("TORCHELASTIC_RESTART_COUNT", "1")  # torchrun's next attempt: said again
    assert main(BAD) == 2
    assert SAID in capsys.readouterr().err


def test_one_process_always_says_its_error(monkeypatch, capsys):
    from worker.cli import main

    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    for _ in range(2):
        assert main(BAD) == 2
        assert SAID in capsys.readouterr().err
