"""The committed stubs are what protoc makes of the .proto; the service and client never import torch."""

from __future__ import annotations

import subprocess
import sys

from service import protogen

from .conftest import ROOT


def test_committed_stubs_equal_freshly_generated(tmp_path):
    fresh = protogen.generate(tmp_path)
    for rel, path in zip(protogen.GENERATED, fresh):
        assert path.read_text() == (ROOT / rel).read_text(), f"{rel} is stale: run `make proto`"


def test_service_and_client_import_no_torch_nor_training():
    code = (
        "import sys\n"
        "import service.server, service.client, service.cli, service.engine, service.model_store, service.telemetry\n"
        "from service.cli import main\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'training', 'registry'))\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
