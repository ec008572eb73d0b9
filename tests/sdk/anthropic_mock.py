"""A small Anthropic Messages API for the SDK suite (standard library only).

    python3 anthropic_mock.py PORT_FILE

Listens on a free 127.0.0.1 port, writes the port to PORT_FILE, and serves
POST /v1/messages. It refuses requests the real API would refuse (no
x-api-key, no anthropic-version, no max_tokens, roles not alternating), and
answers:
  - when tools are offered: a call of the first tool with {"city": "Paris"},
    streamed as input_json_delta pieces when "stream" is true;
  - otherwise the text "Hello from Claude".
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def refusal(body, headers):
    if not headers.get("x-api-key"):
        return "x-api-key header is required"
    if not headers.get("anthropic-version"):
        return "anthropic-version header is required"
    if not body.get("max_tokens"):
        return "max_tokens: Field required"
    messages = body.get("messages") or []
    if not messages or messages[0].get("role") != "user":
        return "messages: first message must use the user role"
    for a, b in zip(messages, messages[1:]):
        if a.get("role") == b.get("role"):
            return "messages: roles must alternate"
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def send(self, status, payload, content_type="application/json"):
        data = payload.encode()
        self.send_response(status)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        problem = refusal(body, self.headers)
        if problem:
            error = {"type": "error", "error": {"type": "invalid_request_error", "message": problem}}
            return self.send(400, json.dumps(error))
        tools = body.get("tools") or []
        model = body.get("model")
        usage = {"input_tokens": 20, "output_tokens": 9}
        if not body.get("stream"):
            if tools:
                content = [{"type": "tool_use", "id": "toolu_sdk", "name": tools[0]["name"], "input": {"city": "Paris"}}]
                stop = "tool_use"
            else:
                content = [{"type": "text", "text": "Hello from Claude"}]
                stop = "end_turn"
            answer = {"id": "msg_sdk", "type": "message", "role": "assistant", "model": model,
                      "content": content, "stop_reason": stop, "usage": usage}
            return self.send(200, json.dumps(answer))
        events = [("message_start", {"type": "message_start", "message": {
            "id": "msg_sdk", "type": "message", "role": "assistant", "model": model,
            "content": [], "usage": {"input_tokens": 20, "output_tokens": 1}}})]
        if tools:
            events.append(("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
                "type": "tool_use", "id": "toolu_sdk", "name": tools[0]["name"], "input": {}}}))
            for part in ['{"city"', ': "Par', 'is"}']:
                events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                               "delta": {"type": "input_json_delta", "partial_json": part}}))
            stop = "tool_use"
        else:
            events.append(("content_block_start", {"type": "content_block_start", "index": 0,
                           "content_block": {"type": "text", "text": ""}}))
            for word in ["Hello", " from", " Claude"]:
                events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                               "delta": {"type": "text_delta", "text": word}}))
            stop = "end_turn"
        events.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        events.append(("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop},
                                         "usage": {"output_tokens": 9}}))
        events.append(("message_stop", {"type": "message_stop"}))
        stream = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
        self.send(200, stream, "text/event-stream")


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(sys.argv[1], "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
