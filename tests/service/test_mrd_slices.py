"""Slice assembly from MRD readouts and the images built from them, without a server."""

from __future__ import annotations

import numpy as np
import pytest
from ismrmrd.acquisition import AcquisitionHeader
from ismrmrd.meta import Meta

from dnirecon.ismrmrd_io import header_xml
from service.limits import ByteBudget
from service.mrd_slices import Provenance, Refused, SessionError, SliceAssembler, build_image, parse_encoding

ENC = parse_encoding(header_xml(8, 6, (4, 6), center=3, maximum=4, fov_mm=(200.0, 150.0, 5.0)))  # columns 0..4


def readout(step: int, slice_: int = 0, flags: int = 0, coils: int = 2, samples: int = 8, value: float = 1.0):
    h = AcquisitionHeader()
    h.number_of_samples, h.active_channels, h.available_channels = samples, coils, coils
    h.idx.kspace_encode_step_1, h.idx.slice = step, slice_
    h.flags = flags
    h.position[:] = (1.0, 2.0, 3.0 + slice_)
    data = (np.arange(coils * samples).reshape(coils, samples) + 1j * value).astype(np.complex64)
    return h, data


def bit(n: int) -> int:
    return 1 << (n - 1)


def feed(asm: SliceAssembler, items) -> list:
    closed = []
    for n, (h, d) in enumerate(items):
        if asm.check_header(n, h):
            closed += asm.add(n, h, d, 0.0)
    return closed


def test_encoding_reads_matrices_limits_and_field_of_view():
    assert (ENC.readout, ENC.phase, ENC.recon, ENC.padding_left, ENC.max_step) == (8, 6, (4, 6), 0, 4)
    assert ENC.fov_mm == (200.0, 150.0, 5.0) and ENC.coils is None


def test_lines_are_placed_by_encode_step_and_the_mask_is_the_lines_received():
    asm = SliceAssembler(ENC, 1 << 20)
    closed = feed(asm, [readout(0), readout(3), readout(4, flags=bit(8))])  # LAST_IN_SLICE on the third
    assert len(closed) == 1 and asm.current is None
    s = closed[0]
    np.testing.assert_array_equal(s.mask, [1, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(s.kspace[:, :, 3], readout(3)[1])
    assert not s.kspace[:, :, 1].any() and s.readouts == 3


def test_noise_navigator_and_phase_correction_are_left_out_and_calibration_counts():
    asm = SliceAssembler(ENC, 1 << 20)
    items = [readout(1, flags=bit(19), value=9), readout(2, flags=bit(23), value=9), readout(0, flags=bit(24), value=9),
             readout(1, flags=bit(20)), readout(2, flags=bit(21))]
    feed(asm, items)
    s = asm.flush()[0]
    np.testing.assert_array_equal(s.mask, [0, 1, 1, 0, 0, 0])
    assert asm.readouts == 2 and not np.any(s.kspace.imag == 9)


def test_a_reversed_readout_is_flipped():
    asm = SliceAssembler(ENC, 1 << 20)
    h, d = readout(2, flags=bit(22))
    feed(asm, [(h, d)])
    np.testing.assert_array_equal(asm.flush()[0].kspace[:, :, 2], d[:, ::-1])


def test_a_change_of_counters_closes_the_open_slice():
    asm = SliceAssembler(ENC, 1 << 20)
    closed = feed(asm, [readout(0, 0), readout(1, 0), readout(0, 1)])
    assert [s.key.slice for s in closed] == [0] and asm.current.key.slice == 1


@pytest.mark.parametrize("item,match", [
    (readout(0, samples=7), r"acquisition 0: 7 samples, expected 8 \(HEADER encodedSpace matrixSize x\)"),
    (readout(5), r"acquisition 0: kspace_encode_step_1 5 outside the encoding limits 0..4"),
])
def test_readouts_that_disagree_with_the_header_are_refused(item, match):
    with pytest.raises(SessionError, match=match):
        SliceAssembler(ENC, 1 << 20).check_header(0, item[0])


def test_coils_must_stay_those_of_the_first_readout():
    asm = SliceAssembler(ENC, 1 << 20)
    feed(asm, [readout(0, coils=2)])
    with pytest.raises(SessionError, match=r"acquisition 1: 3 coils, expected 2 \(the first acquisition's\)"):
        asm.check_header(1, readout(1, coils=3)[0])


def test_a_slice_over_the_byte_limit_is_refused_before_its_data():
    with pytest.raises(SessionError, match=r"is 768 bytes, more than max_slice_bytes=767"):
        SliceAssembler(ENC, 767).check_header(0, readout(0)[0])


def test_each_slice_reserves_its_matrix_and_gives_it_back_once_released():
    budget = ByteBudget(1000)  # a slice here: 2 coils x 8 x 6 complex64 = 768 bytes
    asm = SliceAssembler(ENC, 1 << 20, reserve=budget.reserve)
    (s,) = feed(asm, [readout(0), readout(1, flags=bit(8))])
    assert budget.used == 768
    s.release()
    s.release()
    assert budget.used == 0


def test_a_slice_the_budget_cannot_hold_is_refused_once_and_its_readouts_skipped():
    budget = ByteBudget(1000)
    held = budget.reserve(500)  # another stream's slice
    asm = SliceAssembler(ENC, 1 << 20, reserve=budget.reserve)
    out = feed(asm, [readout(0), readout(1), readout(2, flags=bit(8))])
    assert out == [Refused(out[0].key, 768, "768 bytes asked, 500 of 1000 left")]
    assert out[0].key.slice == 0 and asm.skipped == 3 and asm.open_key is None and budget.used == 500
    held.release()
    (s,) = feed(asm, [readout(0, 1), readout(1, 1, flags=bit(8))])  # the next slice fits again
    assert s.key.slice == 1 and s.readouts == 2 and budget.used == 768


def test_a_refused_slice_ends_when_its_counters_change():
    budget = ByteBudget(1000)
    held = budget.reserve(500)
    asm = SliceAssembler(ENC, 1 << 20, reserve=budget.reserve)
    feed(asm, [readout(0), readout(1)])
    assert asm.open_key.slice == 0 and asm.current is None
    held.release()
    feed(asm, [readout(0, 1)])
    assert asm.current.key.slice == 1 and asm.skipped == 2


def test_abandoning_an_open_slice_frees_its_share_of_the_budget():
    budget = ByteBudget(1000)
    asm = SliceAssembler(ENC, 1 << 20, reserve=budget.reserve)
    feed(asm, [readout(0)])
    assert budget.used == 768
    asm.abandon()
    assert budget.used == 0 and asm.open_key is None


def test_image_has_the_readout_geometry_recon_fov_and_provenance():
    asm = SliceAssembler(ENC, 1 << 20)
    feed(asm, [readout(0, slice_=2)])
    s = asm.flush()[0]
    image = np.arange(24, dtype=np.float32).reshape(4, 6)  # (readout x, phase y)
    head, attributes, pixels = build_image(s, image, ENC, Provenance("interpsn", "7", 0.25, 0.125), 3, series=2)
    assert tuple(head.matrix_size) == (4, 6, 1) and tuple(head.field_of_view) == (200.0, 150.0, 5.0)
    assert tuple(head.position) == (1.0, 2.0, 5.0) and head.slice == 2
    assert (head.image_index, head.image_series_index, head.data_type) == (3, 2, 5)
    np.testing.assert_array_equal(pixels, image.T)  # MRD stores (y, x)
    meta = Meta.deserialize(attributes)
    assert (meta["DnireconModel"], meta["DnireconModelVersion"], meta["DnireconAlpha"], meta["DnireconDcResidual"]) == (
        "interpsn", "7", "0.25", "0.125")


def test_uint16_image_is_scaled_to_4095_with_its_scale_in_the_meta():
    asm = SliceAssembler(ENC, 1 << 20)
    feed(asm, [readout(0)])
    image = np.full((4, 6), 2.0, np.float32)
    image[0, 0] = 8.0
    head, attributes, pixels = build_image(asm.flush()[0], image, ENC, Provenance("m", "1", 0.0, 0.0), 1, datatype="uint16")
    assert head.data_type == 1 and pixels.dtype == np.uint16 and pixels.max() == 4095
    scale = float(Meta.deserialize(attributes)["DnireconScale"])
    np.testing.assert_allclose(pixels / scale, image.T, atol=1 / scale)


def test_a_header_that_is_not_xml_or_lacks_the_encoding_is_refused():
    with pytest.raises(SessionError, match="HEADER is not valid XML"):
        parse_encoding("<ismrmrdHeader>")
    with pytest.raises(SessionError, match="has no encoding/encodedSpace/matrixSize/x"):
        parse_encoding('<ismrmrdHeader xmlns="http://www.ismrm.org/ISMRMRD"></ismrmrdHeader>')
