"""Write service/saliency/http/static/wire.json: how the web page puts a method's parameters
into an `ExplainRequest` in protobuf's JSON mapping.

`ListModels` advertises each parameter by its params-dataclass name with its choices as the
command line spells them ("gausslegendre"); the JSON request needs the `MethodRequest.params`
oneof member that carries the method ("integratedGradients"), each field's JSON name and each
choice's proto enum value name ("INTEGRATION_RULE_GAUSS_LEGENDRE"). Those come from the
descriptors and `saliency.wire.tables` (the codec's enum tables), so the page cannot drift
from the proto: the output is committed and tests/test_web_page.py regenerates it and compares.

Usage: python scripts/gen_web_wire.py [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from saliency.v1 import explainer_pb2 as pb
from saliency.wire.tables import ENUM_STRINGS, PARAMS_ONEOF

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "service" / "saliency" / "http" / "static" / "wire.json"


def wire_table() -> dict:
    """{"methods": {name: {"oneof": json name, "fields": {field: json name},
    "enums": {field: {choice: enum value name}}}}}"""
    methods = {}
    for name, oneof in sorted(PARAMS_ONEOF.items()):
        slot = pb.MethodRequest.DESCRIPTOR.fields_by_name[oneof]
        fields, enums = {}, {}
        for f in slot.message_type.fields:
            fields[f.name] = f.json_name
            if f.enum_type is not None:
                strings = ENUM_STRINGS[f.enum_type.full_name]
                enums[f.name] = {text: f.enum_type.values_by_number[number].name for number, text in strings.items()}
        methods[name] = {"oneof": slot.json_name, "fields": fields, "enums": enums}
    return {"methods": methods}


def render() -> str:
    return json.dumps(wire_table(), indent=1, sort_keys=True) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed file differs")
    args = parser.parse_args()
    text = render()
    if args.check:
        if OUT.read_text() != text:
            print(f"{OUT} is out of date: run python scripts/gen_web_wire.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(OUT)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
