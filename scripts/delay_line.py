"""A TCP delay line for the link testbed (scripts/bench_link.sh): accepts on
LISTEN and relays every connection to UPSTREAM, each byte delivered DELAY_MS
after it arrived, in both directions, without limiting throughput (bytes keep
flowing while earlier ones wait: a propagation delay, not a stall). The rate
of the link is tc's job, on the veth it crosses. Used where the kernel has no
sch_netem, so that the testbed runs on any kernel with tc tbf.
usage: delay_line.py LISTEN_HOST:PORT UPSTREAM_HOST:PORT DELAY_MS"""
import asyncio
import socket
import sys


def address(text):
    host, _, port = text.rpartition(":")
    return host, int(port)


async def relay(reader, writer, delay):
    """Copies reader to writer, each chunk written `delay` s after it was read."""
    loop = asyncio.get_running_loop()
    line = asyncio.Queue()

    async def take():
        while data := await reader.read(1 << 16):
            line.put_nowait((loop.time() + delay, data))
        line.put_nowait((loop.time() + delay, b""))

    taking = asyncio.create_task(take())
    try:
        while True:
            due, data = await line.get()
            await asyncio.sleep(max(0.0, due - loop.time()))
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        taking.cancel()
        writer.close()


def no_delay(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


async def main():
    (listen_host, listen_port), upstream, delay = address(sys.argv[1]), address(sys.argv[2]), float(sys.argv[3]) / 1e3

    async def connection(client_reader, client_writer):
        try:
            server_reader, server_writer = await asyncio.open_connection(*upstream)
        except OSError:
            client_writer.close()
            return
        no_delay(client_writer)
        no_delay(server_writer)
        await asyncio.gather(relay(client_reader, server_writer, delay), relay(server_reader, client_writer, delay))

    server = await asyncio.start_server(connection, listen_host, listen_port)
    print(f"delay line {sys.argv[1]} -> {sys.argv[2]}, {delay * 1e3:.1f} ms each way", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
