"""The collector pause shared by the writer's thread and readers' threads."""

import gc
import threading

from ledger.collector import collector_paused


def test_overlapping_pauses_from_two_threads_resume_the_collector_when_the_last_ends():
    first_inside, second_done = threading.Event(), threading.Event()
    seen_by_first: list[bool] = []

    def first():
        with collector_paused():
            first_inside.set()
            second_done.wait(5)
            seen_by_first.append(gc.isenabled())  # the second pause ended, but this one still holds

    thread = threading.Thread(target=first)
    assert gc.isenabled()
    thread.start()
    first_inside.wait(5)
    with collector_paused():
        assert not gc.isenabled()
    second_done.set()
    thread.join(5)
    assert seen_by_first == [False]
    assert gc.isenabled()


def test_a_pause_leaves_a_collector_that_was_off_off():
    gc.disable()
    try:
        with collector_paused():
            assert not gc.isenabled()
        assert not gc.isenabled()
    finally:
        gc.enable()
