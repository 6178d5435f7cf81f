"""Choosing in-memory vs layer-streamed importance (`--offload`), and the CLI running either."""

from __future__ import annotations

import numpy as np
import pytest

from backend import memcheck
from tests.engine.test_importance_cli import ARGS, model_dir  # noqa: F401 (fixture)
from worker.cli import main
from worker.engine import memplan
from worker.engine.importance import ImportanceResult
from worker.engine.importance import offload as offload_module
from worker.engine.importance.offload import choose_mode, decide, in_memory_need
from worker.engine.out_of_core import open_checkpoint

GB = 10**9
GiB = 1 << 30


def test_decide_streams_only_when_the_in_memory_pass_does_not_fit():
    fits = decide("auto", 10 * GiB, 20 * GiB, "cuda:0")
    assert (
        not fits.streamed and fits.reason == "the in-memory pass needs 10.0 GiB of 20.0 GiB usable on cuda:0"
    )
    tight = decide("auto", 13 * GiB, 12 * GiB, "cuda:0")
    assert tight.streamed and tight.reason == "the in-memory pass needs 13.0 GiB > 12.0 GiB usable on cuda:0"
    assert decide("auto", 12 * GB, 12 * GB, "cpu").streamed is False  # exactly full still fits
    assert decide("always", 1, 10**15).streamed and decide("never", 10**15, 1).streamed is False
    assert decide("auto", None, None).reason == "not a local safetensors checkpoint, so it cannot be streamed"
    with pytest.raises(ValueError, match="local model directory with safetensors"):
        decide("always", None, None)
    with pytest.raises(ValueError, match="offload must be one of auto, never, always, got 'sometimes'"):
        decide("sometimes", 1, 1)


RUN = {"batch_size": 4, "seq_len": 32, "samples": 8, "scans": ["bi", "drop"], "block_size": 2}


def test_the_worker_decides_by_the_rule_the_api_predicts_by(model_dir, monkeypatch):  # noqa: F811
    """The in-memory pass's peak at the run's own settings, in the dtype the model loads in, against the
    device's usable memory: the worker's choice is memcheck.importance_layout's prediction (before, the
    worker compared the weights + 20% + 1 GiB, the API the whole estimate, and they could disagree)."""
    spec = open_checkpoint(model_dir).spec
    need = in_memory_need(model_dir, RUN)
    assert need == memplan.importance_memory(spec, **memplan.importance_options(RUN, "cpu"))["total"]
    assert in_memory_need(model_dir, RUN, "bfloat16") < need  # the weights in the asked dtype
    big_batch = in_memory_need(model_dir, {**RUN, "batch_size": 64, "seq_len": 256})
    assert big_batch > need  # activations count, not only the weights
    assert in_memory_need("org/hub-id", RUN) is None
    for capacity in (need - 1, need, big_batch - 1, big_batch):
        monkeypatch.setattr(offload_module, "free_device_bytes", lambda device, c=capacity: c)
        for run in (RUN, {**RUN, "batch_size": 64, "seq_len": 256}):
            mode = choose_mode(model_dir, run, device="cpu")
            predicted = memcheck.importance_layout(spec, run, "cpu", capacity)["streamed"]
            assert mode.streamed == predicted, (capacity, run, mode)
    monkeypatch.setattr(offload_module, "free_device_bytes", lambda device: 1000)
    mode = choose_mode(model_dir, RUN, device="cpu")
    assert mode.streamed and mode.reason.endswith("> 1000 B usable on cpu")
    assert not choose_mode(model_dir, RUN, offload="never").streamed


def run(model_dir, out, *extra):  # noqa: F811
    assert (
        main(
            ["importance", str(model_dir), *ARGS, "--scans", "bi,drop,block,angular", *extra, "-o", str(out)]
        )
        == 0
    )
    return ImportanceResult.load(out)


def test_cli_streamed_run_equals_the_in_memory_run_and_says_why(model_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    in_memory = run(model_dir, tmp_path / "mem", "--offload", "never")
    out = capsys.readouterr()
    assert "importance: in memory (offload=never)" in out.err
    assert "mode: in_memory (offload=never)" in out.out

    monkeypatch.setattr(offload_module, "free_device_bytes", lambda device: 1000)  # auto: does not fit
    streamed = run(model_dir, tmp_path / "auto")
    out = capsys.readouterr()
    assert "importance: streamed, one layer at a time (the in-memory pass needs" in out.err
    assert "mode: streamed (the in-memory pass needs" in out.out
    assert streamed.manifest["execution"]["mode"] == "streamed"
    for name, expected in in_memory.arrays.items():
        np.testing.assert_allclose(streamed.arrays[name], expected, rtol=1e-6, atol=0, err_msg=name)
    assert streamed.manifest["weights_sha256"] == in_memory.manifest["weights_sha256"]
    assert streamed.manifest["model"] == in_memory.manifest["model"] == str(model_dir)


def test_cli_offload_always_needs_a_local_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["importance", "org/hub-id", *ARGS, "--offload", "always", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("prunescope importance: error: streamed importance needs a local model directory")
    assert not out.exists()


def test_cli_spill_limit_caps_the_disk_stores_and_prints_the_passes(model_dir, tmp_path, capsys, monkeypatch):  # noqa: F811
    """--spill-limit-gb (else PRUNESCOPE_SPILL_LIMIT_GB) bounds the disk tier: with no free memory and
    room for 2 stores, drop's cuts run one per pass, the CLI prints the passes, the scores are the same.
    A limit that is not a positive number is a one-line error before anything runs."""
    from worker.engine.importance import activation_store

    monkeypatch.setattr(activation_store, "free_device_bytes", lambda device: 0)
    scans = ["--scans", "bi,drop", "--offload", "always"]
    whole = main(["importance", str(model_dir), *ARGS, *scans, "-o", str(tmp_path / "one")])
    assert whole == 0
    one = ImportanceResult.load(tmp_path / "one")
    assert one.manifest["execution"]["passes"] == 1
    assert "passes over the checkpoint: 1 (" in capsys.readouterr().out
    store = one.manifest["execution"]["activations"]["store_bytes"]
    limit = f"{2.5 * store / 1e9:.12g}"
    assert (
        main(
            [
                "importance",
                str(model_dir),
                *ARGS,
                *scans,
                "--spill-limit-gb",
                limit,
                "-o",
                str(tmp_path / "cli"),
            ]
        )
        == 0
    )
    capped = ImportanceResult.load(tmp_path / "cli")
    from transformers import AutoConfig

    layers = AutoConfig.from_pretrained(model_dir).num_hidden_layers
    execution = capped.manifest["execution"]
    assert execution["activations"]["budget_bytes"]["disk"] == int(float(limit) * 1e9)
    assert execution["passes"] == layers > 1  # the stream and one drop cut per pass
    assert f"passes over the checkpoint: {execution['passes']} (" in capsys.readouterr().out
    for name, expected in one.arrays.items():
        np.testing.assert_allclose(capped.arrays[name], expected, rtol=1e-6, atol=0, err_msg=name)
    monkeypatch.setenv("PRUNESCOPE_SPILL_LIMIT_GB", limit)  # the setting, when the flag is not given
    assert main(["importance", str(model_dir), *ARGS, *scans, "-o", str(tmp_path / "env")]) == 0
    assert ImportanceResult.load(tmp_path / "env").manifest["execution"]["passes"] == execution["passes"]
    capsys.readouterr()
    for bad in ("0", "-1", "nan"):
        out = tmp_path / f"bad{bad}"
        assert (
            main(["importance", str(model_dir), *ARGS, *scans, "--spill-limit-gb", bad, "-o", str(out)]) == 2
        )
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert "--spill-limit-gb must be a positive number of GB" in err and not out.exists()


def test_cli_spill_limit_beyond_the_free_disk_is_capped_and_says_so(model_dir, tmp_path, caplog, monkeypatch):  # noqa: F811
    """A --spill-limit-gb larger than the spill disk's free space less its 2 GiB reserve would fill the
    disk: the disk tier holds only that free space (2 stores here: one drop cut per pass, as with a limit
    of 2 stores), the run's log warns that the limit was capped (stderr of the CLI, the job's log of a
    worker) and the manifest names which limit held."""
    from transformers import AutoConfig

    from worker.engine.importance import activation_store

    monkeypatch.setattr(activation_store, "free_device_bytes", lambda device: 0)
    scans = ["--scans", "bi,drop", "--offload", "always"]
    assert main(["importance", str(model_dir), *ARGS, *scans, "-o", str(tmp_path / "one")]) == 0
    store = ImportanceResult.load(tmp_path / "one").manifest["execution"]["activations"]["store_bytes"]
    free = activation_store.DISK_RESERVE_BYTES + 2 * store + 100
    monkeypatch.setattr(activation_store, "free_disk_bytes", lambda spill_dir: free)
    out = tmp_path / "capped"
    with caplog.at_level("WARNING", logger=activation_store.__name__):
        assert (
            main(["importance", str(model_dir), *ARGS, *scans, "--spill-limit-gb", "1000", "-o", str(out)])
            == 0
        )
    execution = ImportanceResult.load(out).manifest["execution"]
    assert execution["activations"]["budget_bytes"]["disk"] == 2 * store + 100
    assert execution["activations"]["disk_limit"] == "free space (capped the spill limit)"
    assert execution["passes"] == AutoConfig.from_pretrained(model_dir).num_hidden_layers > 1
    (warning,) = [r.getMessage() for r in caplog.records if "capped" in r.getMessage()]
    assert (
        "the spill limit of 1000 GB (931.3 GiB) exceeds" in warning and "the free space holds" in warning
    ), warning
