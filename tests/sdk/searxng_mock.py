"""A small SearXNG JSON API for the SDK suite (standard library only).

    python3 searxng_mock.py PORT_FILE

Listens on a free 127.0.0.1 port, writes the port to PORT_FILE, and answers
GET /search?q=...&format=json with two results that name the query.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        url = urlparse(self.path)
        params = parse_qs(url.query)
        if url.path != "/search" or params.get("format") != ["json"]:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        query = params.get("q", [""])[0]
        body = json.dumps({"query": query, "results": [
            {"title": f"First result for {query}", "url": "https://example.com/first",
             "content": "The first page."},
            {"title": "Second result", "url": "https://example.org/second",
             "content": "The second page."},
        ]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(sys.argv[1], "w") as f:
        f.write(str(server.server_address[1]))
    server.serve_forever()


if __name__ == "__main__":
    main()
