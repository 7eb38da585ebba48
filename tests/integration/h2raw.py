"""A small raw HTTP/2 client for tests that need to misbehave.

Standard library only: frames are built by hand, requests use HPACK literals
without indexing and without Huffman (always valid), and responses are
decoded with a full HPACK decoder (static and dynamic table, Huffman),
since nghttp2 on the server side uses both.

    c = H2Conn(port)            # preface + SETTINGS, server SETTINGS ACKed
    sid = c.grpc_request("/grpc.health.v1.Health/Check", b"")
    resp = c.read_response(sid) # headers, messages, trailers, rst code

Nothing here is clever on purpose: each test says what it sends.
"""

import socket
import struct
import time

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

# Frame types (RFC 9113 §6).
DATA = 0x0
HEADERS = 0x1
PRIORITY = 0x2
RST_STREAM = 0x3
SETTINGS = 0x4
PUSH_PROMISE = 0x5
PING = 0x6
GOAWAY = 0x7
WINDOW_UPDATE = 0x8
CONTINUATION = 0x9

# Flags.
END_STREAM = 0x1
ACK = 0x1
END_HEADERS = 0x4
PADDED = 0x8
PRIORITY_FLAG = 0x20

# Error codes (RFC 9113 §7).
NO_ERROR = 0x0
PROTOCOL_ERROR = 0x1
INTERNAL_ERROR = 0x2
FLOW_CONTROL_ERROR = 0x3
STREAM_CLOSED = 0x5
FRAME_SIZE_ERROR = 0x6
REFUSED_STREAM = 0x7
CANCEL = 0x8
COMPRESSION_ERROR = 0x9
ENHANCE_YOUR_CALM = 0xB

# SETTINGS identifiers.
SETTINGS_HEADER_TABLE_SIZE = 0x1
SETTINGS_ENABLE_PUSH = 0x2
SETTINGS_MAX_CONCURRENT_STREAMS = 0x3
SETTINGS_INITIAL_WINDOW_SIZE = 0x4
SETTINGS_MAX_FRAME_SIZE = 0x5
SETTINGS_MAX_HEADER_LIST_SIZE = 0x6

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
HEALTH_SERVING = b"\x08\x01"  # HealthCheckResponse{status: SERVING}


class Frame:
    __slots__ = ("type", "flags", "stream_id", "payload")

    def __init__(self, ftype, flags, stream_id, payload):
        self.type = ftype
        self.flags = flags
        self.stream_id = stream_id
        self.payload = payload

    def __repr__(self):
        return (f"Frame(type={self.type}, flags={self.flags:#x}, "
                f"stream={self.stream_id}, len={len(self.payload)})")

    def error_code(self):
        """RST_STREAM's or GOAWAY's error code."""
        if self.type == RST_STREAM:
            return struct.unpack(">I", self.payload[:4])[0]
        if self.type == GOAWAY:
            return struct.unpack(">I", self.payload[4:8])[0]
        raise ValueError("not RST_STREAM or GOAWAY")

    def last_stream_id(self):
        return struct.unpack(">I", self.payload[:4])[0] & 0x7FFFFFFF


def frame(ftype, flags, stream_id, payload=b""):
    """One serialized frame."""
    n = len(payload)
    return (struct.pack(">BHBBI", (n >> 16) & 0xFF, n & 0xFFFF, ftype, flags,
                        stream_id & 0x7FFFFFFF) + payload)


def settings_frame(pairs=(), ack=False):
    body = b"".join(struct.pack(">HI", k, v) for k, v in pairs)
    return frame(SETTINGS, ACK if ack else 0, 0, body)


def grpc_message(body, compressed=False, announce=None):
    """A length-prefixed gRPC message; `announce` overrides the length."""
    n = len(body) if announce is None else announce
    return struct.pack(">BI", 1 if compressed else 0, n) + body


def parse_grpc_messages(data):
    """Splits concatenated gRPC messages; returns (messages, leftover)."""
    out = []
    while len(data) >= 5:
        flag, n = struct.unpack(">BI", data[:5])
        if len(data) < 5 + n:
            break
        out.append(data[5:5 + n])
        data = data[5 + n:]
    return out, data


# --- HPACK (RFC 7541) ---------------------------------------------------------

STATIC_TABLE = [
    (b":authority", b""), (b":method", b"GET"), (b":method", b"POST"),
    (b":path", b"/"), (b":path", b"/index.html"), (b":scheme", b"http"),
    (b":scheme", b"https"), (b":status", b"200"), (b":status", b"204"),
    (b":status", b"206"), (b":status", b"304"), (b":status", b"400"),
    (b":status", b"404"), (b":status", b"500"), (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"), (b"accept-language", b""),
    (b"accept-ranges", b""), (b"accept", b""),
    (b"access-control-allow-origin", b""), (b"age", b""), (b"allow", b""),
    (b"authorization", b""), (b"cache-control", b""),
    (b"content-disposition", b""), (b"content-encoding", b""),
    (b"content-language", b""), (b"content-length", b""),
    (b"content-location", b""), (b"content-range", b""),
    (b"content-type", b""), (b"cookie", b""), (b"date", b""), (b"etag", b""),
    (b"expect", b""), (b"expires", b""), (b"from", b""), (b"host", b""),
    (b"if-match", b""), (b"if-modified-since", b""), (b"if-none-match", b""),
    (b"if-range", b""), (b"if-unmodified-since", b""),
    (b"last-modified", b""), (b"link", b""), (b"location", b""),
    (b"max-forwards", b""), (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""), (b"range", b""), (b"referer", b""),
    (b"refresh", b""), (b"retry-after", b""), (b"server", b""),
    (b"set-cookie", b""), (b"strict-transport-security", b""),
    (b"transfer-encoding", b""), (b"user-agent", b""), (b"vary", b""),
    (b"via", b""), (b"www-authenticate", b""),
]

# RFC 7541 Appendix B: (code, bit length) for symbols 0..256 (256 is EOS).
_HUFFMAN = """
1ff8:13 7fffd8:23 fffffe2:28 fffffe3:28 fffffe4:28 fffffe5:28 fffffe6:28
fffffe7:28 fffffe8:28 ffffea:24 3ffffffc:30 fffffe9:28 fffffea:28
3ffffffd:30 fffffeb:28 fffffec:28 fffffed:28 fffffee:28 fffffef:28
ffffff0:28 ffffff1:28 ffffff2:28 3ffffffe:30 ffffff3:28 ffffff4:28
ffffff5:28 ffffff6:28 ffffff7:28 ffffff8:28 ffffff9:28 ffffffa:28
ffffffb:28 14:6 3f8:10 3f9:10 ffa:12 1ff9:13 15:6 f8:8 7fa:11 3fa:10 3fb:10
f9:8 7fb:11 fa:8 16:6 17:6 18:6 0:5 1:5 2:5 19:6 1a:6 1b:6 1c:6 1d:6 1e:6
1f:6 5c:7 fb:8 7ffc:15 20:6 ffb:12 3fc:10 1ffa:13 21:6 5d:7 5e:7 5f:7 60:7
61:7 62:7 63:7 64:7 65:7 66:7 67:7 68:7 69:7 6a:7 6b:7 6c:7 6d:7 6e:7 6f:7
70:7 71:7 72:7 fc:8 73:7 fd:8 1ffb:13 7fff0:19 1ffc:13 3ffc:14 22:6 7ffd:15
3:5 23:6 4:5 24:6 5:5 25:6 26:6 27:6 6:5 74:7 75:7 28:6 29:6 2a:6 7:5 2b:6
76:7 2c:6 8:5 9:5 2d:6 77:7 78:7 79:7 7a:7 7b:7 7ffe:15 7fc:11 3ffd:14
1ffd:13 ffffffc:28 fffe6:20 3fffd2:22 fffe7:20 fffe8:20 3fffd3:22 3fffd4:22
3fffd5:22 7fffd9:23 3fffd6:22 7fffda:23 7fffdb:23 7fffdc:23 7fffdd:23
7fffde:23 ffffeb:24 7fffdf:23 ffffec:24 ffffed:24 3fffd7:22 7fffe0:23
ffffee:24 7fffe1:23 7fffe2:23 7fffe3:23 7fffe4:23 1fffdc:21 3fffd8:22
7fffe5:23 3fffd9:22 7fffe6:23 7fffe7:23 ffffef:24 3fffda:22 1fffdd:21
fffe9:20 3fffdb:22 3fffdc:22 7fffe8:23 7fffe9:23 1fffde:21 7fffea:23
3fffdd:22 3fffde:22 fffff0:24 1fffdf:21 3fffdf:22 7fffeb:23 7fffec:23
1fffe0:21 1fffe1:21 3fffe0:22 1fffe2:21 7fffed:23 3fffe1:22 7fffee:23
7fffef:23 fffea:20 3fffe2:22 3fffe3:22 3fffe4:22 7ffff0:23 3fffe5:22
3fffe6:22 7ffff1:23 3ffffe0:26 3ffffe1:26 fffeb:20 7fff1:19 3fffe7:22
7ffff2:23 3fffe8:22 1ffffec:25 3ffffe2:26 3ffffe3:26 3ffffe4:26 7ffffde:27
7ffffdf:27 3ffffe5:26 fffff1:24 1ffffed:25 7fff2:19 1fffe3:21 3ffffe6:26
7ffffe0:27 7ffffe1:27 3ffffe7:26 7ffffe2:27 fffff2:24 1fffe4:21 1fffe5:21
3ffffe8:26 3ffffe9:26 ffffffd:28 7ffffe3:27 7ffffe4:27 7ffffe5:27 fffec:20
fffff3:24 fffed:20 1fffe6:21 3fffe9:22 1fffe7:21 1fffe8:21 7ffff3:23
3fffea:22 3fffeb:22 1ffffee:25 1ffffef:25 fffff4:24 fffff5:24 3ffffea:26
7ffff4:23 3ffffeb:26 7ffffe6:27 3ffffec:26 3ffffed:26 7ffffe7:27 7ffffe8:27
7ffffe9:27 7ffffea:27 7ffffeb:27 ffffffe:28 7ffffec:27 7ffffed:27
7ffffee:27 7ffffef:27 7fffff0:27 3ffffee:26 3fffffff:30
"""
_HUFFMAN_DECODE = {}
for _sym, _entry in enumerate(_HUFFMAN.split()):
    _code, _bits = _entry.split(":")
    _HUFFMAN_DECODE[(int(_bits), int(_code, 16))] = _sym
assert len(_HUFFMAN_DECODE) == 257


class HpackError(Exception):
    pass


def huffman_decode(data):
    out = bytearray()
    code = 0
    bits = 0
    for byte in data:
        for i in range(7, -1, -1):
            code = (code << 1) | ((byte >> i) & 1)
            bits += 1
            sym = _HUFFMAN_DECODE.get((bits, code))
            if sym is not None:
                if sym == 256:
                    raise HpackError("EOS in Huffman string")
                out.append(sym)
                code = 0
                bits = 0
            elif bits > 30:
                raise HpackError("bad Huffman code")
    # Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if bits > 7 or code != (1 << bits) - 1:
        raise HpackError("bad Huffman padding")
    return bytes(out)


def encode_int(value, prefix_bits, first_byte_flags):
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes([first_byte_flags | value])
    out = bytearray([first_byte_flags | limit])
    value -= limit
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_headers(headers):
    """HPACK block of literal fields without indexing, no Huffman."""
    out = bytearray()
    for name, value in headers:
        if isinstance(name, str):
            name = name.encode()
        if isinstance(value, str):
            value = value.encode()
        out.append(0x00)
        out += encode_int(len(name), 7, 0x00) + name
        out += encode_int(len(value), 7, 0x00) + value
    return bytes(out)


class HpackDecoder:
    def __init__(self):
        self.dynamic = []  # newest first
        self.size = 0
        self.max_size = 4096

    def _int(self, data, pos, prefix_bits):
        limit = (1 << prefix_bits) - 1
        value = data[pos] & limit
        pos += 1
        if value < limit:
            return value, pos
        shift = 0
        while True:
            b = data[pos]
            pos += 1
            value += (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return value, pos

    def _string(self, data, pos):
        huff = data[pos] & 0x80
        n, pos = self._int(data, pos, 7)
        raw = data[pos:pos + n]
        if len(raw) != n:
            raise HpackError("truncated string")
        return (huffman_decode(raw) if huff else bytes(raw)), pos + n

    def _entry(self, index):
        if index == 0:
            raise HpackError("index 0")
        if index <= len(STATIC_TABLE):
            return STATIC_TABLE[index - 1]
        i = index - len(STATIC_TABLE) - 1
        if i >= len(self.dynamic):
            raise HpackError(f"index {index} out of range")
        return self.dynamic[i]

    def _add(self, name, value):
        self.dynamic.insert(0, (name, value))
        self.size += len(name) + len(value) + 32
        self._evict()

    def _evict(self):
        while self.size > self.max_size and self.dynamic:
            n, v = self.dynamic.pop()
            self.size -= len(n) + len(v) + 32

    def decode(self, data):
        """Returns a list of (name, value) bytes pairs."""
        out = []
        pos = 0
        while pos < len(data):
            b = data[pos]
            if b & 0x80:  # indexed
                index, pos = self._int(data, pos, 7)
                out.append(self._entry(index))
            elif b & 0x40:  # literal, incremental indexing
                index, pos = self._int(data, pos, 6)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = self._string(data, pos)
                value, pos = self._string(data, pos)
                self._add(name, value)
                out.append((name, value))
            elif b & 0x20:  # dynamic table size update
                self.max_size, pos = self._int(data, pos, 5)
                self._evict()
            else:  # literal without indexing / never indexed
                index, pos = self._int(data, pos, 4)
                if index:
                    name = self._entry(index)[0]
                else:
                    name, pos = self._string(data, pos)
                value, pos = self._string(data, pos)
                out.append((name, value))
        return out


# --- the connection -----------------------------------------------------------

class Response:
    """What came back on one stream."""

    def __init__(self):
        self.headers = None   # dict of the first HEADERS block
        self.trailers = None  # dict of the second HEADERS block
        self.data = b""
        self.rst = None       # RST_STREAM error code, if any
        self.ended = False    # END_STREAM seen

    @property
    def done(self):
        return self.ended or self.rst is not None

    def status_fields(self):
        """The block carrying grpc-status: trailers, or Trailers-Only."""
        if self.trailers is not None:
            return self.trailers
        return self.headers or {}

    @property
    def grpc_status(self):
        v = self.status_fields().get("grpc-status")
        return int(v) if v is not None else None

    @property
    def grpc_message(self):
        return self.status_fields().get("grpc-message", "")

    def messages(self):
        return parse_grpc_messages(self.data)[0]


class Closed(Exception):
    """The server closed the connection."""


class H2Conn:
    """One HTTP/2 client connection over a plain socket (h2c).

    The reader auto-acknowledges SETTINGS and answers PING unless told not
    to; frames not consumed by a wait are kept in `self.frames`.
    """

    def __init__(self, port, host="127.0.0.1", timeout=15.0, handshake=True,
                 settings=(), ack_settings=True, auto_window=True):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.buf = b""
        self.hpack = HpackDecoder()
        self.next_stream_id = 1
        self.responses = {}
        self.frames = []           # every frame received, in order
        self.goaway = None         # the GOAWAY frame, once seen
        self.server_settings = {}
        self.ack_settings = ack_settings
        self.auto_window = auto_window
        self.eof = False
        self._header_block = None  # (stream_id, bytes) across CONTINUATION
        if handshake:
            try:
                self.send(PREFACE + settings_frame(settings))
                self.wait(lambda: self.server_settings_seen)
            except BaseException:
                self.close()
                raise

    server_settings_seen = False

    # -- sending --

    def send(self, data):
        self.sock.sendall(data)

    def send_frame(self, ftype, flags, stream_id, payload=b""):
        self.send(frame(ftype, flags, stream_id, payload))

    def new_stream_id(self):
        sid = self.next_stream_id
        self.next_stream_id += 2
        return sid

    def request_headers(self, path, metadata=(), method="POST",
                        content_type="application/grpc", timeout=None):
        headers = [(":method", method), (":scheme", "http"), (":path", path),
                   (":authority", "localhost")]
        if content_type is not None:
            headers.append(("content-type", content_type))
        headers.append(("te", "trailers"))
        if timeout is not None:
            headers.append(("grpc-timeout", timeout))
        headers += list(metadata)
        return encode_headers(headers)

    def send_headers(self, stream_id, block, end_stream=False):
        flags = END_HEADERS | (END_STREAM if end_stream else 0)
        self.responses.setdefault(stream_id, Response())
        self.send_frame(HEADERS, flags, stream_id, block)

    def send_data(self, stream_id, data, end_stream=False):
        # Stay under the default SETTINGS_MAX_FRAME_SIZE.
        chunk = 16384
        if not data:
            self.send_frame(DATA, END_STREAM if end_stream else 0, stream_id)
            return
        for i in range(0, len(data), chunk):
            last = i + chunk >= len(data)
            self.send_frame(DATA, END_STREAM if (end_stream and last) else 0,
                            stream_id, data[i:i + chunk])

    def grpc_request(self, path, body=b"", metadata=(), end_stream=True,
                     timeout=None):
        """Opens a stream and sends one gRPC message. Returns the stream id."""
        sid = self.new_stream_id()
        self.send_headers(sid, self.request_headers(path, metadata,
                                                    timeout=timeout))
        self.send_data(sid, grpc_message(body), end_stream=end_stream)
        return sid

    def rst_stream(self, stream_id, code=CANCEL):
        self.send_frame(RST_STREAM, 0, stream_id, struct.pack(">I", code))

    def ping(self, data=b"12345678", ack=False):
        self.send_frame(PING, ACK if ack else 0, 0, data)

    def window_update(self, stream_id, increment):
        self.send_frame(WINDOW_UPDATE, 0, stream_id,
                        struct.pack(">I", increment & 0x7FFFFFFF))

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    # -- receiving --

    def _recv_some(self, deadline):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no frame in time")
        self.sock.settimeout(min(remaining, self.timeout))
        try:
            data = self.sock.recv(65536)
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.eof = True
            raise Closed()
        self.buf += data
        return True

    def read_frame(self, timeout=None):
        """The next frame, processed; raises Closed at EOF."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            if len(self.buf) >= 9:
                n = int.from_bytes(self.buf[:3], "big")
                if len(self.buf) >= 9 + n:
                    ftype, flags = self.buf[3], self.buf[4]
                    sid = struct.unpack(">I", self.buf[5:9])[0] & 0x7FFFFFFF
                    f = Frame(ftype, flags, sid, self.buf[9:9 + n])
                    self.buf = self.buf[9 + n:]
                    self._process(f)
                    return f
            self._recv_some(deadline)

    def _headers_done(self, sid, block):
        fields = self.hpack.decode(block)
        d = {k.decode("latin-1"): v.decode("latin-1") for k, v in fields}
        r = self.responses.setdefault(sid, Response())
        if r.headers is None:
            r.headers = d
        else:
            r.trailers = d

    def _process(self, f):
        self.frames.append(f)
        r = self.responses.get(f.stream_id)
        if f.type == SETTINGS and not f.flags & ACK:
            for i in range(0, len(f.payload) - 5, 6):
                k, v = struct.unpack(">HI", f.payload[i:i + 6])
                self.server_settings[k] = v
            self.server_settings_seen = True
            if self.ack_settings:
                self.send(settings_frame(ack=True))
        elif f.type == PING and not f.flags & ACK:
            self.ping(f.payload, ack=True)
        elif f.type == GOAWAY:
            self.goaway = f
        elif f.type in (HEADERS, CONTINUATION):
            payload = f.payload
            if f.type == HEADERS:
                if f.flags & PADDED:
                    pad = payload[0]
                    payload = payload[1:len(payload) - pad]
                if f.flags & PRIORITY_FLAG:
                    payload = payload[5:]
                self._header_block = (f.stream_id, payload)
            else:
                sid, block = self._header_block
                self._header_block = (sid, block + payload)
            if f.flags & END_HEADERS:
                sid, block = self._header_block
                self._header_block = None
                self._headers_done(sid, block)
            r = self.responses.setdefault(f.stream_id, Response())
            if f.type == HEADERS and f.flags & END_STREAM:
                r.ended = True
        elif f.type == DATA:
            r = self.responses.setdefault(f.stream_id, Response())
            payload = f.payload
            if f.flags & PADDED:
                payload = payload[1:len(payload) - payload[0]]
            r.data += payload
            if f.flags & END_STREAM:
                r.ended = True
            if self.auto_window and f.payload:
                self.window_update(0, len(f.payload))
                if not r.ended:
                    self.window_update(f.stream_id, len(f.payload))
        elif f.type == RST_STREAM:
            r = self.responses.setdefault(f.stream_id, Response())
            r.rst = f.error_code()

    def wait(self, cond, timeout=None):
        """Reads frames until cond() is true. Raises Closed or TimeoutError."""
        deadline = time.monotonic() + (timeout or self.timeout)
        while not cond():
            self.read_frame(max(0.01, deadline - time.monotonic()))

    def read_response(self, stream_id, timeout=None):
        self.responses.setdefault(stream_id, Response())
        self.wait(lambda: self.responses[stream_id].done, timeout)
        return self.responses[stream_id]

    def read_until_closed(self, timeout=None):
        """Reads (and processes) frames until EOF; returns them."""
        start = len(self.frames)
        try:
            self.wait(lambda: False, timeout)
        except Closed:
            pass
        return self.frames[start:]

    def health_check(self):
        """A Health Check on a new stream; returns the Response."""
        return self.read_response(self.grpc_request(HEALTH_CHECK, b""))


def wait_closed(sock, timeout=10.0):
    """Reads and drops bytes until the peer closes; returns them. Raises
    TimeoutError if it stays open."""
    deadline = time.monotonic() + timeout
    got = b""
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("connection still open")
        sock.settimeout(remaining)
        try:
            data = sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            return got
        if not data:
            return got
        got += data


def frames_in(data):
    """Parses complete frames out of raw bytes (no processing)."""
    out = []
    while len(data) >= 9:
        n = int.from_bytes(data[:3], "big")
        if len(data) < 9 + n:
            break
        sid = struct.unpack(">I", data[5:9])[0] & 0x7FFFFFFF
        out.append(Frame(data[3], data[4], sid, data[9:9 + n]))
        data = data[9 + n:]
    return out

