"""A TCP relay on loopback that gives a server the bandwidth of a real link, for benchmarks.

    python bench/link.py --listen PORT --to HOST:PORT --rate 1Gbit

Everything the server sends back, over all connections together, is held to ``--rate`` (a
token bucket with a 4 MiB burst): what a mirror sees of a remote Hub is its link, not the
loopback's few GB/s. Requests go through unshaped. ``bench_proxy.py`` puts the same relay in
front of the upstream for the direct download and for the proxy alike, so both pay its cost.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time

CHUNK = 64 * 1024
BURST = 4 << 20  # 32 ms at 1 Gbit: a late wake-up under load does not lose link time


def parse_rate(text: str) -> float:
    """Bytes per second from '1Gbit', '500Mbit', '200MB' (decimal, as links are sold)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kMG]?)(bit|B)", text.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a rate: {text!r} (e.g. 1Gbit, 500Mbit, 200MB)")
    value = float(m.group(1)) * {"": 1, "k": 1e3, "M": 1e6, "G": 1e9}[m.group(2)]
    return value / 8 if m.group(3) == "bit" else value


class Bucket:
    def __init__(self, rate: float):
        self.rate, self.tokens, self.stamp = rate, float(BURST), time.monotonic()
        self.lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self.lock:  # one sender at a time: the link is shared
            now = time.monotonic()
            self.tokens = min(BURST, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            if self.tokens < 0:
                await asyncio.sleep(-self.tokens / self.rate)


async def pipe(reader, writer, bucket: Bucket | None) -> None:
    try:
        while data := await reader.read(CHUNK):
            if bucket is not None:
                await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(args) -> None:
    host, port = args.to.rsplit(":", 1)
    bucket = Bucket(args.rate)

    async def relay(creader, cwriter):
        try:
            ureader, uwriter = await asyncio.open_connection(host, int(port))
        except OSError:
            cwriter.close()
            return
        await asyncio.gather(pipe(creader, uwriter, None), pipe(ureader, cwriter, bucket))

    server = await asyncio.start_server(relay, "127.0.0.1", args.listen)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--listen", type=int, required=True)
    p.add_argument("--to", required=True, help="HOST:PORT of the server")
    p.add_argument("--rate", type=parse_rate, required=True)
    asyncio.run(main(p.parse_args()))
