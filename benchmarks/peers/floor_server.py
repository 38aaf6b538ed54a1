"""The floor: a do-nothing grpc.aio KServe v2 server. ``ModelInfer`` parses the request (protobuf, as any
server must) and answers a prepared response of the model's output shape, without looking at the tensors.
No Python gRPC server can answer the same client faster, so it bounds what serving can reach here.

    .venv/bin/python benchmarks/peers/floor_server.py --port 8001 --output y --output-shape 1,10
"""

import argparse
import asyncio

import grpc

from modelport.kserve.v2 import grpc_service_pb2 as pb
from modelport.kserve.v2 import grpc_service_pb2_grpc as pb_grpc


class Floor(pb_grpc.GRPCInferenceServiceServicer):
    def __init__(self, output: str, shape: list[int]):
        n = 1
        for d in shape:
            n *= d
        self.response = pb.ModelInferResponse(outputs=[pb.ModelInferResponse.InferOutputTensor(
            name=output, datatype="FP32", shape=shape)], raw_output_contents=[bytes(4 * n)])

    async def ServerLive(self, request, context):
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request, context):
        return pb.ModelReadyResponse(ready=True)

    async def ModelInfer(self, request, context):
        return self.response


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--output-shape", required=True)
    args = p.parse_args()
    limit = 2**31 - 1
    server = grpc.aio.server(options=[("grpc.max_send_message_length", limit),
                                      ("grpc.max_receive_message_length", limit)])
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(
        Floor(args.output, [int(d) for d in args.output_shape.split(",")]), server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(main())
