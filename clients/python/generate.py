#!/usr/bin/env python3
"""Generates the gRPC stubs in src/dnet_client/_proto from the repository's
proto/ files (grpcio-tools), with the imports between them made relative to
the package; `--check` says whether the committed stubs match, without
writing (a test runs it).

    python clients/python/generate.py [--check]
"""
import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

HERE = Path(__file__).resolve().parent
PROTO = HERE.parent.parent / "proto"
OUT = HERE / "src" / "dnet_client" / "_proto"
# protoc writes `import ComputationMessage_pb2 as ...`: inside a package that
# must be `from . import ComputationMessage_pb2 as ...`.
ABSOLUTE_IMPORT = re.compile(r"^import (\w+_pb2) as (\w+)$", re.MULTILINE)


def generate(into: Path) -> dict[str, str]:
    protos = sorted(str(p.name) for p in PROTO.glob("*.proto"))
    code = protoc.main(
        ["protoc", f"-I{PROTO}", f"--python_out={into}", f"--pyi_out={into}", f"--grpc_python_out={into}", *protos]
    )
    if code != 0:
        sys.exit(f"protoc failed ({code})")
    files = {}
    for path in sorted(into.iterdir()):
        if path.suffix in (".py", ".pyi"):
            files[path.name] = ABSOLUTE_IMPORT.sub(r"from . import \1 as \2", path.read_text())
    return files


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = generate(Path(tmp))
    if "--check" in sys.argv[1:]:
        stale = [name for name, text in files.items() if not (OUT / name).is_file() or (OUT / name).read_text() != text]
        if stale:
            sys.exit(f"stubs differ from proto/: {stale}; run python clients/python/generate.py")
        print(f"the {len(files)} stub files match proto/")
        return
    for name, text in files.items():
        (OUT / name).write_text(text)
    print(f"wrote {len(files)} files to {OUT}")


if __name__ == "__main__":
    main()
