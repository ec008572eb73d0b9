#!/usr/bin/env python3
"""Slow streaming upstream for the open-streams memory test.

Answers every `POST /v1/chat/completions` with an OpenAI-style
`text/event-stream`: a role chunk at once, then one content chunk every
`--interval` seconds for `--duration` seconds, then a finish chunk, a usage
chunk and `data: [DONE]`.

It is deliberately tiny (asyncio, standard library only) and cheap per stream,
so that thousands of idle-ish streams cost the machine little and the memory
measured is the proxy's, not this server's. HTTP/1.1 keep-alive is honoured
(the response is chunked, so a connection can carry the next request); the
request body is read and discarded (by Content-Length, or chunked if a client
sends that).

Only ever binds to a loopback address.
"""

import argparse
import asyncio
import json
import signal
import sys
import time

CREATED = 1700000000


def sse(obj) -> bytes:
    """One SSE event as one HTTP/1.1 chunk."""
    if isinstance(obj, bytes):
        payload = b"data: " + obj + b"\n\n"
    else:
        payload = b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def chunk(delta, finish_reason=None):
    return {
        "id": "chatcmpl-bench-stream",
        "object": "chat.completion.chunk",
        "created": CREATED,
        "model": "bench",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    }


# The events never change, so they are encoded once.
ROLE = sse(chunk({"role": "assistant", "content": ""}))
TICK = sse(chunk({"content": "tick "}))
FINISH = sse(chunk({}, "stop"))
DONE = sse(b"[DONE]")
END = b"0\r\n\r\n"

HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: text/event-stream\r\n"
    b"Cache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n"
    b"Connection: keep-alive\r\n"
    b"\r\n"
)


def usage_event(ticks: int) -> bytes:
    return sse(
        {
            "id": "chatcmpl-bench-stream",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": "bench",
            "choices": [],
            "usage": {"prompt_tokens": 8, "completion_tokens": ticks, "total_tokens": 8 + ticks},
        }
    )


def simple_response(status: str, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 " + status.encode() + b"\r\n"
        b"Content-Type: text/plain\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"\r\n" + body
    )


class Stats:
    active = 0
    started = 0
    finished = 0
    aborted = 0


async def read_body(reader: asyncio.StreamReader, headers: dict) -> None:
    """Read and discard the request body so the connection stays usable."""
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0].strip(), 16)
            await reader.readexactly(size + 2)  # data + CRLF
            if size == 0:
                return
    length = int(headers.get("content-length", "0") or 0)
    if length:
        await reader.readexactly(length)


async def stream(writer: asyncio.StreamWriter, args) -> None:
    """Write one streamed answer. Raises on a client disconnect."""
    Stats.active += 1
    Stats.started += 1
    try:
        writer.write(HEAD + ROLE)
        await writer.drain()
        ticks = int(args.duration / args.interval)
        for _ in range(ticks):
            await asyncio.sleep(args.interval)
            writer.write(TICK)
            await writer.drain()
        writer.write(FINISH + usage_event(ticks) + DONE + END)
        await writer.drain()
        Stats.finished += 1
    except BaseException:
        Stats.aborted += 1
        raise
    finally:
        Stats.active -= 1


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, args) -> None:
    try:
        while True:  # one iteration per request on this keep-alive connection
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                return
            lines = head.decode("latin-1").split("\r\n")
            method, path, _version = (lines[0].split(" ") + ["", "", ""])[:3]
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            await read_body(reader, headers)

            if method == "POST" and path.split("?")[0] == "/v1/chat/completions":
                await stream(writer, args)
            else:
                writer.write(simple_response("404 Not Found", b"not found\n"))
                await writer.drain()
            if headers.get("connection", "").lower() == "close":
                return
    except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


async def report(log_every: float) -> None:
    """Print the stream counters when they change: helps tell whether a proxy
    really closed its upstream streams after its clients went away."""
    last = None
    while True:
        await asyncio.sleep(log_every)
        now = (Stats.active, Stats.started, Stats.finished, Stats.aborted)
        if now != last:
            print(
                f"{time.strftime('%H:%M:%S')} active={now[0]} started={now[1]} "
                f"finished={now[2]} aborted={now[3]}",
                flush=True,
            )
            last = now


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of content chunks per stream")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between content chunks")
    p.add_argument("--log-every", type=float, default=2.0)
    args = p.parse_args()
    if not args.host.startswith("127.") and args.host not in ("localhost", "::1"):
        sys.exit("refusing to bind to a non-loopback address")

    # A large backlog: thousands of streams are opened within a second or two.
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, args), args.host, args.port, backlog=4096, reuse_address=True
    )
    print(f"stream upstream listening on {args.host}:{args.port}", flush=True)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reporter = asyncio.create_task(report(args.log_every))
    async with server:
        await stop.wait()
    reporter.cancel()


if __name__ == "__main__":
    asyncio.run(main())
