"""A one-message faust-streaming worker, run as a subprocess by test_kafka_roundtrip.py.

    python faust_echo_app.py --bootstrap 127.0.0.1:9092 --topic T --app-id A \
        --datadir DIR --out FILE [--timeout 60]

It consumes `--topic` from the earliest offset as raw bytes, writes the first message it gets
(key and value base64-encoded, plus where it came from) to `--out` as JSON, and stops the
worker the way an operator would, with SIGTERM. A faust worker owns its event loop, signal
handlers and logging, which is why it runs in its own process rather than inside pytest.
Exit codes: 0 a message was written; 3 nothing arrived within `--timeout` seconds.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import faust

EXIT_TIMEOUT = 3


def faust_broker_url(bootstrap_servers: str) -> str:
    """'h1:1,h2:2' -> 'kafka://h1:1;kafka://h2:2', the list form faust accepts."""
    return ";".join(f"kafka://{s.strip()}" for s in bootstrap_servers.split(",") if s.strip())


def build_app(args: argparse.Namespace) -> tuple[faust.App, Any]:
    app = faust.App(
        args.app_id,
        broker=faust_broker_url(args.bootstrap),
        store="memory://",
        datadir=str(args.datadir),
        web_enabled=False,
        # The leader-election topic would be created on the broker, which refuses
        # auto-creation and would keep it after the test; one worker needs no leader.
        topic_disable_leader=True,
        # Never create the topic under test: a missing one is a failure to report.
        topic_allow_declare=False,
        consumer_auto_offset_reset="earliest",
    )
    topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    return app, topic


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", required=True)
    parser.add_argument("--topic", required=True)
    parser.add_argument("--app-id", required=True)
    parser.add_argument("--datadir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    app, topic = build_app(args)

    @app.agent(topic)
    async def echo(stream: Any) -> AsyncIterator[None]:
        async for event in stream.events():
            message = event.message
            record = {
                "topic": message.topic,
                "partition": message.partition,
                "offset": message.offset,
                "key_b64": base64.b64encode(message.key or b"").decode("ascii"),
                "key_is_none": message.key is None,
                "value_b64": base64.b64encode(message.value or b"").decode("ascii"),
            }
            partial = args.out.with_suffix(".partial")
            partial.write_text(json.dumps(record), encoding="utf-8")
            # Rename: the test polls for the file and must never read half of it.
            partial.replace(args.out)
            # The worker's own SIGTERM handler stops the consumer, commits, closes the loop.
            os.kill(os.getpid(), signal.SIGTERM)
            yield None

    def give_up() -> None:
        print(f"faust_echo_app: no message on {args.topic} after {args.timeout} s", file=sys.stderr)
        os._exit(EXIT_TIMEOUT)

    # A thread, not the loop: a wedged loop must not be able to keep the process alive.
    watchdog = threading.Timer(args.timeout, give_up)
    watchdog.daemon = True
    watchdog.start()

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
        return code if args.out.exists() or code != 0 else EXIT_TIMEOUT
    return 0


if __name__ == "__main__":
    sys.exit(main())
