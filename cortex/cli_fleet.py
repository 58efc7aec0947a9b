"""Fleet commands of the CLI: ``status``, ``models``, ``load``, ``unload``, ``pin``, ``unpin``.

They talk to a gateway's admin API with the standard library only, so the CLI starts fast.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import click
import msgspec

from cortex.config import GB, SamplingDefaults
from cortex.protocol.admin import ActionResult, GatewayStatus, ModelAction
from cortex.protocol.openai import ModelList

DEFAULT_GATEWAY = "http://127.0.0.1:31313"


def _request(gateway: str, key: str | None, method: str, path: str, body: bytes | None) -> bytes:
    req = urllib.request.Request(gateway.rstrip("/") + path, data=body, method=method)
    req.add_header("content-type", "application/json")
    if key:
        req.add_header("authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            data: bytes = resp.read()
            return data
    except urllib.error.HTTPError as exc:
        message = _error_message(exc.read())
        if exc.code == 401:  # the gateway's hint is for HTTP clients; say how the CLI sends it
            message = _key_hint(message, admin=path.startswith("/cortex/"))
        raise click.ClickException(f"{exc.code}: {message}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise click.ClickException(f"cannot reach the gateway at {gateway}: {exc}") from None


def _key_hint(message: str, admin: bool) -> str:
    """A 401's reason ("Missing admin key", "Invalid API key") and how to give the CLI a key."""
    reason = message.split(":", 1)[0].rstrip(".")
    env = "CORTEX_ADMIN_KEY" if admin else "CORTEX_API_KEY (or CORTEX_ADMIN_KEY)"
    kind = "an admin key" if admin else "a client or admin key"
    return f"{reason}: this gateway needs {kind}; pass --key KEY or set {env}."


def _error_message(body: bytes) -> str:
    try:
        data: Any = msgspec.json.decode(body)
        return str(data["error"]["message"])
    except (msgspec.DecodeError, KeyError, TypeError):
        return body.decode(errors="replace")[:200]


def _gb(n: int) -> str:
    """Bytes in GB (1e9), the unit of every ``*_gb`` config key, the log and /ui."""
    return f"{n / GB:.1f} GB"


def _bar(used: int, total: int, width: int = 20) -> str:
    filled = round(width * used / total) if total else 0
    return "[" + "#" * filled + "." * (width - filled) + "]"


def render_status(status: GatewayStatus) -> str:
    """The fleet as a table a person reads at a glance."""
    lines = [
        f"cortex {status.version}   "
        f"{status.rates.requests_per_s:.1f} req/s   {status.rates.tokens_per_s:.1f} tok/s "
        f"(last {status.rates.window_s:.0f}s)   evictions {status.evictions}",
        "",
        "NODE              STATE    IN-FLIGHT  DEVICE      MEMORY",
    ]
    for n in status.neurons:
        first = f"{n.name:<17} {n.state:<8} {n.in_flight:>9}"
        if not n.devices:
            lines.append(f"{first}  {'-':<11} {n.error or ''}")
        for i, d in enumerate(n.devices):
            used = d.total_bytes - d.free_bytes
            mem = f"{_bar(used, d.total_bytes)} {used / GB:.1f}/{_gb(d.total_bytes)}"
            lines.append(f"{first if i == 0 else ' ' * len(first)}  {d.id:<11} {mem}")
    for u in status.upstreams:
        state = "up" if u.up else "down"
        lines.append(f"{u.name:<17} {state:<8} {'':>9}  upstream    {len(u.models)} models")
    lines += ["", "MODEL                     STATE      PIN  QUEUE  IN-FLIGHT  WHERE"]
    for m in status.models:
        where = ", ".join(
            f"{p.node}/{p.device} {p.state}"
            + (f" {p.progress:.0%}" if p.progress is not None and p.state == "loading" else "")
            + (f" ttl {p.ttl_left_s:.0f}s" if p.ttl_left_s is not None else "")
            for p in m.placements
        )
        pin = "yes" if m.pinned else ""
        lines.append(
            f"{m.id:<25} {m.state:<10} {pin:<4} {m.queued:>5}  {m.in_flight:>9}  {where or '-'}"
        )
        if m.store is not None:
            lines.append(f"{'':<25} found in the {m.store} store of {', '.join(m.nodes)}")
        if m.sampling is not None:
            lines.append(f"{'':<25} defaults: {_sampling(m.sampling)}")
    return "\n".join(lines)


def _sampling(defaults: SamplingDefaults) -> str:
    """``temperature 0.2, top_p 0.9``: the sampling defaults that are set."""
    values = msgspec.structs.asdict(defaults)
    return ", ".join(f"{name} {value:g}" for name, value in values.items() if value is not None)


_gateway_option = click.option(
    "--gateway",
    envvar="CORTEX_GATEWAY",
    default=DEFAULT_GATEWAY,
    show_default=True,
    help="Gateway base URL (env CORTEX_GATEWAY).",
)
_key_option = click.option(
    "--key", envvar="CORTEX_ADMIN_KEY", default=None, help="Admin key (env CORTEX_ADMIN_KEY)."
)


@click.command()
@_gateway_option
@_key_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
@click.option("--watch", is_flag=True, help="Refresh every --interval seconds until Ctrl-C.")
@click.option("--interval", type=float, default=2.0, show_default=True)
def status(gateway: str, key: str | None, as_json: bool, watch: bool, interval: float) -> None:
    """Show the fleet: nodes, devices, resident models, queues.

    With --watch a failed poll does not end the command: it shows why (the gateway is
    restarting, say) and keeps polling until Ctrl-C.
    """
    while True:
        try:
            raw = _request(gateway, key, "GET", "/cortex/status", None)
        except click.ClickException as exc:
            if not watch:
                raise
            text = f"unreachable: {exc.message}   (retrying every {interval:g}s)"
        else:
            if as_json:
                text = raw.decode()
            else:
                text = render_status(msgspec.json.decode(raw, type=GatewayStatus))
        if watch and not as_json:
            click.clear()
        click.echo(text)
        if not watch:
            return
        time.sleep(interval)


@click.command()
@_gateway_option
@click.option(
    "--key",
    envvar=["CORTEX_API_KEY", "CORTEX_ADMIN_KEY"],
    default=None,
    help="A client or admin key (env CORTEX_API_KEY, else CORTEX_ADMIN_KEY).",
)
def models(gateway: str, key: str | None) -> None:
    """List the models the gateway offers (a client route: a client or an admin key)."""
    listing = msgspec.json.decode(_request(gateway, key, "GET", "/v1/models", None), type=ModelList)
    for card in listing.data:
        extra = card.cortex
        state = getattr(extra, "state", "") if extra is not None else ""
        click.echo(f"{card.id:<40} {state}")


def _action(name: str) -> click.Command:
    @click.command(name=name, help=f"{name.capitalize()} MODEL through the gateway.")
    @click.argument("model")
    @click.option("--node", default=None, help="Target node (default: the gateway decides).")
    @_gateway_option
    @_key_option
    def command(model: str, node: str | None, gateway: str, key: str | None) -> None:
        body = msgspec.json.encode(ModelAction(node=node))
        raw = _request(gateway, key, "POST", f"/cortex/models/{model}/{name}", body)
        result = msgspec.json.decode(raw, type=ActionResult)
        where = f" on {result.node}" if result.node else ""
        click.echo(f"{result.model}: {result.action}{where} {result.detail}".rstrip())

    return command


def register(group: click.Group) -> None:
    for command in (status, models, *(_action(n) for n in ("load", "unload", "pin", "unpin"))):
        group.add_command(command)
