"""dsim's compiled ZeroMQ calls (dsim/_zmqio.c) on real sockets: what a drain hands over, when it says the
socket is empty, and that a send which would block queues nothing."""

from __future__ import annotations

import errno

import pytest
import zmq

from dsim import native


@pytest.fixture()
def io():
    module, why = native.load()
    if module is None:
        pytest.skip(f"the compiled module cannot be used here: {why}")
    return module


@pytest.fixture()
def pair():
    """A ROUTER and a DEALER connected to it over TCP, and the DEALER's first message delivered."""
    ctx = zmq.Context()
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    for sock in (router, dealer):
        sock.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.IDENTITY, b"peer-7")
    port = router.bind_to_random_port("tcp://127.0.0.1")
    dealer.connect(f"tcp://127.0.0.1:{port}")
    yield router, dealer
    ctx.destroy(linger=0)


def _wait_readable(router: zmq.Socket) -> None:
    assert router.poll(10_000, zmq.POLLIN), "nothing arrived in 10 s"


def test_drain_hands_over_identity_and_header_until_the_socket_is_empty(io, pair) -> None:
    router, dealer = pair
    for i in range(5):
        assert io.send(dealer.underlying, b"HOPHOP%02d" % i, b"header %d" % i, False) is True
    got = []
    while len(got) < 5:
        _wait_readable(router)
        messages, drained = io.drain(router.underlying, 100)
        got += messages
    assert got == [(b"peer-7", b"HOPHOP%02dheader %d" % (i, i), False) for i in range(5)]
    messages, drained = io.drain(router.underlying, 100)
    assert (messages, drained) == ([], True)


def test_drain_stops_at_its_limit_and_after_a_header_with_frames_behind_it(io, pair) -> None:
    router, dealer = pair
    io.send(dealer.underlying, b"h1", b"one", False)
    assert io.send(dealer.underlying, b"h2", b"two", True) is True  # the rest through pyzmq, as a hub sends it
    dealer.send(b"array bytes", zmq.NOBLOCK, copy=False)
    io.send(dealer.underlying, b"h3", b"three", False)
    _wait_readable(router)
    received = []
    while len(received) < 1:
        _wait_readable(router)
        received += io.drain(router.underlying, 1)[0]
    assert received == [(b"peer-7", b"h1one", False)]  # the limit: one, though more may be queued
    rest = []
    while len(rest) < 1:
        _wait_readable(router)
        messages, drained = io.drain(router.underlying, 100)
        rest += messages
    assert rest == [(b"peer-7", b"h2two", True)] and drained is False  # stopped: its frames come next
    assert router.recv(zmq.NOBLOCK) == b"array bytes" and not router.get(zmq.RCVMORE)
    while True:
        _wait_readable(router)
        messages, drained = io.drain(router.underlying, 100)
        if messages:
            break
    assert messages == [(b"peer-7", b"h3three", False)]


def test_a_send_that_would_block_queues_nothing(io) -> None:
    ctx = zmq.Context()
    try:
        dealer = ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        assert io.send(dealer.underlying, b"hop", b"lost", False) is False  # no peer: EAGAIN, not queued
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.LINGER, 0)
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        assert io.send(dealer.underlying, b"hop", b"kept", False) is True
        _wait_readable(router)
        assert router.recv_multipart()[1:] == [b"hopkept"]  # first: a queued "lost" would have come before it
    finally:
        ctx.destroy(linger=0)


def test_libzmq_errors_come_back_as_pyzmq_raises_them(io) -> None:
    ctx = zmq.Context()
    try:
        pub = ctx.socket(zmq.PUB)
        pub.setsockopt(zmq.LINGER, 0)
        with pytest.raises(zmq.ZMQError) as caught:
            io.drain(pub.underlying, 1)  # a PUB socket cannot receive
        assert caught.value.errno == errno.ENOTSUP
    finally:
        ctx.destroy(linger=0)


def test_a_run_chooses_the_module_as_its_config_says(io) -> None:
    assert native.chosen("off") is None
    assert native.chosen("auto") is io and native.chosen("on") is io
