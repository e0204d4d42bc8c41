"""An outsider that knows a run's id and ports but not its key: it spoofs a node's process and the
coordinator's clients with plain ZeroMQ and with CURVE under a key of its own, then leaves.

Usage: python intruder.py RUN_ID NODE_ADDRESS SPOOFED_PEER_ADDRESS COORDINATOR_ADDRESS. Run by
tests/test_secure.py as a separate process; prints `sent` once every socket has closed.
"""

from __future__ import annotations

import struct
import sys

import numpy as np
import zmq

from dsim import control, hub, wire


def main() -> None:
    run, node, peer, coordinator = sys.argv[1:5]
    ctx = zmq.Context()
    # well-formed: the hop and frames node 1 would send to node 0, from node 1's process identity
    message = hub.addressed(struct.pack("<II", 1, 0), wire.encode(run, 1, 0, "injected", np.arange(1000.0)))
    lost = control.encode(control.Lost(machine=0, reason="an outsider stopped the run"))
    socks = []
    for curve in (False, True):
        for address, frames, identity in ((node, message, f"{run}|{peer}".encode()), (coordinator, [lost], None)):
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 1500)  # long enough to try, and fail, a few handshakes
            if identity:
                sock.setsockopt(zmq.IDENTITY, identity)
            if curve:  # a CURVE client under keys of its own: it does not know the run's
                public, secret = zmq.curve_keypair()
                sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = zmq.curve_keypair()[0], public, secret
            sock.connect(address)
            sock.send_multipart(frames)
            socks.append(sock)
    for sock in socks:
        sock.close()
    ctx.term()
    print("sent", flush=True)


if __name__ == "__main__":
    main()
