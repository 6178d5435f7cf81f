"""Bad input under torchrun is told once, not once per rank: the ranks of a node check the same
arguments against the same files before they join their process group, so only the node's first rank
prints such an error (the others exit with the same status, silently); a failure after joining may be
one rank's own, and each rank that hits it prints it (worker.cli.main)."""

from __future__ import annotations

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
def second_rank(monkeypatch):
    """This process as torchrun's rank 1 of 2 on one node, before it joins the group."""
    from worker import cli
    from worker.engine import launch

    for name, value in (("RANK", "1"), ("WORLD_SIZE", "2"), ("LOCAL_RANK", "1"), ("LOCAL_WORLD_SIZE", "2")):
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(cli, "QUIET_RANK_LINGER_S", 0.0)
    monkeypatch.setattr(launch, "group_joined", False)
    return launch


BAD = ["evaluate", "worker/demo/teacher", "--limit", "0"]
SAID = "prunescope evaluate: error: --limit must be at least 1, got 0"


def test_a_rank_other_than_the_first_exits_silently_with_the_same_status(second_rank, capsys):
    from worker.cli import main

    assert main(BAD) == 2
    assert capsys.readouterr().err == ""
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error alike
        main(["evaluate", "worker/demo/teacher", "--no-such-flag"])
    assert exit_.value.code == 2 and capsys.readouterr().err == ""


def test_the_first_rank_of_a_node_and_a_rank_that_joined_its_group_say_their_error(
    second_rank, capsys, monkeypatch
):
    from worker.cli import main

    second_rank.group_joined = True  # past the join: the error may be this rank's alone
    assert main(BAD) == 2
    assert SAID in capsys.readouterr().err
    second_rank.group_joined = False
    for name, value in (("RANK", "2"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "0")):
        monkeypatch.setenv(name, value)  # the first rank of the second node
    assert main(BAD) == 2
    assert SAID in capsys.readouterr().err
