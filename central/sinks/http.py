"""The HTTP plumbing the VictoriaMetrics, Loki and ClickHouse sinks share.

Third-party failures are converted at this boundary (STYLE 6): transport errors, timeouts, 5xx,
408/429 and the statuses that mean a misconfiguration an operator will fix (401, 403, 404: wrong
credentials, URL or a missing table) become :class:`SinkUnavailable` (the edge keeps the batch
and retries later); other 4xx become :class:`SinkRejected` (the data itself is refused; the edge
dead-letters the batch, where it stays visible and can be requeued). A sink whose data central
generates itself (ClickHouse rollups) passes ``rejects=False``: every failure is retried.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import httpx

from ..errors import SinkRejected, SinkUnavailable


def new_client(timeout_s: float) -> httpx.AsyncClient:
    # keep-alive connections to the backend; connection setup counted in the same timeout
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s),
                             limits=httpx.Limits(max_connections=32,
                                                 max_keepalive_connections=16))


def origin(url: str) -> str:
    """``scheme://host:port`` of ``url``."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def request(client: httpx.AsyncClient, sink: str, method: str, url: str, *,
                  retry_after_s: int, ok: tuple[int, ...] = (200, 204),
                  rejects: bool = True, **kwargs: object) -> httpx.Response:
    """Send one request; raise the right sink error unless the status is in ``ok``."""
    try:
        resp = await client.request(method, url, **kwargs)  # type: ignore[arg-type]
    except httpx.TimeoutException as exc:
        raise SinkUnavailable(sink, f"timed out ({type(exc).__name__}) on {url}",
                              retry_after_s) from exc
    except httpx.TransportError as exc:
        raise SinkUnavailable(sink, f"cannot reach {url}: {exc or type(exc).__name__}",
                              retry_after_s) from exc
    if resp.status_code in ok:
        return resp
    text = resp.text.strip().replace("\n", " ")[:500]
    if not rejects or resp.status_code >= 500 or resp.status_code in (401, 403, 404, 408, 429):
        after = resp.headers.get("Retry-After", "")
        wait = int(after) if after.isdigit() else retry_after_s
        raise SinkUnavailable(sink, f"HTTP {resp.status_code} from {url}: {text}", wait)
    raise SinkRejected(sink, f"HTTP {resp.status_code} from {url}: {text}")


async def is_up(client: httpx.AsyncClient, url: str) -> bool:
    try:
        return (await client.get(url)).status_code == 200
    except httpx.HTTPError:
        return False
