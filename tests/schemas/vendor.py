#!/usr/bin/env python3
"""Re-vendor the Kubernetes JSON schemas tests/tests/deploy.rs validates the manifests with.

Source: the PyPI package kubernetes-validate (Apache-2.0), which bundles schemas generated
from the Kubernetes OpenAPI documents. Only the kinds deploy/kubernetes uses are kept, and
only the definitions they reach, so the vendored copy stays small:

    pip download --no-deps kubernetes-validate==1.37.0 && unzip kubernetes_validate-*.whl
    tests/schemas/vendor.py kubernetes_validate/kubernetes-json-schema/v1.30.0-local-strict
"""

import json
import pathlib
import re
import sys

# The kinds in deploy/kubernetes, by their schema file names.
KINDS = [
    "configmap-v1.json",
    "daemonset-apps-v1.json",
    "namespace-v1.json",
    "service-v1.json",
    "serviceaccount-v1.json",
]
REF = re.compile(r'"\$ref": "(?:/api/_definitions\.json)?#/\$defs/([^"]+)"')


def main(src: pathlib.Path) -> None:
    out = pathlib.Path(__file__).parent / "kubernetes"
    out.mkdir(exist_ok=True)
    definitions = json.loads((src / "_definitions.json").read_text())
    defs = definitions["$defs"]
    pending = []
    for kind in KINDS:
        text = (src / kind).read_text()
        (out / kind).write_text(text)
        pending += REF.findall(text)
    keep = {}
    while pending:
        name = pending.pop()
        if name not in keep:
            keep[name] = defs[name]
            pending += REF.findall(json.dumps(defs[name]))
    definitions["$defs"] = dict(sorted(keep.items()))
    (out / "_definitions.json").write_text(json.dumps(definitions, indent=1) + "\n")
    print(f"{len(KINDS)} kinds, {len(keep)} of {len(defs)} definitions kept")


if __name__ == "__main__":
    main(pathlib.Path(sys.argv[1]))
