"""A non-Rust gRPC server for the taskscope inventory service's contract (grpcio).

Run by examples/tests/python_peer.rs: Reserve answers with the time the caller's deadline
left it (context.time_remaining(), in whole milliseconds; -1 without one), so the test sees
the budget taskscope's client layer propagated. Listens on 127.0.0.1 on a free port, prints
the port on its first line, and serves until its stdin closes.
"""

import sys
from concurrent import futures

import grpc

import inventory_pb2
import inventory_pb2_grpc


class Inventory(inventory_pb2_grpc.InventoryServicer):
    def Reserve(self, request, context):
        remaining = context.time_remaining()
        # grpcio says "no deadline" as None, or as a time decades away.
        no_deadline = remaining is None or remaining > 10 * 365 * 24 * 3600
        budget_ms = -1 if no_deadline else int(remaining * 1000)
        return inventory_pb2.ReserveReply(
            reservation_id=f"py-{request.order_id}", budget_ms=budget_ms
        )


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    inventory_pb2_grpc.add_InventoryServicer_to_server(Inventory(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(grace=None)


if __name__ == "__main__":
    main()
