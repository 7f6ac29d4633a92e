"""The original DNet client's encoding: each image is `pickle.dumps(tensor)` in
`x`, each SUCCESS `result` is read with `pickle.loads`. gRPC by grpcio with the
messages encoded by hand (no generated stubs needed).
usage: original_client.py ADDRESS COUNT OUT_DIR [IMAGES]
Sends image I of IMAGES (raw little-endian F32 [N, 3, 32, 32]; without it,
torch.randn images), writes OUT_DIR/input-I.pkl (the exact bytes sent) and,
for a NOT_SUCCESS reply, OUT_DIR/handed-I.f32 (the handed-on tensor as torch
reads the pickle, raw F32), and prints one JSON line per request:
{"status": ..., "category": ..., "confidence": ..., "error": ...}."""
import json
import pickle
import struct
import sys

import grpc
import torch


def varint(n):
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def request(start_layer, x):
    """ComputationRequest { uint64 start_layer = 1; bytes x = 2; }"""
    return b"\x08" + varint(start_layer) + b"\x12" + varint(len(x)) + x


def read_varint(buffer, at):
    """The varint at `at`, and where the next field starts."""
    value, shift = 0, 0
    while True:
        byte = buffer[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def fields(buffer):
    """The top-level fields of a protobuf message: number -> value (varint or bytes)."""
    out, at = {}, 0
    while at < len(buffer):
        key, at = read_varint(buffer, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = read_varint(buffer, at)
        elif wire == 2:
            length, at = read_varint(buffer, at)
            value = buffer[at:at + length]
            at += length
        else:
            size = 4 if wire == 5 else 8
            value = buffer[at:at + size]
            at += size
        out.setdefault(number, value)
    return out


def raw_f32(tensor):
    """The tensor's values as raw little-endian F32, without numpy."""
    values = tensor.contiguous().flatten().tolist()
    return struct.pack(f"<{len(values)}f", *values)


address, count, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if len(sys.argv) > 4:
    raw = bytearray(open(sys.argv[4], "rb").read())
    images = torch.frombuffer(raw, dtype=torch.float32).reshape(-1, 1, 3, 32, 32)
else:
    torch.manual_seed(5)
    images = [torch.randn(1, 3, 32, 32) for _ in range(count)]
channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 64 << 20)])
compute = channel.unary_unary("/unit.DNet/Compute", request_serializer=lambda b: b, response_deserializer=lambda b: b)
for i in range(count):
    x = pickle.dumps(images[i].clone())
    open(f"{out}/input-{i}.pkl", "wb").write(x)
    reply = fields(compute(request(0, x), timeout=60))
    status = reply.get(1, 0)  # 0 ERROR, 1 SUCCESS, 2 NOT_SUCCESS
    category = pickle.loads(reply[3]).tolist() if status == 1 else None
    if status == 2:
        handed = pickle.loads(fields(reply[4])[2])
        open(f"{out}/handed-{i}.f32", "wb").write(raw_f32(handed))
    confidence = struct.unpack("<f", reply[6])[0] if 6 in reply else None
    print(json.dumps({"status": status, "category": category, "confidence": confidence,
                      "error": bytes(reply.get(2, b"")).decode()}), flush=True)
