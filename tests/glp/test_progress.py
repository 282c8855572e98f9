"""glp.progress: the line a long loop prints every few seconds (rate, ETA), on a fake clock."""

import logging

from glp.progress import Progress, duration, is_progress


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_line_every_interval_with_rate_percent_and_eta():
    clock, lines = Clock(), []
    p = Progress("extract train", 400_000, "tok", lines.append, every_s=10, clock=clock)
    for _ in range(30):  # 1 s per update, 2,000 tokens each
        clock.t += 1
        p.update(2_000)
    assert lines == [
        "extract train: 20,000/400,000 tok (5%) 2,000 tok/s, ETA 3:10",
        "extract train: 40,000/400,000 tok (10%) 2,000 tok/s, ETA 3:00",
        "extract train: 60,000/400,000 tok (15%) 2,000 tok/s, ETA 2:50",
    ]
    assert all(is_progress(line) for line in lines)


def test_a_resumed_loop_counts_only_its_own_work_in_the_rate_and_notes_are_computed_only_when_due():
    clock, lines, calls = Clock(), [], []

    def note() -> str:
        calls.append(1)
        return "loss 1.2500"

    p = Progress("train", 1000, "step", lines.append, every_s=10, done=400, clock=clock)
    for step in range(401, 421):
        clock.t += 1
        p.set(step, note)
    assert lines == ["train: 410/1,000 step (41%) 1.0 step/s, ETA 9:50, loss 1.2500",
                     "train: 420/1,000 step (42%) 1.0 step/s, ETA 9:40, loss 1.2500"]
    assert len(calls) == 2


def test_slow_units_unknown_totals_and_every_call_reporting():
    clock, lines = Clock(), []
    slow = Progress("steer generate", 18, "setting", lines.append, clock=clock)
    clock.t = 13
    slow.update(1, "raw r=-1.0 took 13.0 s")
    every = Progress("probe tasks", None, "task", lines.append, every_s=0, clock=clock)
    clock.t = 15
    every.update(1, "gloss_animal: glp 0.944")
    every.update(1)
    assert lines[0] == "steer generate: 1/18 setting (5%) 13.0 s/setting, ETA 3:41, raw r=-1.0 took 13.0 s"
    assert lines[1] == "probe tasks: 1 task 2.0 s/task, elapsed 0:02, gloss_animal: glp 0.944"
    assert len(lines) == 3 and all(is_progress(line) for line in lines)
    assert not is_progress("train.zarr: 1,520 rows from 50 docs (2,300 tok/s)")
    assert duration(3725) == "1:02:05" and duration(61) == "1:01"


def test_without_a_log_callable_lines_go_to_the_glp_progress_logger(caplog):
    clock = Clock()
    p = Progress("delta_lm", 4, "batch", every_s=1, clock=clock)
    with caplog.at_level(logging.INFO, logger="glp.progress"):
        clock.t = 2
        p.update(1)
    assert [r.getMessage() for r in caplog.records] == ["delta_lm: 1/4 batch (25%) 2.0 s/batch, ETA 0:06"]
