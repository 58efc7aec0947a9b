"""GET /ui: the fleet dashboard, one static page shipped in the package.

The page holds no data and needs no key to fetch: it reads ``/cortex/status`` and posts admin
actions from the browser with the admin key the operator types (kept in sessionStorage), so the
admin API's own rules (admin_keys, or loopback-only without them) are the only gate.
"""

from __future__ import annotations

from importlib.resources import files

from aiohttp import web

# Read once at import: the page is small and immutable for the life of the process.
_PAGE = files("cortex.gateway").joinpath("ui/index.html").read_bytes()


async def dashboard(request: web.Request) -> web.Response:
    return web.Response(
        body=_PAGE,
        content_type="text/html",
        charset="utf-8",
        headers={
            "cache-control": "no-cache",
            # Everything is inline and same-origin: forbid anything else the page could load.
            "content-security-policy": (
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                "connect-src 'self'; form-action 'none'; frame-ancestors 'none'"
            ),
        },
    )
