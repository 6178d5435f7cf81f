"""The distillation loop: exact resume, cancellation, accumulation, baseline, teacher correction."""

import copy
import json
import queue
import threading

import pytest
import torch

from tests.engine.distill_helpers import demo_documents, demo_tokenizer, packed, tiny_llama
from worker.engine.data import PackedTokens
from worker.engine.distill import DistillConfig, distill, validate
from worker.engine.distill.checkpoint import load_checkpoint
from worker.engine.fingerprint import weights_sample_sha256

TRAIN_KEYS = {"step", "tokens", "kd_loss", "ce_loss", "loss", "lr", "grad_norm", "tokens_per_s", "elapsed"}
VAL_KEYS = {"step", "val_loss", "val_ppl", "val_kl"}


@pytest.fixture(scope="module")
def data():
    return packed("train", seq_len=24, docs=4), packed("validation", seq_len=24, docs=2)


def _config(**kw):
    base = dict(
        steps=20,
        batch_size=2,
        lr=3e-3,
        min_lr=3e-4,
        warmup_steps=3,
        val_every=10,
        val_batches=2,
        chunk_tokens=16,
        seed=5,
    )
    base.update(kw)
    return DistillConfig(**base)


def _losses(history):
    return [(m["step"], m["loss"], m["kd_loss"], m["ce_loss"], m["grad_norm"]) for m in history]


def test_resume_is_exact_and_stop_leaves_usable_checkpoint(data, tmp_path):
    train, val = data
    teacher = tiny_llama(seed=1, layers=3)
    straight = tiny_llama(seed=2)
    full = distill(straight, teacher, train, val, _config())
    assert full.steps_completed == 20 and not full.stopped

    events = []
    first = tiny_llama(seed=2)

    def stop_after_ten():
        return len([e for e in events if e.get("phase") == "train"]) >= 10

    part = distill(
        first,
        teacher,
        train,
        val,
        _config(checkpoint_every=4),
        callback=events.append,
        checkpoint_dir=tmp_path,
        should_stop=stop_after_ten,
    )
    assert part.stopped and part.steps_completed == 10
    state = load_checkpoint(tmp_path)
    assert state["step"] == 10 and state["stopped"] and state["data_position"]["next_batch"] == 10
    assert json.loads((tmp_path / "checkpoint.json").read_text())["step"] == 10
    usable = tiny_llama(seed=9)
    usable.load_state_dict(state["student"])  # the stopped checkpoint holds complete weights
    assert torch.equal(usable.lm_head.weight, first.lm_head.weight)

    resumed = tiny_llama(seed=3)  # different init: everything must come from the checkpoint
    rest = distill(resumed, teacher, train, val, _config(), checkpoint_dir=tmp_path, resume=True)
    assert rest.steps_completed == 20 and not rest.stopped
    got, want = _losses(rest.history), _losses(full.history)
    assert [g[0] for g in got] == list(range(1, 21))
    for g, w in zip(got, want):
        assert g[1:] == pytest.approx(w[1:], abs=1e-6), (g, w)
    # The step-0 validation is the first run's, not measured again by the resume (steps 0, 10, 20).
    assert [v["step"] for v in rest.validation] == [v["step"] for v in full.validation] == [0, 10, 20]
    assert [v["val_loss"] for v in rest.validation] == pytest.approx(
        [v["val_loss"] for v in full.validation], abs=1e-6
    )
    for (name, a), b in zip(resumed.state_dict().items(), straight.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_metrics_every_step_and_validation(data):
    train, val = data
    seen = []
    result = distill(
        tiny_llama(seed=2),
        tiny_llama(seed=1),
        train,
        val,
        _config(steps=4, val_every=2),
        callback=seen.append,
    )
    steps = [m for m in seen if m["phase"] == "train"]
    vals = [m for m in seen if m["phase"] == "validation"]
    assert [m["step"] for m in steps] == [1, 2, 3, 4] and [m["step"] for m in vals] == [0, 2, 4]
    assert all(TRAIN_KEYS <= set(m) for m in steps) and all(VAL_KEYS <= set(m) for m in vals)
    assert steps[-1]["tokens"] == 4 * 2 * 24
    assert all(m["tokens_per_s"] > 0 and m["grad_norm"] > 0 and m["elapsed"] > 0 for m in steps)
    assert steps[0]["lr"] == pytest.approx(1e-3)  # warm-up: step 1 of 3 at peak 3e-3
    for m in steps:  # total = tau^2 * kd (ce weight 0), and the reported CE is the student's LM loss
        assert m["loss"] == pytest.approx(m["kd_loss"], rel=1e-6)
    assert vals[-1]["val_ppl"] == pytest.approx(torch.tensor(vals[-1]["val_loss"]).exp().item(), rel=1e-6)
    assert result.final_validation["val_kl"] > 0


def test_validation_at_step_0_is_the_untouched_students_loss(data):
    """The curve starts before any update (audit 11): at the pruned student's loss, even when val_every
    is larger than the run (no validation would run before its end) or 0."""
    train, val = data
    teacher, student = tiny_llama(seed=1), tiny_llama(seed=2)
    config = _config(steps=3, val_every=50)
    before = validate(copy.deepcopy(student), teacher, val, config)
    result = distill(student, teacher, train, val, config)
    assert [v["step"] for v in result.validation] == [0, 3]
    first = result.validation[0]
    assert first["val_loss"] == pytest.approx(before["val_loss"], abs=1e-6)
    assert first["tokens"] == 0 and result.validation[-1]["tokens"] == 3 * 2 * 24
    assert result.final_validation["step"] == 3  # the run's result is still its end
    assert [
        v["step"]
        for v in distill(tiny_llama(seed=2), teacher, train, val, _config(steps=2, val_every=0)).validation
    ] == [0, 2]


def test_distillation_moves_student_towards_teacher():
    # A small fixed data set (20 blocks of one document) the student can fit in a few steps.
    blocks = PackedTokens(demo_tokenizer(), [demo_documents("train", 1)[0][:1500]], 24)
    teacher = tiny_llama(seed=1)
    with torch.no_grad():  # a more confident teacher, so the KL to a damaged copy is large
        teacher.lm_head.weight.mul_(5)
    student = copy.deepcopy(teacher)  # a damaged copy, like a freshly pruned student
    torch.manual_seed(0)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(0.5 * p.std() * torch.randn_like(p))
    cfg = _config(steps=30, batch_size=4, lr=1e-2, min_lr=1e-3, val_every=0, val_batches=4, chunk_tokens=64)
    before = validate(student, teacher, blocks, cfg)
    distill(student, teacher, blocks, blocks, cfg)
    after = validate(student, teacher, blocks, cfg)
    assert after["val_kl"] < 0.4 * before["val_kl"], (before, after)


def test_gradient_accumulation_matches_a_bigger_batch(data):
    train, val = data
    teacher = tiny_llama(seed=1)
    a, b = tiny_llama(seed=2), tiny_llama(seed=2)
    ra = distill(a, teacher, train, val, _config(steps=2, batch_size=4, grad_accum=1, val_every=0))
    rb = distill(b, teacher, train, val, _config(steps=2, batch_size=2, grad_accum=2, val_every=0))
    for x, y in zip(ra.history, rb.history):
        # Step 2's loss depends on step 1's update, so equal losses mean equal updates.
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6) and x["tokens"] == y["tokens"]
        assert x["grad_norm"] == pytest.approx(y["grad_norm"], rel=1e-5)


def test_cancel_from_another_thread_and_by_file_flag(data, tmp_path):
    train, val = data
    stop = threading.Event()
    progress = queue.Queue()
    box = {}

    def run():
        box["result"] = distill(
            tiny_llama(seed=2),
            tiny_llama(seed=1),
            train,
            val,
            _config(steps=500),
            callback=progress.put,
            checkpoint_dir=tmp_path / "a",
            should_stop=stop.is_set,
        )

    worker = threading.Thread(target=run)
    worker.start()
    while progress.get(timeout=60).get("step", 0) < 2:
        pass
    stop.set()
    worker.join(timeout=120)
    result = box["result"]
    assert result.stopped and 2 <= result.steps_completed < 500
    assert load_checkpoint(tmp_path / "a")["step"] == result.steps_completed

    flag = tmp_path / "STOP"
    flag.touch()
    flagged = distill(
        tiny_llama(seed=2),
        tiny_llama(seed=1),
        train,
        val,
        _config(),
        checkpoint_dir=tmp_path / "b",
        should_stop=flag.exists,
    )
    assert flagged.stopped and flagged.steps_completed == 0 and load_checkpoint(tmp_path / "b")["step"] == 0


def test_ce_baseline_needs_no_teacher_and_learns(data):
    train, val = data
    student = tiny_llama(seed=2)
    result = distill(student, None, train, val, _config(mode="ce", steps=15, lr=1e-2, val_every=0))
    assert all(m["kd_loss"] == 0 and m["loss"] == pytest.approx(m["ce_loss"]) for m in result.history)
    assert result.history[-1]["ce_loss"] < result.history[0]["ce_loss"] - 0.5
    assert result.final_validation["val_kl"] is None


def test_teacher_correction_fine_tunes_a_copy(data, tmp_path):
    train, val = data
    teacher = tiny_llama(seed=1)
    original = copy.deepcopy(teacher.state_dict())
    seen = []
    cfg = _config(steps=2, teacher_correction_steps=6, teacher_peak_lr=5e-2, val_every=0)
    before = validate(teacher, None, train, cfg)["val_loss"]
    result = distill(
        tiny_llama(seed=2), teacher, train, val, cfg, callback=seen.append, checkpoint_dir=tmp_path
    )
    corrections = [m for m in seen if m["phase"] == "teacher_correction"]
    assert len(corrections) == 6 and corrections[-1]["lr"] == pytest.approx(1e-2)  # 1/5 of the peak
    assert all(torch.equal(v, teacher.state_dict()[k]) for k, v in original.items())
    assert validate(result.teacher, None, train, cfg)["val_loss"] < before
    assert (tmp_path / "corrected_teacher.pt").exists()


def test_a_stop_during_teacher_correction_stops_it_and_a_resume_runs_it_again(data, tmp_path):
    """A cancel (or worker shutdown) during teacher correction stops at the next correction step, not
    after all of them (hours on a big teacher; a multi-rank job's ranks are killed 60 s after the stop):
    nothing is saved, and a resume runs the correction again to the same weights as a straight run."""
    train, val = data
    teacher = tiny_llama(seed=1)
    cfg = _config(steps=3, teacher_correction_steps=8, teacher_peak_lr=5e-2, val_every=0)
    straight = distill(tiny_llama(seed=2), teacher, train, val, cfg)

    seen = []
    stopped = distill(
        tiny_llama(seed=2),
        teacher,
        train,
        val,
        cfg,
        callback=seen.append,
        checkpoint_dir=tmp_path,
        should_stop=lambda: len(seen) >= 3,
    )
    assert stopped.stopped and stopped.correction_stopped_at == 3 and stopped.steps_completed == 0
    assert [m["phase"] for m in seen] == ["teacher_correction"] * 3  # no distillation step ran
    assert not (tmp_path / "corrected_teacher.pt").exists() and stopped.checkpoint is None

    student = tiny_llama(seed=2)
    resumed = distill(student, teacher, train, val, cfg, checkpoint_dir=tmp_path, resume=True)
    assert resumed.steps_completed == 3 and not resumed.stopped
    assert _losses(resumed.history) == _losses(straight.history)


def test_intermediate_state_loss_with_layer_map(data):
    train, val = data
    teacher = tiny_llama(seed=1, layers=4)
    student = tiny_llama(seed=2, layers=2)
    cfg = _config(steps=3, intermediate_weight=0.5, layer_map=[0, 3], val_every=0)
    result = distill(student, teacher, train, val, cfg)
    for m in result.history:
        assert 0 < m["intermediate_loss"] < 2
        assert m["loss"] == pytest.approx(m["kd_loss"] + 0.5 * m["intermediate_loss"], rel=1e-5)
    with pytest.raises(ValueError, match="layer_map"):
        distill(
            tiny_llama(seed=2, layers=2),
            teacher,
            train,
            val,
            _config(steps=1, intermediate_weight=1.0, layer_map=[0, 1, 2]),
        )


def test_bad_input_is_rejected(data, tmp_path):
    train, val = data
    with pytest.raises(ValueError, match="needs a teacher"):
        distill(tiny_llama(), None, train, val, _config())
    with pytest.raises(ValueError):
        DistillConfig(lr=1e-4, min_lr=1e-3)
    distill(tiny_llama(seed=2), tiny_llama(seed=1), train, val, _config(steps=1), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="batch_size"):
        _resume(tmp_path, tiny_llama(seed=1), train, val, batch_size=3)
    with pytest.raises(ValueError, match="does not fit"):
        _resume(tmp_path, tiny_llama(seed=1), train, val, student=tiny_llama(seed=2, layers=3))


def _resume(checkpoint_dir, teacher, train, val, *, student=None, **config):
    """Two steps of `distill` resumed from `checkpoint_dir` (student: a fresh tiny Llama, seed 2)."""
    student = student or tiny_llama(seed=2)
    config = _config(**{"steps": 2, **config})
    return distill(student, teacher, train, val, config, checkpoint_dir=checkpoint_dir, resume=True)


def test_resume_refuses_another_teacher_or_other_data(data, tmp_path):
    """The checkpoint records its teacher (sampled weights hash) and in-memory training blocks: a
    resume with another teacher, other tokens or another seq_len is refused before any step, and the
    same inputs (the teacher in bfloat16 too) resume."""
    train, val = data
    teacher = tiny_llama(seed=1)

    def resume(teacher_model, train_data):
        return _resume(tmp_path, teacher_model, train_data, val)

    distill(tiny_llama(seed=2), teacher, train, val, _config(steps=1), checkpoint_dir=tmp_path)
    saved = load_checkpoint(tmp_path)["inputs"]
    assert saved["train"]["blocks"] == list(train.blocks.shape)
    with pytest.raises(ValueError, match="teacher's weights are not those"):
        resume(tiny_llama(seed=4), train)
    with pytest.raises(ValueError, match=r"other tokens"):
        resume(teacher, PackedTokens.from_blocks(train.blocks[::-1].copy()))
    with pytest.raises(ValueError, match=r"3 blocks, the checkpoint's had"):
        resume(teacher, PackedTokens.from_blocks(train.blocks[:3]))
    with pytest.raises(ValueError, match="seq_len is 12 but the checkpoint was made with 24"):
        resume(teacher, PackedTokens.from_blocks(train.blocks[:, :12]))
    assert load_checkpoint(tmp_path)["step"] == 1  # every refusal changed nothing
    assert resume(copy.deepcopy(teacher), train).steps_completed == 2
    in_bf16 = copy.deepcopy(teacher).to(torch.bfloat16)  # --weights-dtype bfloat16 on the resume
    assert weights_sample_sha256(in_bf16) == saved["teacher"]


def test_resume_refuses_a_teacher_the_checkpoint_did_not_have(data, tmp_path):
    train, val = data
    distill(tiny_llama(seed=2), None, train, val, _config(steps=1, mode="ce"), checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="made without a teacher, this run has one"):
        _resume(tmp_path, tiny_llama(seed=1), train, val, mode="ce")
