"""A tiny Twilio-compatible HTTP server for tests: the Messages endpoint and basic auth.

    with TwilioServer() as twilio:
        monkeypatch.setenv("TWILIO_ACCOUNT_SID", twilio.account_sid)   # or: for name, value in
        monkeypatch.setenv("TWILIO_AUTH_TOKEN", twilio.auth_token)     #   twilio.environ().items()
        monkeypatch.setenv("TWILIO_API_URL", twilio.url)
        twilio.fail_next(429, 20429)            # the next POST is refused (rate limit)
        twilio.hang_next(5)                     # the next POST is answered 5 s late
        twilio.drop_next()                      # the next POST is taken, then the line drops
        ...
        forms = twilio.wait_for(lambda messages: len(messages) >= 2, timeout=10)

`.messages` holds the form (To, From, Body, ...) of every message the server accepted,
`.sids` the SID it answered for each and `.arrivals` when it took each (time.monotonic());
`.requests` holds every authenticated POST to the Messages endpoint, refused ones included.
A wrong account SID or auth token gets a 401.
`add_media(content_type, data)` stores a file and returns its media URL, served to an
authenticated GET as Twilio serves a customer's photo; `.media_requests` holds the path of
every GET the server received.
A hung POST is taken (recorded) at once and only its answer is late, as when Twilio accepts a
message but the reply is slow; stopping the server releases any answer still held back. A
dropped POST is taken too, but the connection closes before any answer.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from base64 import b64encode
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

DEFAULT_ACCOUNT_SID = "AC" + "7" * 32
DEFAULT_AUTH_TOKEN = "fake-twilio-auth-token"


class TwilioServer:
    """POST /2010-04-01/Accounts/<sid>/Messages.json, answered like Twilio does."""

    def __init__(
        self, account_sid: str = DEFAULT_ACCOUNT_SID, auth_token: str = DEFAULT_AUTH_TOKEN
    ) -> None:
        self.account_sid = account_sid
        self.auth_token = auth_token
        self.messages: list[dict[str, str]] = []
        self.sids: list[str] = []
        self.arrivals: list[float] = []
        self.requests: list[dict[str, str]] = []
        self.media: dict[str, tuple[str, bytes]] = {}
        self.media_requests: list[str] = []
        self._failures: list[tuple[int, int, str]] = []
        self._hangs: list[float] = []
        self._drops = 0
        self._stopping = threading.Event()
        self._changed = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> TwilioServer:
        self._stopping.clear()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="fake-twilio", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # release answers held back by hang_next
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> TwilioServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL to give as TWILIO_API_URL."""
        assert self._server is not None, "the server is not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def environ(self) -> dict[str, str]:
        """The settings that point the desk at this server."""
        return {
            "TWILIO_ACCOUNT_SID": self.account_sid,
            "TWILIO_AUTH_TOKEN": self.auth_token,
            "TWILIO_API_URL": self.url,
        }

    # --- behaviour ------------------------------------------------------------------------------

    def fail_next(self, status: int, code: int, times: int = 1, message: str = "") -> None:
        """Refuse the next `times` messages with this HTTP status and Twilio error code."""
        with self._changed:
            self._failures.extend([(status, code, message or f"fake error {code}")] * times)

    def drop_next(self) -> None:
        """Take the next POST as usual, then close the connection without answering (the
        line dropped after Twilio had the message)."""
        with self._changed:
            self._drops += 1

    def _dropping(self) -> bool:
        with self._changed:
            if self._drops:
                self._drops -= 1
                return True
            return False

    def hang_next(self, seconds: float) -> None:
        """Take the next POST as usual but hold its answer back `seconds` (a slow Twilio)."""
        with self._changed:
            self._hangs.append(seconds)

    def add_media(self, content_type: str, data: bytes) -> str:
        """Store a file as a customer's media; its URL (under this server, like Twilio's)."""
        path = (
            f"/2010-04-01/Accounts/{self.account_sid}/Messages/MM{uuid.uuid4().hex}"
            f"/Media/ME{uuid.uuid4().hex}"
        )
        with self._changed:
            self.media[path] = (content_type, data)
        return self.url + path

    def wait_for(
        self, predicate: Callable[[list[dict[str, str]]], bool], timeout: float = 5.0
    ) -> list[dict[str, str]]:
        """Block until predicate(accepted messages) is true; the messages then, or TimeoutError."""
        with self._changed:
            if not self._changed.wait_for(lambda: predicate(list(self.messages)), timeout):
                latest = self.messages[-5:]
                raise TimeoutError(
                    f"fake Twilio: condition not met in {timeout}s; got {len(self.messages)} "
                    f"message(s), the latest: {latest!r}"
                )
            return list(self.messages)

    # --- called by the handler ------------------------------------------------------------------

    def _delay(self) -> float:
        """How long to hold back the answer to the POST being handled."""
        with self._changed:
            return self._hangs.pop(0) if self._hangs else 0.0

    def _hold(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)

    def _answer(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        with self._changed:
            self.requests.append(form)
            if self._failures:
                status, code, text = self._failures.pop(0)
                self._changed.notify_all()
                return status, {
                    "code": code,
                    "message": text,
                    "more_info": f"https://www.twilio.com/docs/errors/{code}",
                    "status": status,
                }
            sid = "SM" + uuid.uuid4().hex
            self.sids.append(sid)
            self.arrivals.append(time.monotonic())
            self.messages.append(form)
            self._changed.notify_all()
        created = format_datetime(datetime.now(UTC), usegmt=True)
        return 201, {
            "sid": sid,
            "account_sid": self.account_sid,
            "to": form.get("To"),
            "from": form.get("From"),
            "body": form.get("Body"),
            "status": "queued",
            "num_segments": "1",
            "num_media": "0",
            "direction": "outbound-api",
            "api_version": "2010-04-01",
            "date_created": created,
            "date_updated": created,
            "date_sent": None,
            "error_code": None,
            "error_message": None,
            "price": None,
            "price_unit": "USD",
            "messaging_service_sid": form.get("MessagingServiceSid"),
            "uri": f"/2010-04-01/Accounts/{self.account_sid}/Messages/{sid}.json",
            "subresource_uris": {},
        }

    def _authorized(self, header: str) -> bool:
        expected = b64encode(f"{self.account_sid}:{self.auth_token}".encode()).decode()
        return header == f"Basic {expected}"


def _handler_for(server: TwilioServer) -> type[BaseHTTPRequestHandler]:
    path = f"/2010-04-01/Accounts/{server.account_sid}/Messages.json"

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            if not server._authorized(self.headers.get("Authorization", "")):
                self._reply(401, {"code": 20003, "message": "Authenticate", "status": 401})
                return
            if self.path.split("?")[0] != path:
                self._reply(404, {"code": 20404, "message": "Not found", "status": 404})
                return
            form = {
                name: values[-1] for name, values in parse_qs(raw, keep_blank_values=True).items()
            }
            delay = server._delay()
            answer = server._answer(form)
            if server._dropping():
                self.close_connection = True
                return
            server._hold(delay)
            try:
                self._reply(*answer)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client stopped waiting for a held-back answer

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            with server._changed:
                server.media_requests.append(self.path)
            if not server._authorized(self.headers.get("Authorization", "")):
                self._reply(401, {"code": 20003, "message": "Authenticate", "status": 401})
                return
            with server._changed:
                found = server.media.get(self.path.split("?")[0])
            if found is None:
                self._reply(404, {"code": 20404, "message": "Not found", "status": 404})
                return
            content_type, data = found
            self.send_response(200)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _reply(self, status: int, payload: dict[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    return Handler
