"""Capture every packet on one interface (or all: `any`) until stdin closes; report whether any
carried a byte pattern. Run by tests/test_secure.py as its own process, so that inside a network
namespace it is started with `ip netns exec`.

Usage: python sniff.py IFACE HEX_PATTERN. Prints `ready` once capturing, and at the end one JSON line:
{"packets": N, "bytes": B, "hits": H}.
"""

from __future__ import annotations

import json
import os
import select
import socket
import sys

ETH_P_ALL = 0x0003


def main() -> None:
    iface, pattern = sys.argv[1], bytes.fromhex(sys.argv[2])
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 25)
    if iface != "any":
        sock.bind((iface, 0))
    sock.setblocking(False)
    print("ready", flush=True)
    packets = nbytes = hits = 0
    open_stdin = True
    while open_stdin:
        ready, _, _ = select.select([sock, 0], [], [], 30.0)
        if 0 in ready and not os.read(0, 4096):
            open_stdin = False  # the test is done: take what is queued, then report
        while True:
            try:
                data = sock.recv(1 << 18)
            except BlockingIOError:
                break
            packets, nbytes, hits = packets + 1, nbytes + len(data), hits + (pattern in data)
    print(json.dumps({"packets": packets, "bytes": nbytes, "hits": hits}), flush=True)


if __name__ == "__main__":
    main()
