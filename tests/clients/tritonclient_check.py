"""Drives a server with Triton's own client, `tritonclient.grpc`, and prints what it got
as JSON. Runs in a virtual environment of its own (tritonclient pins protobuf < 7, which
recserve's build does not use), so it imports nothing of recserve.

Usage: python tritonclient_check.py HOST:PORT MODEL USER_ID K ITEM_ID [ITEM_ID ...]
       python tritonclient_check.py --fields MESSAGE [MESSAGE ...]
The second form prints each message's fields (name, number, type, repeated) as tritonclient
knows them, so a test can check that recserve's .proto has the same wire layout.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import tritonclient.grpc as triton
from tritonclient.utils import InferenceServerException


def main(target: str, model: str, user_id: int, k: int, items: list[int]) -> dict:
    client = triton.InferenceServerClient(url=target)
    metadata = client.get_model_metadata(model, as_json=True)
    inputs = []
    for name, values in (("user_id", [user_id]), ("candidate_item_ids", items), ("k", [k])):
        tensor = triton.InferInput(name, [len(values)], "INT64")
        tensor.set_data_from_numpy(np.asarray(values, dtype=np.int64))
        inputs.append(tensor)
    outputs = [triton.InferRequestedOutput(n) for n in ("item_ids", "scores", "unknown_item_ids")]
    result = client.infer(model, inputs, outputs=outputs, request_id="triton-1")
    try:
        client.infer("no-such-model", inputs)
        missing = "answered"
    except InferenceServerException as exc:
        missing = exc.status()
    return {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server": client.get_server_metadata(as_json=True),
        "metadata": metadata,
        "id": result.get_response().id,
        "item_ids": result.as_numpy("item_ids").tolist(),
        "scores": result.as_numpy("scores").tolist(),
        "unknown_item_ids": result.as_numpy("unknown_item_ids").tolist(),
        "missing_model_status": missing,
    }


def message_fields(names: list[str]) -> dict:
    from tritonclient.grpc import service_pb2

    def fields(descriptor) -> dict:
        layout = {
            f.name: [
                f.number,
                f.message_type.full_name if f.message_type else f.type,
                f.is_repeated,
            ]
            for f in descriptor.fields
        }
        for nested in descriptor.nested_types:
            layout[nested.name] = fields(nested)
        return layout

    return {n: fields(service_pb2.DESCRIPTOR.message_types_by_name[n]) for n in names}


if __name__ == "__main__":
    if sys.argv[1] == "--fields":
        print(json.dumps(message_fields(sys.argv[2:])))
    else:
        target, model, user, k, *items = sys.argv[1:]
        print(json.dumps(main(target, model, int(user), int(k), [int(i) for i in items])))
