"""Noise prewhitening on the MRD endpoint: a real `dnirecon serve` on loopback, sessions with noise readouts."""

from __future__ import annotations

import re
import socket
import time

import h5py
import numpy as np
import pytest
from ismrmrd.acquisition import AcquisitionHeader

from dnirecon import wire
from dnirecon.fastmri_io import center_crop
from dnirecon.fftc import fft2c, ifft2c, rss
from dnirecon.ismrmrd_io import fastmri_to_ismrmrd, flag
from dnirecon.noise import min_noise_samples, prewhiten, whitener
from service.client import ReconClient
from service.mrd_client import acquisition_bytes, read_raw, stream, stream_file
from service.mrd_protocol import acquisition_message

from .conftest import HEADER_XML
from .test_mrd_e2e import mrd_server, start_mrd_server  # noqa: F401 (mrd_server: a fixture)

COILS, H, W = 8, 32, 24  # HEADER_XML's encoded matrix, phase columns [1, 23) inside its encoding limits
NOISE_SAMPLES = 4096


def mixing(coils: int) -> np.ndarray:
    """Receiver noise as scanners deliver it: channel gains 0.5..2 and neighbour coupling (|rho| about 0.4)."""
    rng = np.random.default_rng(1)
    A = np.eye(coils, dtype=np.complex128)
    for i in range(coils - 1):
        A[i, i + 1] = A[i + 1, i] = 0.45 * np.exp(1j * rng.uniform(0, 2 * np.pi))
    return np.diag(np.linspace(0.5, 2.0, coils)) @ A


def phantom_kspace() -> np.ndarray:
    """Noise-free (COILS, H, W) k-space: two nested ellipses seen by a ring of coils, zero outside [1, 23)."""
    y, x = np.mgrid[-1:1:H * 1j, -1:1:W * 1j]
    obj = ((x / 0.7) ** 2 + (y / 0.8) ** 2 < 1) * (1 + 0.5 * ((x / 0.3) ** 2 + (y / 0.3) ** 2 < 1))
    ang = 2 * np.pi * np.arange(COILS) / COILS
    maps = np.stack([np.exp(-((x - np.cos(a)) ** 2 + (y - np.sin(a)) ** 2) / 1.5 + 1j * a) for a in ang])
    k = fft2c((maps * obj).astype(np.complex64))
    k[..., 0] = k[..., 23] = 0
    return k


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """(raw file with noise readouts, the same without, noise-free kspace (S, C, H, W), noisy kspace, noise (C, N))."""
    d = tmp_path_factory.mktemp("mrdnoise")
    rng = np.random.default_rng(7)
    A = mixing(COILS)
    clean = np.stack([phantom_kspace()] * 2)
    sd = 0.3 * np.abs(clean).mean()

    def draw(n: int) -> np.ndarray:
        return sd * (A @ ((rng.standard_normal((COILS, n)) + 1j * rng.standard_normal((COILS, n))) / np.sqrt(2)))

    noisy = (clean + np.stack([draw(H * W).reshape(COILS, H, W) for _ in clean])).astype(np.complex64)
    noisy[..., 0] = noisy[..., 23] = 0
    noise = draw(NOISE_SAMPLES).astype(np.complex64)
    paths = []
    for name, with_noise in (("with_noise", True), ("without", False)):
        with h5py.File(d / f"{name}.h5", "w") as f:
            f.create_dataset("kspace", data=noisy)
            f.create_dataset("ismrmrd_header", data=np.bytes_(HEADER_XML))
            f.create_dataset("reconstruction_rss", data=np.zeros((2, 16, 16), np.float32))
            f.attrs["acquisition"] = "CORPD_FBK"
            if with_noise:
                f.create_dataset("noise", data=noise)
        paths.append(fastmri_to_ismrmrd(d / f"{name}.h5", d / f"{name}.mrd.h5"))
    return paths[0], paths[1], clean, noisy, noise


CLOSING = re.compile(r"^.*mrd session (mrd-\d+): [^;\n]*; \d+ acquisitions.*$", re.M)


def closing_lines(server) -> list[str]:
    """The closing log lines so far, once every session the log mentions has written its own (a session
    writes it just after its CLOSE, so it may lag the client's read)."""
    for _ in range(100):
        text = server.log()
        closed = [m for m in CLOSING.finditer(text)]
        if {m[1] for m in closed} == set(re.findall(r"mrd session (mrd-\d+):", text)):
            return [m[0] for m in closed]
        time.sleep(0.05)
    raise AssertionError("a session without its closing log line")


def closing_line_after(server, before: int) -> str:
    """The closing log line of the one session that ended after `before` closing lines."""
    for _ in range(100):
        lines = closing_lines(server)
        if len(lines) > before:
            assert len(lines) == before + 1, lines[before:]
            return lines[-1]
        time.sleep(0.05)
    raise AssertionError("no closing line for the session in the log")


def combined(k: np.ndarray) -> np.ndarray:
    """Zero-filled RSS of (C, H, W) or (S, C, H, W) k-space at the 16x16 recon size: the stand-in model's image."""
    if k.ndim == 4:
        return np.stack([combined(s) for s in k])
    return center_crop(rss(ifft2c(k)), (16, 16))


def test_a_session_with_noise_readouts_is_prewhitened_and_logs_it(mrd_server, scan):
    with_noise, _without, _clean, _noisy, noise = scan
    before = len(closing_lines(mrd_server))
    result = stream_file(mrd_server.mrd_target, with_noise, timeout=60)
    assert result.errors == [] and result.closed and len(result.images) == 2
    assert all(im.meta["DnireconPrewhitened"] == "8" for im in result.images)
    summary = whitener(noise).summary
    line = closing_line_after(mrd_server, before)
    readouts = -(-NOISE_SAMPLES // H)
    assert f"prewhitened with {readouts} noise readouts: 8 channels, noise sd " in line
    sd_range = re.search(r"noise sd ([\d.e+-]+)\.\.([\d.e+-]+), largest correlation ([\d.]+)", line)
    assert float(sd_range[1]) == pytest.approx(summary.sd_min, rel=2e-3)
    assert float(sd_range[2]) == pytest.approx(summary.sd_max, rel=2e-3)
    assert float(sd_range[3]) == pytest.approx(summary.max_correlation, abs=2e-3) and summary.max_correlation > 0.3


def test_mrd_images_with_noise_readouts_equal_the_grpc_path_on_prewhitened_kspace(mrd_server, scan):
    with_noise, _without, _clean, noisy, noise = scan
    result = stream_file(mrd_server.mrd_target, with_noise, timeout=60)
    white = prewhiten(noisy, whitener(noise).matrix)
    mask = np.zeros(W, np.float32)
    mask[1:23] = 1
    with ReconClient(mrd_server.target) as client:
        expected = {r.slice_index: wire.image_from_result(r)
                    for r in client.stream(((i, white[i], mask) for i in range(2)), (16, 16), timeout=60)}
    for im in result.images:
        top = float(np.abs(expected[im.head.slice]).max())
        np.testing.assert_allclose(im.image, expected[im.head.slice], atol=1e-4 * top, rtol=0)


def test_prewhitening_lowers_the_error_against_the_noise_free_image(mrd_server, scan):
    """Relative error of the coil-combined image against the same combination of the noise-free data, in
    each session's own units (prewhitened: SNR units). Measured: 0.029 without, 0.0096 with prewhitening."""
    with_noise, without, clean, _noisy, noise = scan
    Wm = whitener(noise).matrix
    errors = {}
    cases = (("with", with_noise, combined(prewhiten(clean, Wm))), ("without", without, combined(clean)))
    for name, path, target in cases:
        images = stream_file(mrd_server.mrd_target, path, timeout=60).images
        got = np.stack([im.image for im in images])
        errors[name] = float(np.linalg.norm(got - target) / np.linalg.norm(target))
    assert errors["with"] < 0.5 * errors["without"], errors


def test_a_session_without_noise_readouts_says_it_was_not_prewhitened(mrd_server, scan):
    _with_noise, without, _clean, noisy, _noise = scan
    before = len(closing_lines(mrd_server))
    result = stream_file(mrd_server.mrd_target, without, timeout=60)
    assert result.errors == [] and len(result.images) == 2
    assert "DnireconPrewhitened" not in result.images[0].meta
    assert "not prewhitened (no noise readouts)" in closing_line_after(mrd_server, before)
    np.testing.assert_allclose(result.images[0].image, combined(noisy[0]), rtol=0,
                               atol=1e-4 * float(combined(noisy[0]).max()))


def noise_message(channels: int, samples: int, data: np.ndarray | None = None) -> bytes:
    head = AcquisitionHeader()
    head.version, head.flags = 1, flag("noise")
    head.number_of_samples, head.active_channels, head.available_channels = samples, channels, channels
    if data is None:
        rng = np.random.default_rng(channels * 1000 + samples)
        data = (rng.standard_normal((channels, samples)) + 1j * rng.standard_normal((channels, samples)))
    return acquisition_message(head, np.asarray(data, np.complex64))


def image_messages(raw) -> list[bytes]:
    _xml, records = read_raw(raw)
    return [acquisition_bytes(r) for r in records if not int(r["head"]["flags"]) & flag("noise")]


silent = np.zeros((COILS, 256), np.complex64)
silent[:7] = np.random.default_rng(3).standard_normal((7, 256))

BAD_NOISE = [
    ("noise of 4 channels for 8-coil data", [noise_message(4, 256)] * 2,
     r"ERR noise readouts has 4 channels, expected 8 \(the k-space coils\)"),
    ("a noise readout with no channels", [noise_message(0, 256)],
     r"ERR acquisition 0: noise readout of 0 channels x 256 samples"),
    ("noise readouts whose channels change", [noise_message(8, 256), noise_message(6, 256)],
     r"ERR acquisition 1: noise readout of 6 channels, expected 8 \(the first noise readout's\)"),
    ("too few noise samples", [noise_message(8, 16)],
     rf"ERR noise readouts has 16 samples per channel, expected at least {min_noise_samples(8)}"),
    ("a silent channel", [noise_message(8, 256, silent)], r"ERR noise readouts covariance is singular"),
    ("NaN in a noise readout", [noise_message(8, 256, np.full((8, 256), np.nan))],
     r"ERR acquisition 0: noise readout holds NaN or Inf"),
]


@pytest.mark.parametrize("case,noise,expected", BAD_NOISE, ids=[c[0] for c in BAD_NOISE])
def test_bad_noise_readouts_get_a_clear_err_and_the_server_goes_on(mrd_server, scan, case, noise, expected):
    with_noise, without, *_ = scan
    xml, _records = read_raw(without)
    result = stream(mrd_server.mrd_target, xml, noise + image_messages(without), timeout=60)
    assert result.images == [] and result.closed
    assert any(re.match(expected, t) for t in result.errors), result.texts
    good = stream_file(mrd_server.mrd_target, with_noise, timeout=60)
    assert good.errors == [] and len(good.images) == 2


NOISE_BYTES = COILS * NOISE_SAMPLES * 8  # 262,144: the scan's noise measurement as complex64


@pytest.mark.parametrize("setting,expected", [
    ("--max-slice-bytes", r"ERR acquisition \d+: noise readouts of more than 100000 bytes \(max_slice_bytes\)"),
    ("--slice-memory-bytes", r"ERR acquisition \d+: noise readouts do not fit the memory for slices being assembled "
                             r"\(\d+ bytes asked, \d+ of 100000 left\)"),
], ids=["max_slice_bytes", "slice_memory_bytes"])
def test_noise_readouts_beyond_the_memory_limits_end_the_session_and_give_their_memory_back(
        baked_dir, tmp_path, scan, setting, expected):
    from .test_mrd_limits import wait_metric

    with_noise, *_ = scan
    server = start_mrd_server(baked_dir, tmp_path, setting, "100000")  # a slice (49,152 bytes) fits, the noise does not
    try:
        result = stream_file(server.mrd_target, with_noise, timeout=60)
        assert result.images == [] and result.closed
        assert any(re.match(expected, t) for t in result.errors), result.texts
        wait_metric(server, "dnirecon_slice_memory_reserved_bytes", 0)
    finally:
        server.stop()


def test_noise_readouts_hold_their_bytes_of_the_memory_budget_until_the_first_image_line(mrd_server, scan):
    import threading

    from service.mrd_client import MrdResult, receive
    from service.mrd_protocol import MessageId, close_message, config_file_message, text_message

    from .test_mrd_limits import wait_metric

    with_noise, *_ = scan
    xml, records = read_raw(with_noise)
    is_noise = (records["head"]["flags"] & np.uint64(flag("noise"))) != 0
    host, port = mrd_server.mrd_target.rsplit(":", 1)
    result = MrdResult()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        reader = threading.Thread(target=receive, args=(sock, result))
        reader.start()
        sock.sendall(config_file_message("dnirecon") + text_message(xml.decode(), MessageId.HEADER)
                     + b"".join(acquisition_bytes(r) for r in records[is_noise]))
        wait_metric(mrd_server, "dnirecon_slice_memory_reserved_bytes", NOISE_BYTES)
        sock.sendall(b"".join(acquisition_bytes(r) for r in records[~is_noise]) + close_message())
        reader.join(60)
    assert result.errors == [] and len(result.images) == 2
    wait_metric(mrd_server, "dnirecon_slice_memory_reserved_bytes", 0)


def test_the_client_sends_noise_readouts_first_wherever_the_file_keeps_them(mrd_server, scan, tmp_path):
    with_noise, *_ = scan
    xml, records = read_raw(with_noise)
    is_noise = (records["head"]["flags"] & np.uint64(flag("noise"))) != 0
    moved = tmp_path / "noise_last.mrd.h5"
    with h5py.File(moved, "w") as f:  # the noise measurement stored after the image lines
        g = f.create_group("dataset")
        g.create_dataset("xml", data=[xml], dtype=h5py.special_dtype(vlen=bytes))
        g.create_dataset("data", data=np.concatenate([records[~is_noise], records[is_noise]]))
    result = stream_file(mrd_server.mrd_target, moved, timeout=60)
    assert result.errors == [] and [im.meta.get("DnireconPrewhitened") for im in result.images] == ["8", "8"]


def test_noise_readouts_after_the_first_image_line_are_not_used_and_the_log_says_so(mrd_server, scan):
    _with_noise, without, _clean, noisy, _noise = scan
    xml, _records = read_raw(without)
    before = len(closing_lines(mrd_server))
    result = stream(mrd_server.mrd_target, xml, image_messages(without) + [noise_message(8, 256)] * 2, timeout=60)
    assert result.errors == [] and len(result.images) == 2
    assert "DnireconPrewhitened" not in result.images[0].meta
    line = closing_line_after(mrd_server, before)
    assert "not prewhitened (2 noise readouts after the first image line, not used)" in line


def test_noise_at_another_dwell_time_is_scaled_by_the_dwell_ratio_and_the_relative_noise_bandwidth():
    from service.mrd_slices import NoiseMeasurement, SessionError, parse_encoding

    xml = HEADER_XML.replace("<encoding>", "<acquisitionSystemInformation><relativeReceiverNoiseBandwidth>0.79"
                                           "</relativeReceiverNoiseBandwidth></acquisitionSystemInformation><encoding>")
    enc = parse_encoding(xml)
    assert enc.noise_bandwidth == pytest.approx(0.79)
    noise = (mixing(4) @ np.random.default_rng(2).standard_normal((4, 1024))).astype(np.complex64)
    nm = NoiseMeasurement(enc, 1 << 20)
    head = AcquisitionHeader()
    head.flags, head.number_of_samples, head.active_channels, head.sample_time_us = flag("noise"), 1024, 4, 2.0
    nm.check_header(0, head)
    nm.add(0, head, noise)
    head.flags, head.sample_time_us = 0, 8.0  # the first image line, sampled 4x slower
    W = nm.whitener_for(head).matrix
    np.testing.assert_allclose(W, np.sqrt(4 * 0.79) * whitener(noise).matrix, rtol=1e-5)
    with pytest.raises(SessionError, match="relativeReceiverNoiseBandwidth is '-1', expected a number > 0"):
        parse_encoding(xml.replace(">0.79<", ">-1<"))
