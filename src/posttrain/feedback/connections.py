"""A ThreadingHTTPServer with a bounded number of connection threads that a flood of half-open connections cannot fill.

Each connection holds one of `max_connections` slots (one thread) from accept until it closes. A connection is
*receiving* until its handler has read the whole request (`request_read`); when every slot is taken, the oldest
receiving connection is shut down to make room, so clients that send a request at once are served while
connections that dribble one (slowloris) are dropped first. Only when every slot is busy answering does a new
connection wait (up to `wait_for_slot` seconds) and then get a 503. The handler's socket timeout drops a request
that stalls on its own.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from http.server import ThreadingHTTPServer

REFUSED = b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\nRetry-After: 1\r\n"


class BoundedHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = (
        128  # the listen backlog: a burst of connects waits in the kernel, not in SYN retries
    )
    wait_for_slot = 1.0

    def __init__(self, address, handler, *, max_connections: int, extra_headers: bytes = b""):
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._slots = threading.BoundedSemaphore(max_connections)
        self._receiving: dict[socket.socket, None] = {}  # insertion order = oldest first
        self._lock = threading.Lock()
        self._refused = REFUSED + extra_headers + b"\r\n"
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self._evict_oldest_receiving()
            if not self._slots.acquire(timeout=self.wait_for_slot):
                self._refuse(request)
                return
        with self._lock:
            self._receiving[request] = None
        try:
            super().process_request(request, client_address)  # starts the connection's thread
        except BaseException:
            self.shutdown_request(request)
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def request_read(self, request: socket.socket) -> None:
        """Called by the handler once the whole request is in: the connection may no longer be evicted."""
        with self._lock:
            self._receiving.pop(request, None)

    def shutdown_request(self, request):
        with self._lock:  # forget it before closing, so eviction never touches a closed (reused) descriptor
            self._receiving.pop(request, None)
        super().shutdown_request(request)

    def _evict_oldest_receiving(self) -> None:
        with self._lock:
            oldest = next(iter(self._receiving), None)
            if oldest is not None:
                del self._receiving[oldest]
                with contextlib.suppress(OSError):
                    oldest.shutdown(socket.SHUT_RDWR)  # its thread's read returns b"" and the thread ends

    def _refuse(self, request: socket.socket) -> None:
        with contextlib.suppress(OSError):
            request.settimeout(0.1)
            request.sendall(self._refused)
        self.shutdown_request(request)

    def handle_error(self, request, client_address):
        """A client that went away mid-request is not an error worth a traceback; anything else still is."""
        if isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)
