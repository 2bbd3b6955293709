"""An HTTP relay in front of an S3-compatible server that drops the
conditional-write headers (If-None-Match, If-Match) from every request, so
the bucket behind it behaves as S3 did before it supported them: a
conditional PUT silently overwrites. Each dropped header is logged to stderr
as "stripped <header> on <METHOD> <path>".

usage: unconditional_s3.py LISTEN_PORT TARGET_HOST TARGET_PORT
"""

import http.client
import http.server
import sys

STRIPPED = {"if-none-match", "if-match"}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


def read_chunked(stream):
    body = b""
    while True:
        size = int(stream.readline().split(b";")[0].strip(), 16)
        if size == 0:
            while stream.readline() not in (b"\r\n", b"\n", b""):
                pass
            return body
        body += stream.read(size)
        stream.readline()


class Relay(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def relay(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            body = read_chunked(self.rfile)
        else:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = []
        for name, value in self.headers.items():
            if name.lower() in STRIPPED:
                sys.stderr.write(f"stripped {name} on {self.command} {self.path}\n")
                sys.stderr.flush()
            elif name.lower() not in HOP_BY_HOP:
                headers.append((name, value))
        upstream = http.client.HTTPConnection(TARGET[0], TARGET[1], timeout=120)
        upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
        for name, value in headers:
            upstream.putheader(name, value)
        upstream.putheader("Content-Length", str(len(body)))
        upstream.endheaders(body)
        response = upstream.getresponse()
        data = response.read()
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            length = response.getheader("Content-Length")
            if length is not None:
                self.send_header("Content-Length", length)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        upstream.close()

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = relay

    def log_message(self, format, *args):
        pass


if __name__ == "__main__":
    TARGET = (sys.argv[2], int(sys.argv[3]))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Relay)
    server.daemon_threads = True
    server.serve_forever()
