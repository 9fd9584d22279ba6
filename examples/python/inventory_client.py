"""A non-Rust gRPC peer calling the taskscope inventory service (grpcio, grpcio-status).

Run by examples/tests/python_peer.rs, with the stubs generated from examples/proto by
grpc_tools.protoc on its path. Checks what a Python caller sees, prints a JSON summary, and
exits non-zero if a check fails:

- a call whose timeout is shorter than its work_ms ends DEADLINE_EXCEEDED;
- a shortage ends FAILED_PRECONDITION with a google.rpc.Status whose ErrorInfo has reason
  INVENTORY_SHORTAGE, domain taskscope, and the cause's kind and origin in its metadata;
- the budget the service saw (budget_ms) is positive and no more than the caller's timeout.
"""

import argparse
import json
import sys

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

import inventory_pb2
import inventory_pb2_grpc


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--addr", required=True)
    args = parser.parse_args()
    failures = []
    summary = {}
    with grpc.insecure_channel(args.addr) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        stub = inventory_pb2_grpc.InventoryStub(channel)

        # A timeout shorter than the work.
        try:
            stub.Reserve(
                inventory_pb2.ReserveRequest(order_id="py-1", sku="sku-1", quantity=1, work_ms=2000),
                timeout=0.2,
            )
            failures.append("the slow call succeeded")
        except grpc.RpcError as error:
            summary["deadline"] = error.code().name
            if error.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                failures.append(f"the slow call ended {error.code().name}")

        # A shortage, with its cause in the details.
        try:
            stub.Reserve(
                inventory_pb2.ReserveRequest(order_id="py-2", sku="out-42", quantity=5, work_ms=0),
                timeout=5,
            )
            failures.append("the shortage succeeded")
        except grpc.RpcError as error:
            summary["shortage"] = error.code().name
            if error.code() != grpc.StatusCode.FAILED_PRECONDITION:
                failures.append(f"the shortage ended {error.code().name}")
            status = rpc_status.from_call(error)
            infos = []
            for detail in status.details if status else []:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    infos.append(info)
            if not infos:
                failures.append("the shortage carried no ErrorInfo")
            else:
                info = infos[0]
                summary["error_info"] = {
                    "reason": info.reason,
                    "domain": info.domain,
                    "metadata": dict(info.metadata),
                }
                if info.reason != "INVENTORY_SHORTAGE" or info.domain != "taskscope":
                    failures.append(f"unexpected ErrorInfo {info.reason}/{info.domain}")
                if info.metadata.get("kind") != "task_failed":
                    failures.append(f"unexpected kind {info.metadata.get('kind')}")
                if not info.metadata.get("origin", "").startswith("inventory/"):
                    failures.append(f"unexpected origin {info.metadata.get('origin')}")

        # The budget the service saw.
        reply = stub.Reserve(
            inventory_pb2.ReserveRequest(order_id="py-3", sku="sku-3", quantity=1, work_ms=0),
            timeout=0.5,
        )
        summary["budget_ms"] = reply.budget_ms
        if not 0 < reply.budget_ms <= 500:
            failures.append(f"budget_ms {reply.budget_ms} is not in (0, 500]")

    summary["failures"] = failures
    print(json.dumps(summary))
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
