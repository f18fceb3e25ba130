"""A TCP proxy whose connections the test can cut, as a flapping WAN link does.

Runs in the test's Trio nursery (``port = await nursery.start(proxy.serve)``) in front of a real
process; :meth:`TcpProxy.cut` closes every connection open through it at that moment, both
sides, mid-request or not.
"""

from __future__ import annotations

import trio


class TcpProxy:
    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self._open: set[trio.CancelScope] = set()
        self.connections = 0  # accepted in all
        self.cuts = 0  # connections cut by cut()

    async def serve(self, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                    ) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self._handle, listeners)

    def cut(self) -> int:
        """Close every connection open now; returns how many."""
        n = len(self._open)
        for scope in list(self._open):
            scope.cancel()
        self.cuts += n
        return n

    async def _handle(self, client: trio.SocketStream) -> None:
        self.connections += 1
        scope = trio.CancelScope()
        self._open.add(scope)
        try:
            with scope:
                try:
                    upstream = await trio.open_tcp_stream(*self.target)
                except OSError:
                    return
                async with client, upstream, trio.open_nursery() as n:
                    n.start_soon(self._pump, client, upstream, n.cancel_scope)
                    n.start_soon(self._pump, upstream, client, n.cancel_scope)
        finally:
            self._open.discard(scope)
            await client.aclose()

    @staticmethod
    async def _pump(src: trio.SocketStream, dst: trio.SocketStream,
                    both: trio.CancelScope) -> None:
        try:
            while data := await src.receive_some(65536):
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        both.cancel()  # one side closed: close the other
