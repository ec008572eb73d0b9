#!/usr/bin/env python3
"""Memory cost of open streams in a proxy.

Opens N concurrent streaming chat-completion requests through a proxy, waits
until every one has received its first SSE event (so the proxy really holds N
live client connections, N upstream connections and N relay states), samples
the proxy's resident memory, then closes them all.

    per-stream KiB = (RSS with N streams open - RSS before) / N

RSS is VmRSS from /proc/PID/status, summed over every PID given (nginx is a
master plus workers). Prints one JSON object on stdout.

Standard library only: raw asyncio sockets speaking HTTP/1.1, so the client
itself is cheap and has no dependency to install.
"""

import argparse
import asyncio
import json
import sys
import time


def rss_kib(pids):
    """Sum of VmRSS (KiB) over pids."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
                    break
    return total


class Client:
    def __init__(self, args, request: bytes, stop: asyncio.Event):
        self.args = args
        self.request = request
        self.stop = stop
        self.first = asyncio.Event()  # set on the first `data:` event
        self.error = None
        self.writer = None

    async def run(self):
        try:
            reader, self.writer = await asyncio.open_connection(self.args.host, self.args.port)
            self.writer.write(self.request)
            await self.writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0]
            if status.split(b" ")[1:2] != [b"200"]:
                self.error = status.decode("latin-1", "replace")
                return
            # Read until the first SSE data line, then keep draining slowly so
            # that the proxy never sees a full socket buffer.
            seen = b""
            while not self.first.is_set():
                data = await reader.read(4096)
                if not data:
                    self.error = "closed before first event"
                    return
                seen = (seen + data)[-4096:]
                if b"data:" in seen:
                    self.first.set()
            # main() closes our socket to end the test: that shows up here as EOF.
            while True:
                data = await reader.read(4096)
                if not data:
                    if not self.stop.is_set():
                        self.error = "stream ended before the measurement"
                    return
        except Exception as e:  # noqa: BLE001 - any failure is just counted
            if not self.stop.is_set():  # errors caused by our own close are not failures
                self.error = f"{type(e).__name__}: {e}"
        finally:
            if self.writer is not None:
                self.writer.close()


async def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/api/v1/chat/completions")
    p.add_argument("--model", default="stream/bench")
    p.add_argument("--key", default="bench", help="API key sent as a bearer token")
    p.add_argument("--count", type=int, default=2000)
    p.add_argument("--pids", required=True, help="comma-separated PIDs whose RSS is summed")
    p.add_argument("--batch", type=int, default=200, help="connections opened per batch")
    p.add_argument("--batch-pause", type=float, default=0.05, help="seconds between batches")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for all first events")
    p.add_argument("--settle", type=float, default=2.0, help="seconds to wait before sampling RSS")
    args = p.parse_args()
    pids = [int(x) for x in args.pids.split(",") if x]

    body = json.dumps(
        {"model": args.model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    ).encode()
    request = (
        f"POST {args.path} HTTP/1.1\r\n"
        f"Host: {args.host}:{args.port}\r\n"
        "Content-Type: application/json\r\n"
        f"Authorization: Bearer {args.key}\r\n"
        "Accept: text/event-stream\r\n"
        f"Content-Length: {len(body)}\r\n"
        "\r\n"
    ).encode() + body

    before = rss_kib(pids)
    stop = asyncio.Event()
    clients = [Client(args, request, stop) for _ in range(args.count)]
    tasks = []
    t0 = time.monotonic()
    # Open in batches: a burst of thousands of SYNs overflows accept queues and
    # costs 1 s SYN retransmits, which only slows the test down.
    for i in range(0, args.count, args.batch):
        for c in clients[i : i + args.batch]:
            tasks.append(asyncio.create_task(c.run()))
        await asyncio.sleep(args.batch_pause)

    # Wait for every client to either see its first event or fail.
    deadline = t0 + args.timeout
    while time.monotonic() < deadline:
        pending = [c for c in clients if not c.first.is_set() and c.error is None]
        if not pending:
            break
        await asyncio.sleep(0.1)
    opened_in = time.monotonic() - t0

    await asyncio.sleep(args.settle)
    live = sum(1 for c in clients if c.first.is_set() and c.error is None)
    during = rss_kib(pids)

    stop.set()
    for c in clients:
        if c.writer is not None:
            c.writer.close()
    await asyncio.wait(tasks, timeout=10)
    errors = {}
    for c in clients:
        if c.error is not None:
            errors[c.error] = errors.get(c.error, 0) + 1
        elif not c.first.is_set():
            errors["no first event before timeout"] = errors.get("no first event before timeout", 0) + 1

    result = {
        "requested": args.count,
        "live": live,
        "rss_before_kib": before,
        "rss_with_streams_kib": during,
        "per_stream_kib": (during - before) / live if live else None,
        "open_seconds": round(opened_in, 2),
        "errors": errors,
    }
    print(json.dumps(result))
    return 0 if live == args.count else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
