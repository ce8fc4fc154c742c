"""charrnn chooses the model when the user names no size: the rule's edges (pure
arithmetic), then the choice as a user meets it: the start line, --dry-run, the
checkpoint's record, --resume and --init-from keeping the model, a budget too short."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import run_cli, shakespeare_head

from charrnn import sizing
from charrnn.checkpoint import load_checkpoint
from charrnn.errors import UsageError

# This CPU's speeds as the probe would scale them, from a default-size timing of 20,000.
SPEEDS = {
    size: 20_000 * sizing.seconds_per_char(*sizing.DEFAULT_SIZE) / sizing.seconds_per_char(*size)
    for size in sizing.SIZES
}
PER_STEP = 24 * 64


def choose(train_chars, seconds=None, chars=None, dropout_given=False, speeds=SPEEDS):
    budget = sizing.Budget(seconds, chars, "test")
    return sizing.choose(train_chars, budget, speeds, PER_STEP, dropout_given, "this CPU")


def params(choice):
    return sizing.recurrent_params(choice.hidden_size, choice.num_layers)


def test_more_time_never_chooses_a_smaller_model():
    for corpus in (20_000, 1_000_000, 10_000_000):
        sizes = [params(choose(corpus, seconds=s)) for s in (30, 90, 300, 1800, 6 * 3600)]
        assert sizes == sorted(sizes), (corpus, sizes)
    # and the range is used: a minute and a night do not get the same model
    assert params(choose(10_000_000, seconds=60)) < params(choose(10_000_000, seconds=8 * 3600))


def test_the_choice_is_the_lowest_predicted_loss_among_the_candidates():
    choice = choose(1_000_000, seconds=300)
    losses = [loss for _, loss in choice.ranking]
    assert losses == sorted(losses) and len(losses) == len(sizing.SIZES)
    assert choice.ranking[0][0] == f"{choice.num_layers} x {choice.hidden_size}"
    assert choice.predicted == pytest.approx(losses[0])


def test_a_wide_layer_beats_a_stack_of_as_many_weights_trained_as_long():
    # The sweep: one layer won every column; the law counts weights above the first at UPPER.
    stack = sizing.recurrent_params(512, 2)
    wide = min(range(512, 2048), key=lambda h: abs(sizing.recurrent_params(h, 1) - stack))
    assert abs(sizing.recurrent_params(wide, 1) - stack) / stack < 0.01
    for chars in (2e6, 2e7):
        assert sizing.predicted_loss(wide, 1, chars, 900_000) < sizing.predicted_loss(
            512, 2, chars, 900_000
        )


def test_dropout_follows_the_epochs_the_budget_buys():
    # A few epochs: the least. Many epochs of a small text: the most.
    big = choose(50_000_000, seconds=120)
    assert big.epochs < 1 and big.dropout == min(d for _, d in sizing.DROPOUT_BY_EPOCHS)
    small = choose(100_000, seconds=600)
    assert small.epochs > 6 and small.dropout == max(d for _, d in sizing.DROPOUT_BY_EPOCHS)
    # a --dropout the user gave stands: the choice sets none
    assert choose(100_000, seconds=600, dropout_given=True).dropout is None


def test_epochs_are_the_characters_trained_over_the_text():
    choice = choose(1_000_000, seconds=300)
    assert choice.chars == pytest.approx(300 * choice.chars_per_sec)
    assert choice.epochs == pytest.approx(choice.chars / 1_000_000)
    assert choice.steps == int(choice.chars // PER_STEP)


def test_a_step_or_epoch_budget_keeps_the_default_size_and_chooses_dropout():
    """No time limit: the characters are fixed and the time is not. A larger model would
    learn more from them but take longer than the user counted on: the default size."""
    for corpus, epochs in ((20_000, 10), (1_000_000, 10), (10_000_000, 0.5)):
        choice = choose(corpus, chars=epochs * corpus)
        assert (choice.hidden_size, choice.num_layers) == sizing.DEFAULT_SIZE
        assert choice.chars == epochs * corpus and choice.epochs == pytest.approx(epochs)
        assert choice.dropout == sizing.dropout_for(epochs)
        assert "--time-limit lets charrnn size it" in choice.reason


def test_a_tiny_corpus_gets_a_model_with_the_most_dropout():
    choice = choose(2_000, seconds=60)
    assert (choice.hidden_size, choice.num_layers) in sizing.SIZES
    assert choice.epochs > 20 and choice.dropout == max(d for _, d in sizing.DROPOUT_BY_EPOCHS)
    assert math.isfinite(choice.predicted)


def test_no_size_is_chosen_that_the_budget_gives_too_few_steps():
    """The law counts characters, and on a small text it counts them used up long before a
    large model has had its updates: sizes with fewer than MIN_CHOSEN_STEPS are left out."""
    for corpus in (2_000, 150_000, 1_000_000):
        for seconds in (20, 60, 300):
            choice = choose(corpus, seconds=seconds)
            assert choice.steps >= sizing.MIN_CHOSEN_STEPS, (corpus, seconds, choice)
    # unless no size gets them: then the fastest, with the most steps there are
    short = choose(1_000_000, seconds=3)
    assert (short.hidden_size, short.num_layers) == sizing.SIZES[0]


def test_a_budget_too_short_for_any_model_is_refused_with_the_fix():
    with pytest.raises(UsageError) as e:
        choose(1_000_000, seconds=0.5)
    message = str(e.value)
    assert "too little time" in message and "--time-limit" in message and "\n" not in message
    needed = int(message.split("at least --time-limit ")[1].split("s")[0])
    choose(1_000_000, seconds=needed)  # the time it names is enough
    # steps and epochs are the user's count: a few steps are trained, with the smallest
    few = choose(1_000_000, chars=10 * PER_STEP)
    assert (few.hidden_size, few.num_layers) == sizing.DEFAULT_SIZE and few.steps == 10


def test_on_a_faster_device_the_same_budget_buys_a_larger_model():
    fast = {size: 50 * speed for size, speed in SPEEDS.items()}
    assert params(choose(10_000_000, seconds=600, speeds=fast)) > params(
        choose(10_000_000, seconds=600)
    )


def test_the_loss_to_expect_is_the_sweeps_nearest_result_for_each_kind_of_text():
    for kind, train_chars, default_chars, loss in sizing.SWEPT:
        nearest = sizing.nearest_swept(train_chars, default_chars)
        found = {k: (got, n, d) for k, got, n, d in nearest}
        assert found[kind] == (loss, train_chars, default_chars)
        assert set(found) == {row[0] for row in sizing.SWEPT}
    # a run 1.1 times the corpus and budget of a swept point is nearest to it
    kind, train_chars, default_chars, loss = sizing.SWEPT[0]
    nearest = sizing.nearest_swept(1.1 * train_chars, 1.1 * default_chars)
    near = {k: got for k, got, _, _ in nearest}
    assert near[kind] == loss


def test_a_named_size_is_kept_and_only_described():
    budget = sizing.Budget(60, None, "1m")
    choice = sizing.choose(1_000_000, budget, {(100, 3): 5000.0}, PER_STEP, True, "here", (100, 3))
    assert (choice.hidden_size, choice.num_layers) == (100, 3) and choice.dropout is None
    assert choice.reason.startswith("named") and choice.chars == 60 * 5000


# --- as a user meets it -----------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    path = tmp_path_factory.mktemp("sizing") / "corpus.txt"
    path.write_text(shakespeare_head(60_000), encoding="utf-8")
    return path


def test_dry_run_says_what_it_would_train_and_trains_nothing(corpus, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", str(corpus), "--out", str(out), "--time-limit", "2m", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert (
        lines[0].startswith("model: ")
        and "chosen for 54K characters and 2m on this CPU" in lines[0]
    )
    assert lines[1].startswith("speed: about ") and "characters/s" in lines[1]
    assert "epochs" in lines[2] and "steps" in lines[2]
    assert lines[3].startswith("expected validation loss: code ") and "prose " in lines[3]
    assert "nats/char, what the sweep's nearest texts reached" in lines[3]
    assert "characters" in lines[4] and "in the budget" in lines[4]
    assert lines[-1] == "nothing trained (--dry-run)"
    assert not out.exists()
    # no limit at all: 10 epochs, the default size, dropout for them, and how to let it size
    unlimited = run_cli("train", str(corpus), "--dry-run").stdout.splitlines()[0]
    assert unlimited.startswith("model: 2 x 256 LSTM, dropout 0.2 (the default size, dropout for")
    assert "54K characters and 10 epochs" in unlimited and "a --time-limit lets" in unlimited
    named = run_cli("train", str(corpus), "--hidden-size", "64", "--num-layers", "1", "--dry-run")
    assert named.returncode == 0 and named.stdout.startswith("model: 1 x 64 LSTM (named; 54K")
    refused = run_cli("train", str(corpus), "--out", str(out), "--resume", "--dry-run")
    assert refused.returncode == 2 and "--dry-run plans a new run" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_choice_is_said_recorded_and_kept_on_resume_and_init_from(corpus, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", str(corpus), "--out", str(out), "--time-limit", "40s",
                   "--max-steps", "30", "--eval-every", "20", "--sample-length", "0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("model: ")]
    assert len(said) == 1 and "(chosen for 54K characters and 40s or 30 steps on this" in said[0]
    ckpt = load_checkpoint(str(out / "last.pt"))
    record, model = ckpt["model_choice"], ckpt["model_config"]
    assert (record["hidden_size"], record["num_layers"]) == (
        model["hidden_size"],
        model["num_layers"],
    )
    assert said[0].startswith(f"model: {model['num_layers']} x {model['hidden_size']} LSTM")
    assert record["dropout"] == model["dropout"]
    info = run_cli("info", str(out / "last.pt"))
    assert "size         chosen for 54K characters and 40s or 30 steps" in info.stdout

    again = run_cli("train", str(corpus), "--out", str(out), "--resume", "--max-steps",
                    str(ckpt["step"] + 5), "--sample-length", "0")  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "model: " not in again.stderr  # nothing chosen: the checkpoint's model goes on
    resumed = load_checkpoint(str(out / "last.pt"))
    assert resumed["model_config"] == model and resumed["model_choice"] == record

    tuned = tmp_path / "tuned"
    proc = run_cli("train", str(corpus), "--out", str(tuned), "--init-from", str(out / "last.pt"),
                   "--max-steps", "3", "--sample-length", "0")  # fmt: skip
    assert proc.returncode == 0, proc.stderr and "model: " not in proc.stderr
    tuned_ckpt = load_checkpoint(str(tuned / "last.pt"))
    assert tuned_ckpt["model_config"]["hidden_size"] == model["hidden_size"]
    assert tuned_ckpt["model_choice"] is None


def test_a_time_limit_too_short_to_choose_is_one_line_and_exit_2(corpus, tmp_path):
    out = tmp_path / "run"
    proc = run_cli("train", str(corpus), "--out", str(out), "--time-limit", "1s")
    assert proc.returncode == 2
    assert "too little time to train any model" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 3
    assert not (out / "last.pt").exists()


def test_the_api_returns_the_plan_with_numpy_numbers(corpus):
    import numpy as np

    import charrnn

    choice = charrnn.plan(str(corpus), time_limit=np.float64(120.0))
    assert choice.hidden_size > 0 and choice.chars_per_sec > 0 and choice.epochs > 0
    assert torch.get_num_threads() >= 1


def test_off_a_cpu_every_size_is_timed_and_on_a_cpu_the_cost_law_scales_one_timing():
    """A GPU runs small models at launch latency, not arithmetic: there each candidate is
    timed (forced here on the CPU, with a tiny batch). On a CPU the default size is timed
    and the fitted cost law gives the rest."""
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.training.choose import speeds

    model, config = ModelConfig(vocab_size=20), TrainConfig(batch_size=2, seq_len=8)
    ids = torch.randint(0, 20, (100,), dtype=torch.uint8)
    device = torch.device("cpu")
    threads = torch.get_num_threads()
    timed = speeds(model, config, ids, device, "fp32", each=True)
    assert set(timed) == set(sizing.SIZES) and all(v > 0 for v in timed.values())
    assert timed[sizing.SIZES[0]] > timed[sizing.SIZES[-1]]
    scaled = speeds(model, config, ids, device, "fp32")
    ratio = scaled[sizing.SIZES[0]] / scaled[sizing.DEFAULT_SIZE]
    cost = sizing.seconds_per_char
    law = cost(*sizing.DEFAULT_SIZE, 20) / cost(*sizing.SIZES[0], 20)  # at this vocabulary
    assert ratio == pytest.approx(law)
    assert torch.get_num_threads() == threads  # the probe tried 1 and all, then put it back


def test_a_run_counted_in_steps_is_not_timed_and_chooses_what_the_timed_plan_does(
    corpus, tmp_path, monkeypatch
):
    # Without a time limit the size is the default whatever the speed: the timing cost a
    # 120-step run a sixth of its time (bench/threads.py on the bf16 EPYC) and changed nothing.
    import charrnn
    import charrnn.training.choose as choose

    planned = charrnn.plan(str(corpus), max_steps=3)  # --dry-run still times, to show it
    assert planned.chars_per_sec > 0

    def no_timing(*args, **kwargs):
        raise AssertionError("a run without --time-limit timed the machine")

    monkeypatch.setattr(choose, "_time", no_timing)
    charrnn.train(str(corpus), out=str(tmp_path / "run"), max_steps=3, sample_length=0)
    record = load_checkpoint(str(tmp_path / "run" / "last.pt"))["model_choice"]
    chosen = (record["hidden_size"], record["num_layers"], record["dropout"])
    assert chosen == (planned.hidden_size, planned.num_layers, planned.dropout)
    assert chosen[:2] == sizing.DEFAULT_SIZE and record["steps"] == planned.steps == 3
    assert (
        record["chars_per_sec"] is None
        and "a --time-limit lets charrnn size it" in record["reason"]
    )
    with pytest.raises(AssertionError, match="timed the machine"):  # the patch does bite
        charrnn.train(str(corpus), out=str(tmp_path / "t"), time_limit=60, sample_length=0)
