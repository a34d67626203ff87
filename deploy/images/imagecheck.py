"""Host side of the image check (deploy/images/check.sh), built on the project's own code.

  ports N          N free loopback TCP ports, one line
  wait-http URL    wait until URL answers 200 (the MLflow container)
  stage            an SN and an "SN-GAN" of a small configuration registered in the MLflow server at
                   $MLFLOW_TRACKING_URI, baked (ONNX per alpha, parity checked) and registered as an
                   interpsn version, `production` moved to it; a synthetic fastMRI-layout volume to send
  wait-serving     gRPC health of a server until SERVING; prints the seconds since --since
  compare          a `dnirecon client reconstruct` output against onnxruntime run in this process
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

# A small SN (one cascade, 4 features): exporting and baking it takes seconds on 2 cores.
SMALL_SN = dict(cascades=1, width=4, blocks=1, dc_weight_init=1.0)
ALPHAS = (0.0, 1.0)


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_http(url: str, timeout: float) -> float:
    start = time.monotonic()
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() - start > timeout:
            raise SystemExit(f"imagecheck: {url} did not answer 200 within {timeout:g} s")
        time.sleep(0.5)


def register_pair(seed: int = 0) -> tuple[str, str]:
    """Registered versions of `sn` and `sn-gan` (SN-GAN: SN plus a seeded perturbation of every float)."""
    import torch

    from training.models.signature import arch_signature
    from training.models.sn import SensitivityNetwork
    from training.presets import SNConfig
    from training.tracking import client, experiment_id, log_model_artifact, model_config_document, register_version

    torch.manual_seed(seed)
    sn = SensitivityNetwork(SNConfig(**SMALL_SN)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    gan = {k: (v + 0.1 * v.abs().mean() * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v
           for k, v in sn.state_dict().items()}
    versions = []
    for kind, state in (("sn", sn.state_dict()), ("sn-gan", gan)):
        c = client()
        run = c.create_run(experiment_id(), run_name=f"image-check-{kind}")
        doc = model_config_document(kind, "image-check", SMALL_SN, arch_signature(state))
        source = log_model_artifact(run.info.run_id, state, doc)
        c.set_terminated(run.info.run_id)
        versions.append(register_version(kind, source, run.info.run_id, {"preset": "image-check"}))
    return versions[0], versions[1]


def stage(out: Path) -> dict:
    """Registers, bakes and promotes; writes out/baked (the baked set) and out/volume/*.h5."""
    from registry.bake import bake
    from registry.store import get_client, promote
    from training.synth import SynthConfig, synthesize

    held_out = synthesize(out / "held_out", SynthConfig(volumes_per_contrast=1, slices=2, coils=4, recon_size=(32, 32),
                                                        seed=3, contrasts=("pd",)))
    (volume,) = synthesize(out / "volume", SynthConfig(volumes_per_contrast=1, slices=3, coils=4, recon_size=(32, 32),
                                                       seed=7, contrasts=("pd",)))
    v_sn, v_gan = register_pair()
    result = bake(f"sn/{v_sn}", f"sn-gan/{v_gan}", list(ALPHAS), out / "held_out", slices=2, accels=(4.0,),
                  out_dir=out / "baked", threads=1)
    promoted = promote(get_client(), "production", result.version)
    info = {"sn": v_sn, "sn-gan": v_gan, "interpsn": result.version, "volume": str(volume),
            "baked": str(result.directory), "held_out": [str(p) for p in held_out],
            "production": promoted.version}
    (out / "stage.json").write_text(json.dumps(info, indent=2))
    return info


def wait_serving(target: str, since: float, timeout: float, service: str) -> float:
    """Seconds from `since` (epoch) to the first SERVING answer of grpc.health.v1 Check(service)."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.time() - since < timeout:
            try:
                status = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return time.time() - since
            except grpc.RpcError:
                pass
            time.sleep(0.2)
    raise SystemExit(f"imagecheck: {target} health {service!r} not SERVING within {timeout:g} s")


def in_process(volume: Path, onnx: Path, accel: int):
    """The volume's images from onnxruntime in this process, cropped to the recon size, with the mask
    `dnirecon client reconstruct` uses for a fully sampled file (fastMRI's, seeded by the file name)."""
    import numpy as np
    import onnxruntime as ort

    from dnirecon.fastmri_io import FastMRIVolume, center_crop
    from dnirecon.subsample import mask_for

    with FastMRIVolume(volume) as vol:
        hdr = vol.header
        kspace = np.stack([vol.kspace(i) for i in range(vol.num_slices)])
    mask = np.asarray(mask_for(accel, seed=volume.name, width=kspace.shape[-1],
                               padding=(hdr.padding_left, hdr.padding_right)), np.float32).reshape(-1)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    session = ort.InferenceSession(str(onnx), opts, providers=["CPUExecutionProvider"])
    masked = kspace * mask
    feeds = {"kspace": np.stack([masked.real, masked.imag], -1).astype(np.float32),
             "mask": np.broadcast_to(mask, (len(kspace), mask.size)).copy()}
    return center_crop(session.run(["image"], feeds)[0], hdr.recon_size)


def compare(volume: Path, recon: Path, onnx: Path, accel: int, control: Path | None = None) -> dict[str, float]:
    """max |served - in-process| (`diff`), max |in-process| (`max`) and, with a control model (another
    alpha), max |served - control| (`control`): a comparison that could not tell two models apart proves nothing."""
    import h5py
    import numpy as np

    reference = in_process(volume, onnx, accel)
    with h5py.File(recon) as f:
        served = f["reconstruction"][()]
    if served.shape != reference.shape:
        raise SystemExit(f"imagecheck: {recon} 'reconstruction' has shape {served.shape}, expected {reference.shape}")
    out = {"diff": float(np.abs(served - reference).max()), "max": float(np.abs(reference).max())}
    if control is not None:
        out["control"] = float(np.abs(served - in_process(volume, control, accel)).max())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("ports").add_argument("n", type=int)
    w = sub.add_parser("wait-http")
    w.add_argument("url")
    w.add_argument("--timeout", type=float, default=120)
    s = sub.add_parser("stage")
    s.add_argument("--out", type=Path, required=True)
    h = sub.add_parser("wait-serving")
    h.add_argument("target")
    h.add_argument("--since", type=float, required=True, help="epoch seconds the container was started at")
    h.add_argument("--timeout", type=float, default=300)
    h.add_argument("--service", default="dnirecon.v1.Reconstruction", help="health service name (readiness)")
    c = sub.add_parser("compare")
    c.add_argument("--volume", type=Path, required=True)
    c.add_argument("--recon", type=Path, required=True)
    c.add_argument("--onnx", type=Path, required=True)
    c.add_argument("--accel", type=int, default=4)
    c.add_argument("--tolerance", type=float, default=1e-5, help="largest max difference / max allowed")
    c.add_argument("--control", type=Path, help="another model, whose images must differ by more than the tolerance")
    args = p.parse_args(argv)

    if args.command == "ports":
        print(*free_ports(args.n))
    elif args.command == "wait-http":
        print(f"{args.url} answered after {wait_http(args.url, args.timeout):.1f} s")
    elif args.command == "stage":
        info = stage(args.out)
        print(f"registered sn/{info['sn']}, sn-gan/{info['sn-gan']}; baked interpsn/{info['interpsn']} "
              f"(alphas {', '.join(f'{a:g}' for a in ALPHAS)}); production -> {info['production']}")
    elif args.command == "wait-serving":
        print(f"{wait_serving(args.target, args.since, args.timeout, args.service):.1f}")
    elif args.command == "compare":
        r = compare(args.volume, args.recon, args.onnx, args.accel, args.control)
        ok = r["diff"] <= args.tolerance * r["max"]
        line = (f"max |served - in-process| = {r['diff']:.3g}, max = {r['max']:.3g}, ratio = {r['diff'] / r['max']:.3g} "
                f"({'within' if ok else 'OVER'} {args.tolerance:g})")
        if "control" in r:
            told = r["control"] > args.tolerance * r["max"]
            line += (f"; {args.control.name} differs by {r['control'] / r['max']:.3g} of max"
                     f"{'' if told else ' (NOT told apart: the comparison proves nothing)'}")
            ok = ok and told
        print(line)
        return 0 if ok else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
