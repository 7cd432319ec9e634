"""A virtual null-modem cable in pure Python: two ptys whose master ends are shuttled by a thread.

Replaces ``socat pty,raw,echo=0,link=A pty,raw,echo=0,link=B`` where socat is absent, and adds
what socat cannot do: a ``mangle`` hook to drop or corrupt bytes in flight (fault tests), and
``replug()`` to make side B vanish and come back on a new pty, like a USB adapter re-enumerating.

The relay is a thread, not an asyncio reader, so a blocking client (pysunspec2) running in the
same process cannot stall it. The slave ends stay open on our side so a master never reads EIO
when a peer closes and reopens its port.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import termios
import threading
import tty
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

__all__ = ["Mangle", "PtyPair"]

log = logging.getLogger(__name__)

# direction ("a->b" or "b->a"), bytes read -> bytes to forward (b"" drops them)
Mangle = Callable[[str, bytes], bytes]
_BAUD_OF = {getattr(termios, f"B{b}"): b for b in (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200, 230400)}


class _End:
    def __init__(self, link: Path | None) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)        # no echo, no CR/LF translation, no signals: a raw wire
        tty.setraw(self.master)
        # A wire nobody listens to loses bytes; it never stops the other direction. A blocking
        # write into a full pty buffer (no reader on that side) would hang the relay thread.
        os.set_blocking(self.master, False)
        self.tty_path = os.ttyname(self.slave)
        self.link = link
        if link is not None:
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to(self.tty_path)

    @property
    def path(self) -> str:
        return str(self.link) if self.link is not None else self.tty_path

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class PtyPair:
    """Two connected ptys, ``a`` and ``b`` (paths, or symlinks when links are given).

    Use as a context manager (``with PtyPair(...) as pair``) or call ``start()``/``close()``.
    """

    def __init__(self, link_a: str | Path | None = None, link_b: str | Path | None = None,
                 *, mangle: Mangle | None = None) -> None:
        self._link_a = Path(link_a) if link_a is not None else None
        self._link_b = Path(link_b) if link_b is not None else None
        self.mangle = mangle
        self._lock = threading.Lock()
        self._a = _End(self._link_a)
        self._b: _End | None = _End(self._link_b)
        # Ends unplugged but not yet closed: only the relay thread closes them, between two selects,
        # so it never registers or reads an fd that another thread closed (EBADF killed the relay).
        self._retired: list[_End] = []
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="ptypair.relay", daemon=True)

    @property
    def a(self) -> str:
        return self._a.path

    @property
    def b(self) -> str:
        """Path of side B (its link when one was given; unchanged across replugs)."""
        if self._b is None:
            return str(self._link_b)
        return self._b.path

    def start(self) -> PtyPair:
        self._thread.start()
        return self

    def __enter__(self) -> PtyPair:
        return self.start()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def baudrate_b(self) -> int | None:
        """The baud rate the program on side B set on its port (termios), None when B is unplugged.

        A pty moves bytes at any speed, so a test that needs a real line's behaviour (a unit at 19200
        cannot decode a request sent at 9600) decides in ``mangle`` from this what the wire would do.
        """
        with self._lock:
            b = self._b
        if b is None:
            return None
        try:
            speed = termios.tcgetattr(b.slave)[5]
        except termios.error:
            return None
        return _BAUD_OF.get(speed)

    def unplug(self) -> None:
        """Side B disappears: its link is removed now and its pty closed by the relay at once
        (USB adapter pulled)."""
        with self._lock:
            old = self._b
            self._b = None
            if old is not None:
                self._retired.append(old)
                if old.link is not None and old.link.is_symlink():
                    old.link.unlink()
        os.write(self._wake_w, b"x")

    def plug(self) -> None:
        """Side B comes back on a new pty under the same link name (USB adapter re-enumerated)."""
        with self._lock:
            if self._b is None:
                self._b = _End(self._link_b)
        os.write(self._wake_w, b"x")

    def replug(self) -> None:
        """``unplug()`` then ``plug()`` at once."""
        self.unplug()
        self.plug()

    def close(self) -> None:
        """Stop the relay thread and close every fd; remove the links."""
        self._stop = True
        os.write(self._wake_w, b"x")
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        for end in (self._a, self._b, *self._retired):
            if end is None:
                continue
            end.close()
            if end.link is not None and end.link.is_symlink():
                end.link.unlink()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        try:
            while not self._stop:
                with self._lock:
                    a, b = self._a, self._b
                    retired, self._retired = self._retired, []
                for end in retired:        # nothing is registered between two iterations
                    end.close()
                sel.register(self._wake_r, selectors.EVENT_READ, None)
                sel.register(a.master, selectors.EVENT_READ, (b, "a->b"))
                if b is not None:
                    sel.register(b.master, selectors.EVENT_READ, (a, "b->a"))
                for key, _ in sel.select():
                    if key.data is None:
                        os.read(self._wake_r, 64)
                        continue
                    target, direction = key.data
                    try:
                        data = os.read(key.fd, 4096)
                    except OSError:
                        continue           # the pty was closed under us by replug()/close()
                    if self.mangle is not None:
                        data = self.mangle(direction, data)
                    if data and target is not None:       # side B unplugged: bytes fall on the floor
                        try:
                            os.write(target.master, data)
                        except OSError as exc:
                            log.debug("ptypair dropped bytes direction=%s error=%s", direction, exc)
                for fd in list(sel.get_map()):
                    sel.unregister(fd)
        finally:
            sel.close()
