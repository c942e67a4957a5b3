"""Prometheus metrics of a node: ``mybus metrics --listen HOST:PORT`` (a node without a
gateway) and ``mybus-gateway --metrics HOST:PORT``.

Each scrape takes one `snapshot` of the runtime directory (ring headers, the processes'
published counters, psutil) and exposes it through ``prometheus_client``'s text format:
per actor the messages received and sent, its process's mailbox backlog and full
events, its dead letters and queue; per ring the messages and bytes written and read,
backlog and full events; per link its state, round trip, resends, duplicates dropped,
refused frames and messages, reconnects; per supervisor its restarts. Nothing is asked
of an actor: a scrape costs them nothing but the reads of files they share.

Every metric is named ``mybus_...`` and labelled with the node.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from mybus_actors import counters
from mybus_actors.registry import Registry
from mybus_actors.snapshot import labels, ring_label, take

__all__ = ["LINK_STATES", "NodeCollector", "serve"]

_log = logging.getLogger(__name__)

LINK_STATES = ("up", "connecting", "down", "unreachable")


class NodeCollector(Collector):
    """A ``prometheus_client`` collector over one node's runtime directory.

    Every `collect` reads the node afresh (`serve` shares one rendering between
    requests close together).
    """

    def __init__(self, registry: Registry, node: str) -> None:
        self._registry = registry
        self._node = node

    def describe(self) -> list[Metric]:
        return []  # collected fresh on every scrape: nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        snap = take(self._registry, self._node)
        node = self._node
        names = labels(snap)

        def counter(name: str, doc: str, keys: list[str]) -> CounterMetricFamily:
            return CounterMetricFamily(f"mybus_{name}", doc, labels=["node", *keys])

        def gauge(name: str, doc: str, keys: list[str]) -> GaugeMetricFamily:
            return GaugeMetricFamily(f"mybus_{name}", doc, labels=["node", *keys])

        a_keys = ["actor", "pid"]
        received = counter("actor_messages_received", "Messages handed to the actor.", a_keys)
        sent = counter("actor_messages_sent", "Messages the actor sent.", a_keys)
        dead = counter(
            "actor_dead_letters", "The actor's messages that came back undelivered.", a_keys
        )
        queued = gauge("actor_queued_messages", "Taken from the rings, not yet received.", a_keys)
        backlog_b = gauge(
            "actor_backlog_bytes", "Unread bytes in the rings into the actor's process.", a_keys
        )
        backlog_m = gauge(
            "actor_backlog_messages",
            "Unread messages in the rings into the actor's process.",
            a_keys,
        )
        full = counter(
            "actor_full_events",
            "Times a sender found a ring into the actor's process full.",
            a_keys,
        )
        restarts = counter(
            "supervisor_restarts", "Restarts of its children a supervisor made.", ["supervisor"]
        )
        instance = gauge(
            "actor_instance", "1 for an actor's first instance, one more per restart.", a_keys
        )
        for a in snap.actors:
            p = snap.processes[a.mailbox]
            values = [node, a.name, str(a.pid)]
            received.add_metric(values, a.received)
            sent.add_metric(values, a.sent)
            dead.add_metric(values, a.dead_letters)
            queued.add_metric(values, a.queued)
            backlog_b.add_metric(values, p.backlog_bytes)
            backlog_m.add_metric(values, p.backlog_messages)
            full.add_metric(values, p.full_events)
            instance.add_metric(values, a.instance)
            if a.restarts:
                restarts.add_metric([node, a.name], a.restarts)
        yield from (received, sent, dead, queued, backlog_b, backlog_m, full, instance, restarts)

        p_keys = ["pid", "role"]
        cpu = counter("process_cpu_seconds", "CPU time (user and system) of a process.", p_keys)
        rss = gauge("process_resident_memory_bytes", "Resident memory of a process.", p_keys)
        p_dead = counter(
            "process_dead_letters", "A process's dead letters, attributed or not.", p_keys
        )
        for p in snap.processes.values():
            role = "gateway" if p is snap.gateway else "actors"
            values = [node, str(p.pid), role]
            if p.cpu_seconds is not None:
                cpu.add_metric(values, p.cpu_seconds)
            if p.rss_bytes is not None:
                rss.add_metric(values, p.rss_bytes)
            if p.counters is not None:
                p_dead.add_metric(values, p.counters.dead_letters)
        yield from (cpu, rss, p_dead)

        r_keys = ["ring", "writer", "reader"]
        r_msgs_w = counter("ring_messages_written", "Messages written into a ring.", r_keys)
        r_msgs_r = counter("ring_messages_read", "Messages read from a ring.", r_keys)
        r_bytes_w = counter("ring_bytes_written", "Bytes written into a ring.", r_keys)
        r_bytes_r = counter("ring_bytes_read", "Bytes read from a ring.", r_keys)
        r_backlog = gauge("ring_backlog_bytes", "Unread bytes in a ring.", r_keys)
        r_backlog_m = gauge("ring_backlog_messages", "Unread messages in a ring.", r_keys)
        r_full = counter("ring_full_events", "Times the writer found the ring full.", r_keys)
        r_cap = gauge("ring_capacity_bytes", "A ring's capacity.", r_keys)
        for r in snap.rings:
            label = ring_label(r, names)
            writer, _, reader = label.partition(" -> ")
            values = [node, r.file, writer, reader]
            s = r.stats
            r_msgs_w.add_metric(values, s.messages_written)
            r_msgs_r.add_metric(values, s.messages_read)
            r_bytes_w.add_metric(values, s.bytes_written)
            r_bytes_r.add_metric(values, s.bytes_read)
            r_backlog.add_metric(values, s.used)
            r_backlog_m.add_metric(values, r.unread_messages)
            r_full.add_metric(values, s.full_events)
            r_cap.add_metric(values, s.capacity)
        yield from (r_msgs_w, r_msgs_r, r_bytes_w, r_bytes_r, r_backlog, r_backlog_m, r_full, r_cap)

        if snap.gateway is None:
            return
        l_keys = ["peer"]
        up = gauge("link_up", "1 while the link to the peer node is up.", l_keys)
        state = gauge(
            "link_state", "1 for the link's current state (up, connecting, down, unreachable).",
            ["peer", "state"],
        )  # fmt: skip
        rtt = gauge("link_rtt_seconds", "Round trip of the last PING on the link.", l_keys)
        resends = counter(
            "link_resends", "Times unacknowledged records went again on the link.", l_keys
        )
        resent = counter("link_resent_bytes", "Bytes sent again on the link.", l_keys)
        dups = counter(
            "link_duplicates", "Records the peer sent again that were taken: dropped.", l_keys
        )
        refused_frames = counter(
            "link_frames_refused", "Connections closed on a bad frame (MAC, replay).", l_keys
        )
        refused = counter(
            "link_refused_messages", "Messages refused (foreign sender, reserved target).", l_keys
        )
        reconnects = counter("link_reconnects", "Reconnections of the link.", l_keys)
        delivered = counter(
            "link_delivered_messages", "Messages from the peer written into local rings.", l_keys
        )
        g_dead = counter(
            "gateway_dead_letters", "Messages the gateway returned as dead letters.", []
        )
        for link in snap.links:
            values = [node, link.node]
            up.add_metric(values, 1.0 if link.state == "up" else 0.0)
            for st in LINK_STATES:
                state.add_metric([node, link.node, st], 1.0 if link.state == st else 0.0)
            if link.rtt is not None:
                rtt.add_metric(values, link.rtt)
            resends.add_metric(values, link.resends)
            resent.add_metric(values, link.resent_bytes)
            dups.add_metric(values, link.duplicates)
            refused_frames.add_metric(values, link.frames_refused)
            refused.add_metric(values, link.refused)
            reconnects.add_metric(values, link.reconnects)
            delivered.add_metric(values, link.delivered)
        gc = snap.gateway.counters
        if gc is not None:
            g_dead.add_metric([node], gc.dead_letters)
        yield from (up, state, rtt, resends, resent, dups, refused_frames, refused, reconnects)
        yield from (delivered, g_dead)


class _Exposition:
    """The text exposition, rendered at most once per ``min_interval``: requests closer
    together than that get the same bytes (rendering is most of a request's cost)."""

    def __init__(self, collectors: CollectorRegistry, min_interval: float) -> None:
        self._collectors = collectors
        self._min_interval = min_interval
        self._lock = threading.Lock()
        self._body = b""
        self._at = -float("inf")

    def body(self) -> bytes:
        with self._lock:
            now = time.monotonic()
            if now - self._at >= self._min_interval:
                self._body = generate_latest(self._collectors)
                self._at = now
            return self._body


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a scraper reuses its connection
    wbufsize = 1 << 16  # headers and body leave in one write (flushed after each request)
    disable_nagle_algorithm = True  # a larger body is a second write: no 40 ms stall
    exposition: _Exposition  # set on the subclass `serve` makes

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] not in ("/metrics", "/"):
            self.send_error(404, "only /metrics is served here")
            return
        try:
            body = self.exposition.body()
        except Exception:  # a reading that failed: logged, the server stays up
            _log.exception("collecting metrics failed")
            self.send_error(500, "collecting metrics failed (see the log)")
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        if _log.isEnabledFor(logging.DEBUG):  # one line per request: format only if kept
            _log.debug("%s %s", self.address_string(), format % args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True


def serve(
    registry: Registry,
    node: str,
    host: str,
    port: int,
    *,
    min_interval: float = counters.PUBLISH_EVERY,
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """Serve ``http://host:port/metrics`` from a daemon thread; returns the server (its
    ``server_port`` is the port bound, when ``port`` is 0) and the thread. Stop it with
    ``server.shutdown()`` and ``server.server_close()``.

    Requests less than ``min_interval`` seconds apart share one reading of the node, so
    a scraper polling a hundred times a second costs two readings a second (a reading of
    a few processes takes milliseconds, most of it ``prometheus_client``'s formatting).
    The default is the age the processes' own counters may have anyway: they publish
    them every `counters.PUBLISH_EVERY` seconds.

    Raises:
        OSError: the address cannot be bound.
    """
    collectors = CollectorRegistry(auto_describe=False)
    collectors.register(NodeCollector(registry, node))
    handler = type("Handler", (_Handler,), {"exposition": _Exposition(collectors, min_interval)})
    server = _Server((host, port), handler)
    thread = threading.Thread(target=server.serve_forever, name="mybus-metrics", daemon=True)
    thread.start()
    _log.info("serving metrics of node %s on http://%s:%d/metrics", node, host, server.server_port)
    return server, thread
