"""The gateway's configuration: the command line, the peers file, the secret, TLS.

`build_config` turns ``mybus-gateway``'s arguments into a `GatewayConfig`, or exits
with a message saying what is wrong and how to mend it (a missing or weak secret, a bad
address). Knows flags, files and `ssl` contexts; not links, rings or actors.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import attrs

from mybus_actors import wire
from mybus_actors.deliveries import DEFAULT_MAX_BUFFER
from mybus_actors.errors import InvalidAddress
from mybus_actors.logs import FORMATS
from mybus_actors.logs import configure as configure_logging
from mybus_actors.registry import default_node, resolve_runtime_dir, validate_name

__all__ = ["DEFAULT_PORT", "GatewayConfig", "build_config", "certificate_names", "parser"]

_log = logging.getLogger(__name__)

DEFAULT_PORT: Final = 4096


@attrs.frozen
class GatewayConfig:
    """Everything a gateway needs; `main` builds it from the command line."""

    node: str
    runtime_dir: Path
    secret: bytes
    listen: tuple[str, int] = ("127.0.0.1", DEFAULT_PORT)
    peers: dict[str, tuple[str, int]] = attrs.field(factory=dict)
    server_ssl: ssl.SSLContext | None = None
    client_ssl: ssl.SSLContext | None = None
    route_idle: float = 60.0
    max_links: int = 64
    heartbeat: float = 1.0
    unreachable_grace: float = 10.0
    channel_idle: float = 30.0
    tls_verify_name: bool = True
    max_buffer: int = DEFAULT_MAX_BUFFER
    metrics: tuple[str, int] | None = None  # where to serve Prometheus metrics


def certificate_names(cert: dict[str, Any]) -> set[str]:
    """The DNS names and IP addresses a certificate's subject alternative names hold."""
    return {
        str(value)
        for kind, value in cert.get("subjectAltName", ())
        if kind in ("DNS", "IP Address")
    }


def _host_port(text: str, what: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = text, str(DEFAULT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{what} must be HOST:PORT, got {text!r}")
    return host, int(port)


def _peer(text: str) -> tuple[str, tuple[str, int]]:
    name, sep, where = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--peer must be NODE=HOST:PORT, got {text!r}")
    try:
        validate_name(name)
    except InvalidAddress as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc
    return name, _host_port(where, f"--peer {name}")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mybus-gateway",
        description="Relay mybus_actors messages between this node and other nodes over TCP.",
        epilog="The shared secret comes from --secret-file or the MYBUS_SECRET environment "
        "variable, and must be the same on every gateway. SIGTERM or Ctrl-C stops "
        "accepting, flushes what can be flushed, unregisters and exits 0.",
    )
    p.add_argument("--node", help="this node's name (default: MYBUS_NODE, else the host name)")
    p.add_argument(
        "--listen",
        type=lambda t: _host_port(t, "--listen"),
        default=("127.0.0.1", DEFAULT_PORT),
        metavar="HOST:PORT",
        help=f"where peers connect (default 127.0.0.1:{DEFAULT_PORT})",
    )
    p.add_argument(
        "--peer",
        type=_peer,
        action="append",
        default=[],
        metavar="NODE=HOST:PORT",
        help="a peer gateway's address (repeatable); a node named nowhere is looked up "
        f"as a DNS name at port {DEFAULT_PORT}",
    )
    p.add_argument("--peers-file", type=Path, help='a TOML file: [peers] NODE = "HOST:PORT"')
    p.add_argument(
        "--runtime-dir", help="default: MYBUS_RUNTIME_DIR, else /dev/shm/mybus-<uid>/<node>"
    )
    p.add_argument("--secret-file", type=Path, help="a file holding the shared secret")
    p.add_argument("--tls-cert", type=Path, help="this gateway's certificate (PEM) for TLS")
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    p.add_argument(
        "--tls-ca", type=Path,
        help="CA bundle to verify peers' certificates, both ways (default: the system's)",
    )  # fmt: skip
    p.add_argument(
        "--tls-no-verify-name", action="store_true",
        help="accept a peer whose certificate does not name its node (not recommended)",
    )  # fmt: skip
    p.add_argument(
        "--route-idle", type=float, default=60.0, metavar="SECONDS",
        help="close a link idle this long; it reopens on the next message (default 60)",
    )  # fmt: skip
    p.add_argument(
        "--max-links", type=int, default=64,
        help="open links at most; beyond it the least active closes first (default 64)",
    )  # fmt: skip
    p.add_argument(
        "--heartbeat", type=float, default=1.0, metavar="SECONDS",
        help="PING an idle link this often; 3 silent periods close it (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--unreachable-grace", type=float, default=10.0, metavar="SECONDS",
        help="after this long unreachable, a node's queued messages go back to their "
        "senders and its watchers get Terminated(reason='node unreachable') (default 10)",
    )  # fmt: skip
    p.add_argument(
        "--channel-idle", type=float, default=30.0, metavar="SECONDS",
        help="close the gateway's rings to local actors idle this long (default 30)",
    )  # fmt: skip
    p.add_argument(
        "--max-buffer", type=int, default=DEFAULT_MAX_BUFFER, metavar="BYTES",
        help="bytes from other nodes held while their targets are full; beyond it the"
        f" senders are asked to send again later (default {DEFAULT_MAX_BUFFER >> 20} MiB)",
    )  # fmt: skip
    p.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"],
        help="default info: a line per link up/down and per rejected peer",
    )  # fmt: skip
    p.add_argument(
        "--log-format", default="text", choices=list(FORMATS),
        help="text (default) or json: one JSON object per line, for log shippers",
    )  # fmt: skip
    p.add_argument(
        "--metrics", type=lambda t: _host_port(t, "--metrics"), metavar="HOST:PORT",
        help="serve Prometheus metrics of this node (its actors, rings and links) on"
        " http://HOST:PORT/metrics",
    )  # fmt: skip
    return p


_MAKE_SECRET: Final = 'python -c "import secrets; print(secrets.token_hex(32))"'


def _secret(args: argparse.Namespace, cli: argparse.ArgumentParser) -> bytes:
    """The shared secret, or exit saying what is wrong with it and how to make one."""
    if args.secret_file is not None:
        path: Path = args.secret_file
        try:
            raw, mode = path.read_bytes(), path.stat().st_mode
        except OSError as exc:
            cli.exit(2, f"mybus-gateway: cannot read --secret-file {path}: {exc}\n")
        if mode & 0o077:
            _log.warning(
                "secret file %s has mode %04o: group or others can read it (chmod 600 %s)",
                path, mode & 0o777, path,
            )  # fmt: skip
        where = f"--secret-file {path}"
    else:
        raw = os.environ.get("MYBUS_SECRET", "").encode()
        where = "MYBUS_SECRET"
    how = (
        "Set MYBUS_SECRET or pass --secret-file FILE, the same secret on every gateway;"
        f" make one with: {_MAKE_SECRET}"
    )
    if not raw:
        cli.exit(2, f"mybus-gateway: no shared secret. {how}\n")
    secret = raw.strip()
    if len(secret) < wire.MIN_SECRET:
        what = "holds only whitespace" if not secret else f"is {len(secret)} bytes long"
        cli.exit(
            2,
            f"mybus-gateway: the secret in {where} {what}; it needs at least"
            f" {wire.MIN_SECRET} bytes. {how}\n",
        )
    return secret


def _tls(args: argparse.Namespace) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    if args.tls_cert is None and args.tls_key is None and args.tls_ca is None:
        return None, None
    if args.tls_cert is None or args.tls_key is None:
        raise SystemExit("mybus-gateway: TLS needs both --tls-cert and --tls-key")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(args.tls_cert, args.tls_key)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_cert_chain(args.tls_cert, args.tls_key)
    # Both sides verify the other's chain; the name is checked by the gateway once the
    # handshake has proven which node the peer is (its certificate must name that node),
    # since a peer is dialled by an address that may not be its name.
    client.check_hostname = False
    server.verify_mode = ssl.CERT_REQUIRED
    if args.tls_ca is not None:
        server.load_verify_locations(args.tls_ca)
        client.load_verify_locations(args.tls_ca)
    else:
        server.load_default_certs(ssl.Purpose.CLIENT_AUTH)
        client.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return server, client


def build_config(argv: Sequence[str] | None = None) -> GatewayConfig:
    """Parse the command line into a config; exit with a message on bad input."""
    p = parser()
    args = p.parse_args(argv)
    configure_logging("mybus-gateway", args.log_level, args.log_format)
    secret = _secret(args, p)
    if args.tls_no_verify_name:
        _log.warning(
            "--tls-no-verify-name: a peer's certificate need not name its node; any holder"
            " of a certificate our CA signed (and of the secret) may claim any node"
        )
    try:
        node = validate_name(args.node) if args.node else default_node()
    except InvalidAddress as exc:
        p.exit(2, f"mybus-gateway: {exc}\n")
    peers: dict[str, tuple[str, int]] = {}
    if args.peers_file is not None:
        table = tomllib.loads(args.peers_file.read_text()).get("peers", {})
        for name, where in table.items():
            peers[_peer(f"{name}={where}")[0]] = _host_port(str(where), f"peer {name}")
    peers.update(dict(args.peer))
    server_ssl, client_ssl = _tls(args)
    return GatewayConfig(
        node=node,
        runtime_dir=resolve_runtime_dir(args.runtime_dir, node),
        secret=secret,
        listen=args.listen,
        peers=peers,
        server_ssl=server_ssl,
        client_ssl=client_ssl,
        route_idle=args.route_idle,
        max_links=args.max_links,
        heartbeat=args.heartbeat,
        unreachable_grace=args.unreachable_grace,
        channel_idle=args.channel_idle,
        tls_verify_name=not args.tls_no_verify_name,
        max_buffer=args.max_buffer,
        metrics=args.metrics,
    )
