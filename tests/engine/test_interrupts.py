"""Ctrl-C held back for the length of a block, then delivered as the handler in place would."""

import signal
import threading

import pytest

from cnnlab.engine.interrupts import deferred_interrupt


def test_ctrl_c_inside_the_block_is_raised_after_it():
    done = []
    with pytest.raises(KeyboardInterrupt), deferred_interrupt():
        signal.raise_signal(signal.SIGINT)
        done.append("rest of the block")
    assert done == ["rest of the block"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_held_ctrl_c_goes_to_the_handler_that_was_in_place():
    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with deferred_interrupt():
            signal.raise_signal(signal.SIGINT)
            signal.raise_signal(signal.SIGINT)
            assert seen == []
        assert seen == [signal.SIGINT]  # once
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with deferred_interrupt():
            signal.raise_signal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, previous)


def test_no_ctrl_c_and_other_threads_run_the_block_as_it_is():
    with deferred_interrupt():
        pass
    result = []

    def body():
        with deferred_interrupt():
            result.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    assert result == [signal.default_int_handler]


def test_a_gate_delivers_held_ctrl_c_at_its_check_and_holds_again_after():
    from cnnlab.engine.interrupts import InterruptGate

    seen = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        with InterruptGate() as gate:
            gate.check()  # nothing held: nothing happens
            signal.raise_signal(signal.SIGINT)
            assert seen == []
            gate.check()
            assert seen == [signal.SIGINT]
            signal.raise_signal(signal.SIGINT)  # held again: the handler returned
            assert seen == [signal.SIGINT]
        assert seen == [signal.SIGINT] * 2  # the last one at the gate's end
    finally:
        signal.signal(signal.SIGINT, previous)
    with pytest.raises(KeyboardInterrupt), InterruptGate() as gate:
        signal.raise_signal(signal.SIGINT)
        gate.check()
        pytest.fail("check() raises the held Ctrl-C")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
