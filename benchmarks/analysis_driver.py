"""The measuring side of benchmarks/bench_analysis.py, run inside the XRootD site's network namespace.

``python benchmarks/analysis_driver.py ARGS.json`` starts a Dask ``LocalCluster`` (``workers`` processes,
one thread each) whose workers read with the token in ``$BEARER_TOKEN_FILE``, then runs the example
analysis (``casa_hub.analysis.run``) in rounds, the cases alternating within each round:

- ``local``: the files on the local disk (the baseline);
- ``cold``: the same files through the XCache, a copy the cache has never seen (one per round);
- ``warm``: through the XCache again, a copy it holds;
- ``wan``: straight from the origin through a TCP relay that delays every chunk by ``delay_ms / 2`` in each
  direction (``delay_ms`` per round trip), the wide-area link the cache is for.

It prints one ``REPORT`` line: events per second of each run, per case.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any


class DelayRelay:
    """127.0.0.1:<port> -> ``target``, each chunk forwarded ``delay`` seconds after it arrived (order kept)."""

    def __init__(self, target_port: int, delay: float) -> None:
        self.target_port, self.delay = target_port, delay
        self.loop = asyncio.new_event_loop()
        started = threading.Event()
        self.port = 0

        async def serve() -> None:
            server = await asyncio.start_server(self._client, "127.0.0.1", 0)
            self.port = server.sockets[0].getsockname()[1]
            started.set()
            async with server:
                await server.serve_forever()

        threading.Thread(target=lambda: self.loop.run_until_complete(serve()), daemon=True).start()
        started.wait(10)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue = asyncio.Queue()

        async def send() -> None:
            while (item := await queue.get()) is not None:
                due, data = item
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                writer.write(data)
                await writer.drain()
            writer.close()

        sender = asyncio.ensure_future(send())
        try:
            while data := await reader.read(65536):
                queue.put_nowait((time.monotonic() + self.delay, data))
        except OSError:
            pass
        queue.put_nowait(None)
        await sender

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True)


def main() -> None:
    args = json.loads(Path(sys.argv[1]).read_text())
    from distributed import Client, LocalCluster

    from casa_hub.analysis import run
    from casa_hub.analysis.ttbar import Cuts
    from casa_hub.common.files import write_private

    token_file = Path(os.environ["BEARER_TOKEN_FILE"])
    tokens = {"cache": Path(args["cache_token"]).read_text(), "origin": Path(args["origin_token"]).read_text()}
    relay = DelayRelay(args["origin_port"], args["delay_ms"] / 2000)
    cuts = Cuts(jet_pt=15, lepton_pt=10, btag=0.2, electron_id=0, muon_tight_id=False, muon_iso=1e9)

    def fileset(urls: list[str]) -> dict[str, Any]:
        return {"ttbar": {"files": urls, "treename": "Events"}}

    def analyse(urls: list[str], token: str | None) -> float:
        if token:
            write_private(token_file, tokens[token])  # read by the workers' XRootD client at each login
        result = run(fileset(urls), client=client, cuts=cuts, preflight=False)
        assert result["events"] == args["events"], (result["events"], args["events"])
        return result["events_per_second"]

    wan = [f"root://localhost:{relay.port}/{path}" for path in args["wan_paths"]]
    report: dict[str, list[float]] = {"local": [], "cold": [], "warm": [], "wan": []}
    with LocalCluster(n_workers=args["workers"], threads_per_worker=1, processes=True, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        analyse(args["local"], None)  # warm-up: imports and the OS's page cache
        analyse(args["warm"], "cache")  # the cache now holds the warm copy
        analyse(wan, "origin")  # ... and the origin's disk is in the page cache
        for k in range(args["rounds"]):
            report["local"].append(analyse(args["local"], None))
            report["cold"].append(analyse(args["cold"][k], "cache"))
            report["warm"].append(analyse(args["warm"], "cache"))
            report["wan"].append(analyse(wan, "origin"))
    print("REPORT " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
