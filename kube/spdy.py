"""SPDY/3.1 framing and header blocks, pure (no I/O): what ``kubectl port-forward`` speaks.

kubectl (client-go, through moby/spdystream) carries SPDY/3.1 inside a WebSocket tunnel (or
after a direct ``Upgrade: SPDY/3.1``).  This module turns the byte stream into frames and frames
into bytes; agent/portforward.py runs the session on top.

    parser = FrameParser()                   # one per connection and direction (zlib state)
    for frame in parser.feed(chunk):         # any split of the byte stream; partial frames wait
        ...
    writer = FrameWriter()                   # one per connection (the header compressor)
    out = writer.encode(SynReply(stream_id=1, headers={}))

Wire format (SPDY/3 draft, big endian)::

    control frame:  |1| version (15) | type (16) |  flags (8) | length (24) | payload
    data frame:     |0| stream id (31)           |  flags (8) | length (24) | data

Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are ``uint32 count`` then per header
``uint32 len, name, uint32 len, value`` (several values joined by NUL), compressed with one
zlib stream per direction for the whole connection, primed with the SPDY/3 dictionary and
ended by a sync flush per frame.  Header names are lower case.

Flow control: SPDY/3.1 has per-stream and session windows (64 KiB initial), but spdystream (the
implementation in kubectl and in the kubelet) neither sends WINDOW_UPDATE nor honours windows; the
frames are parsed, and what a session does with them is its own choice.

Malformed input raises SpdyError (with the RST_STREAM/GOAWAY status to answer with), never
anything else.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3

# control frame types
SYN_STREAM = 1
SYN_REPLY = 2
RST_STREAM = 3
SETTINGS = 4
PING = 6
GOAWAY = 7
HEADERS = 8
WINDOW_UPDATE = 9

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02

# RST_STREAM status codes
PROTOCOL_ERROR = 1
INVALID_STREAM = 2
REFUSED_STREAM = 3
UNSUPPORTED_VERSION = 4
CANCEL = 5
INTERNAL_ERROR = 6
FLOW_CONTROL_ERROR = 7
STREAM_IN_USE = 8
STREAM_ALREADY_CLOSED = 9
FRAME_TOO_LARGE = 11

# GOAWAY status codes
GOAWAY_OK = 0
GOAWAY_PROTOCOL_ERROR = 1
GOAWAY_INTERNAL_ERROR = 2

# SETTINGS ids
SETTINGS_MAX_CONCURRENT_STREAMS = 4
SETTINGS_INITIAL_WINDOW_SIZE = 7

MAX_LENGTH = (1 << 24) - 1  # the 24-bit length field
MAX_STREAM_ID = (1 << 31) - 1
DEFAULT_WINDOW = 64 * 1024
MAX_HEADER_BLOCK = 256 * 1024  # decompressed; a bigger block is refused (a zlib bomb stops here)
MAX_FRAME = 1 << 20  # frames we accept; data frames are split below this by any sane peer


def _dictionary() -> bytes:
    """The SPDY/3 header compression dictionary (draft 3, section 2.6.10.1).

    It is a fixed byte string: 65 length-prefixed words, then a run of status codes, reason
    phrases, dates and media types.  zlib checks it by its Adler-32 (carried in the compressed
    stream's header), so it must be exact: DICTIONARY_ADLER32 below is that checksum.
    """
    words = (
        "options head post put delete trace accept accept-charset accept-encoding accept-language "
        "accept-ranges age allow authorization cache-control connection content-base content-encoding "
        "content-language content-length content-location content-md5 content-range content-type date "
        "etag expect expires from host if-match if-modified-since if-none-match if-range "
        "if-unmodified-since last-modified location max-forwards pragma proxy-authenticate "
        "proxy-authorization range referer retry-after server te trailer transfer-encoding upgrade "
        "user-agent vary via warning www-authenticate method get status"
    ).split()
    words += ["200 OK", "version", "HTTP/1.1", "url", "public", "set-cookie", "keep-alive", "origin"]
    tail = (
        "100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505"
        "203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request"
        "401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented"
        "503 Service Unavailable"
        "Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT"
        "chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,"
        "text/plain,text/javascript,publicprivatemax-age=gzip,deflate,sdch"
        "charset=utf-8charset=iso-8859-1,utf-,*,enq=0."
    )
    return b"".join(struct.pack(">I", len(w)) + w.encode() for w in words) + tail.encode()


DICTIONARY = _dictionary()
DICTIONARY_ADLER32 = 0xE3C6A7C2  # the DICTID in every SPDY/3 peer's zlib header (kubectl 1.32's checked)

Headers = dict[str, list[str]]


class SpdyError(Exception):
    """Input that breaks the protocol.  stream_id 0 means the whole session (answer GOAWAY),
    otherwise one stream (answer RST_STREAM with ``status``)."""

    def __init__(self, message: str, stream_id: int = 0, status: int = PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.stream_id = stream_id
        self.status = status


# -- frames ------------------------------------------------------------------------


@dataclass
class SynStream:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0
    associated_id: int = 0
    priority: int = 0  # 0 (highest) .. 7
    slot: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass
class SynReply:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0


@dataclass
class RstStream:
    stream_id: int
    status: int


@dataclass
class Settings:
    entries: list[tuple[int, int, int]] = field(default_factory=list)  # (flags, id, value)
    flags: int = 0


@dataclass
class Ping:
    ping_id: int


@dataclass
class GoAway:
    last_good_stream_id: int
    status: int = GOAWAY_OK


@dataclass
class HeadersFrame:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0


@dataclass
class WindowUpdate:
    stream_id: int
    delta: int


@dataclass
class Data:
    stream_id: int
    data: bytes = b""
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


@dataclass
class UnknownControl:
    """A control frame type this module does not know: the draft says ignore it."""
    frame_type: int
    flags: int
    payload: bytes


Frame = (SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate | Data
         | UnknownControl)


# -- header blocks -------------------------------------------------------------------


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block; names are lower-cased, values joined by NUL."""
    out = [struct.pack(">I", len(headers))]
    for name, values in headers.items():
        n = name.lower().encode()
        v = b"\x00".join(x.encode() for x in values)
        out.append(struct.pack(">I", len(n)) + n + struct.pack(">I", len(v)) + v)
    return b"".join(out)


def decode_header_block(block: bytes, stream_id: int = 0) -> Headers:
    """Parse an uncompressed block; SpdyError (PROTOCOL_ERROR on the stream) when malformed."""
    def fail(what: str) -> SpdyError:
        return SpdyError(f"malformed header block on stream {stream_id}: {what}", stream_id)
    if len(block) < 4:
        raise fail("shorter than its count")
    (count,) = struct.unpack_from(">I", block, 0)
    pos = 4
    headers: Headers = {}
    for _ in range(count):
        parts: list[bytes] = []
        for _what in ("name", "value"):
            if pos + 4 > len(block):
                raise fail("truncated length")
            (n,) = struct.unpack_from(">I", block, pos)
            pos += 4
            if pos + n > len(block):
                raise fail("truncated string")
            parts.append(block[pos:pos + n])
            pos += n
        raw_name, raw_value = parts
        if not raw_name:
            raise fail("empty header name")
        try:
            name, value = raw_name.decode(), raw_value.decode()
        except UnicodeDecodeError:
            raise fail("header is not UTF-8") from None
        if name in headers:
            raise fail(f"duplicate header {name!r}")
        headers[name.lower()] = value.split("\x00")
    if pos != len(block):
        raise fail(f"{len(block) - pos} stray bytes after {count} headers")
    return headers


def header(headers: Headers, name: str) -> str:
    """The first value of a header, "" when absent (names are matched case-insensitively)."""
    values = headers.get(name.lower()) or [""]
    return values[0]


class HeaderCompressor:
    """One per connection and direction: the zlib stream runs across frames."""

    def __init__(self) -> None:
        self._z = zlib.compressobj(zlib.Z_DEFAULT_COMPRESSION, zlib.DEFLATED, 15, 9, zlib.Z_DEFAULT_STRATEGY,
                                   DICTIONARY)

    def compress(self, headers: Headers) -> bytes:
        block = encode_header_block(headers)
        return self._z.compress(block) + self._z.flush(zlib.Z_SYNC_FLUSH)


class HeaderDecompressor:
    def __init__(self) -> None:
        self._z = zlib.decompressobj(15, DICTIONARY)

    def decompress(self, data: bytes, stream_id: int) -> Headers:
        try:
            block = self._z.decompress(data, MAX_HEADER_BLOCK)
        except zlib.error as e:  # a session error: the shared zlib state is now unusable
            raise SpdyError(f"header block of stream {stream_id} does not decompress "
                            f"(wrong SPDY version or dictionary?): {e}") from None
        if self._z.unconsumed_tail:
            raise SpdyError(f"header block of stream {stream_id} is larger than {MAX_HEADER_BLOCK} bytes")
        return decode_header_block(block, stream_id)


# -- parsing -------------------------------------------------------------------------


class FrameParser:
    """Bytes in (any split), frames out.  Keeps the header decompressor for the connection."""

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buf = bytearray()
        self._headers = HeaderDecompressor()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= 8:
            (length,) = struct.unpack_from(">I", self._buf, 4)
            flags, length = length >> 24, length & MAX_LENGTH
            if length > self.max_frame:
                raise SpdyError(f"frame of {length} bytes is larger than the {self.max_frame} accepted",
                                status=FRAME_TOO_LARGE)
            if len(self._buf) < 8 + length:
                break
            head = bytes(self._buf[:4])
            payload = bytes(self._buf[8:8 + length])
            del self._buf[:8 + length]
            frames.append(self._frame(head, flags, payload))
        return frames

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame waiting for more input."""
        return len(self._buf)

    def _frame(self, head: bytes, flags: int, payload: bytes) -> Frame:
        (first,) = struct.unpack(">I", head)
        if not first & 0x80000000:
            sid = first & MAX_STREAM_ID
            if sid == 0:
                raise SpdyError("data frame on stream 0")
            return Data(sid, payload, flags)
        version, ftype = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise SpdyError(f"SPDY version {version} is not supported (only {VERSION})",
                            status=UNSUPPORTED_VERSION)
        return self._control(ftype, flags, payload)

    def _control(self, ftype: int, flags: int, p: bytes) -> Frame:
        def need(n: int, name: str, exact: bool = False) -> None:
            if len(p) < n or (exact and len(p) != n):
                raise SpdyError(f"{name} frame with a {len(p)}-byte payload")

        def sid_at(off: int) -> int:
            return int(struct.unpack_from(">I", p, off)[0]) & MAX_STREAM_ID

        if ftype == SYN_STREAM:
            need(10, "SYN_STREAM")
            sid, assoc = sid_at(0), sid_at(4)
            if sid == 0:
                raise SpdyError("SYN_STREAM for stream 0")
            headers = self._headers.decompress(p[10:], sid)
            return SynStream(sid, headers, flags, assoc, p[8] >> 5, p[9])
        if ftype in (SYN_REPLY, HEADERS):
            name = "SYN_REPLY" if ftype == SYN_REPLY else "HEADERS"
            need(4, name)
            sid = sid_at(0)
            if sid == 0:
                raise SpdyError(f"{name} for stream 0")
            headers = self._headers.decompress(p[4:], sid)
            return SynReply(sid, headers, flags) if ftype == SYN_REPLY else HeadersFrame(sid, headers, flags)
        if ftype == RST_STREAM:
            need(8, "RST_STREAM", exact=True)
            sid, status = sid_at(0), struct.unpack_from(">I", p, 4)[0]
            if sid == 0 or status == 0:
                raise SpdyError(f"RST_STREAM with stream {sid} and status {status}")
            return RstStream(sid, status)
        if ftype == SETTINGS:
            need(4, "SETTINGS")
            (n,) = struct.unpack_from(">I", p, 0)
            need(4 + 8 * n, "SETTINGS", exact=True)
            entries = []
            for i in range(n):
                fid, value = struct.unpack_from(">II", p, 4 + 8 * i)
                entries.append((fid >> 24, fid & 0xFFFFFF, value))
            return Settings(entries, flags)
        if ftype == PING:
            need(4, "PING", exact=True)
            return Ping(struct.unpack(">I", p)[0])
        if ftype == GOAWAY:
            # SPDY/3 has a status; SPDY/2-style 4-byte GOAWAYs are tolerated
            if len(p) not in (4, 8):
                raise SpdyError(f"GOAWAY frame with a {len(p)}-byte payload")
            status = struct.unpack_from(">I", p, 4)[0] if len(p) == 8 else GOAWAY_OK
            return GoAway(sid_at(0), status)
        if ftype == WINDOW_UPDATE:
            need(8, "WINDOW_UPDATE", exact=True)
            delta = struct.unpack_from(">I", p, 4)[0] & 0x7FFFFFFF
            return WindowUpdate(sid_at(0), delta)
        return UnknownControl(ftype, flags, p)


# -- writing -------------------------------------------------------------------------


def _control_header(ftype: int, flags: int, length: int) -> bytes:
    if length > MAX_LENGTH:
        raise ValueError(f"control frame payload of {length} bytes exceeds {MAX_LENGTH}")
    return struct.pack(">HHI", 0x8000 | VERSION, ftype, (flags << 24) | length)


def _sid(stream_id: int) -> int:
    if not 0 < stream_id <= MAX_STREAM_ID:
        raise ValueError(f"stream id {stream_id} is out of range 1..{MAX_STREAM_ID}")
    return stream_id


class FrameWriter:
    """Frames to bytes.  Holds the connection's header compressor: encode frames in the order
    they go on the wire (the zlib stream is shared by all of them)."""

    def __init__(self) -> None:
        self._headers = HeaderCompressor()

    def encode(self, f: Frame) -> bytes:
        if isinstance(f, Data):
            if len(f.data) > MAX_LENGTH:
                raise ValueError(f"data frame of {len(f.data)} bytes exceeds {MAX_LENGTH}: split it")
            return struct.pack(">II", _sid(f.stream_id), (f.flags << 24) | len(f.data)) + f.data
        if isinstance(f, SynStream):
            block = self._headers.compress(f.headers)
            body = struct.pack(">IIBB", _sid(f.stream_id), f.associated_id & MAX_STREAM_ID,
                               (f.priority & 7) << 5, f.slot) + block
            return _control_header(SYN_STREAM, f.flags, len(body)) + body
        if isinstance(f, SynReply | HeadersFrame):
            body = struct.pack(">I", _sid(f.stream_id)) + self._headers.compress(f.headers)
            ftype = SYN_REPLY if isinstance(f, SynReply) else HEADERS
            return _control_header(ftype, f.flags, len(body)) + body
        if isinstance(f, RstStream):
            return _control_header(RST_STREAM, 0, 8) + struct.pack(">II", _sid(f.stream_id), f.status)
        if isinstance(f, Settings):
            body = struct.pack(">I", len(f.entries)) + b"".join(
                struct.pack(">II", (fl << 24) | (fid & 0xFFFFFF), v) for fl, fid, v in f.entries)
            return _control_header(SETTINGS, f.flags, len(body)) + body
        if isinstance(f, Ping):
            return _control_header(PING, 0, 4) + struct.pack(">I", f.ping_id)
        if isinstance(f, GoAway):
            body = struct.pack(">II", f.last_good_stream_id & MAX_STREAM_ID, f.status)
            return _control_header(GOAWAY, 0, 8) + body
        if isinstance(f, WindowUpdate):
            return _control_header(WINDOW_UPDATE, 0, 8) + struct.pack(">II", f.stream_id & MAX_STREAM_ID,
                                                                      f.delta & 0x7FFFFFFF)
        if isinstance(f, UnknownControl):
            return _control_header(f.frame_type, f.flags, len(f.payload)) + f.payload
        raise TypeError(f"not a SPDY frame: {f!r}")
