"""check_claims: each of the paper's claims is PASS, FAIL or SKIP with its numbers."""

import dataclasses

import pytest

from training.report import ReportData, check_claims, interp_name, render_markdown

ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]
FIGS = {k: f"figures/{k}.png" for k in ("pd", "fig1", "methods", "dc")}


def _data(values: dict[str, dict[str, float]], accels=(4.0,)) -> ReportData:
    """A ReportData whose ALL rows carry the given means (std 0), the same at every accel."""
    rows = [dict(data="ALL", accel=a, method=m, n=1,
                 metrics={k: (v, 0.0) for k, v in dict(nmse=0.1, hfen=0.5, **vals).items()})
            for a in accels for m, vals in values.items()]
    return ReportData(accels=list(accels), methods=list(values), alphas=ALPHAS, rows=rows, volumes=[],
                      dc_residual={}, dc_computed=[], seconds_per_slice={}, example=None, val_dir="-", files=[])


def paper_like(**override) -> dict:
    """Numbers that satisfy every claim: SN best, SN-GAN sharper, a smooth curve over alpha."""
    values = {
        "Zero-filled": dict(psnr=28.0, ssim=0.70, hf_ratio=0.5),
        "CG-SENSE": dict(psnr=30.0, ssim=0.78, hf_ratio=0.6),
        "U-Net": dict(psnr=31.0, ssim=0.80, hf_ratio=0.6),
        "SN": dict(psnr=33.0, ssim=0.85, hf_ratio=0.70),
        "SN-GAN": dict(psnr=32.0, ssim=0.83, hf_ratio=0.98),
    }
    for a, psnr, hf in zip(ALPHAS, [33.0, 32.9, 32.75, 32.45, 32.0], [0.70, 0.77, 0.84, 0.91, 0.98]):
        values[interp_name(a)] = dict(psnr=psnr, ssim=0.84, hf_ratio=hf)
    for name, vals in override.items():
        values[name.replace("_", " ").replace("interpSN a ", "interpSN a=")] = {**values.get(name, {}), **vals}
    return values


def _status(claims, text):
    found = [c for c in claims if text in c.claim]
    assert found, f"no claim containing {text!r}"
    return found[0]


def test_paper_like_numbers_pass_every_claim():
    claims = check_claims(_data(paper_like()))
    assert len(claims) == 9
    assert [c.claim for c in claims if c.status != "PASS"] == []
    assert "SN 33.00 dB vs U-Net 31.00, CG-SENSE 30.00, Zero-filled 28.00" in claims[0].detail


def test_sn_below_a_baseline_fails_with_the_numbers():
    values = paper_like()
    values["CG-SENSE"]["psnr"] = 33.5
    c = _status(check_claims(_data(values)), "SN above U-Net, CG-SENSE and zero-filled in PSNR")
    assert c.status == "FAIL" and "CG-SENSE 33.50" in c.detail


def test_sn_gan_above_sn_fails():
    values = paper_like()
    values["SN-GAN"]["psnr"] = 33.2
    c = _status(check_claims(_data(values)), "SN-GAN PSNR below SN")
    assert c.status == "FAIL" and "+0.20 dB" in c.detail


def test_interp_outside_sn_and_sn_gan_fails_on_that_metric_only():
    values = paper_like()
    values[interp_name(0.5)]["hf_ratio"] = 1.2
    claims = check_claims(_data(values))
    c = _status(claims, "between SN and SN-GAN on HF ratio")
    assert c.status == "FAIL" and "outside: a=0.50" in c.detail
    assert _status(claims, "between SN and SN-GAN on PSNR").status == "PASS"


def test_hf_ratio_moving_away_from_one_fails():
    values = paper_like()
    values[interp_name(0.75)]["hf_ratio"] = 0.80  # below a=0.5's 0.84: further from 1
    c = _status(check_claims(_data(values)), "HF ratio moves toward 1")
    assert c.status == "FAIL" and "a=0.50->0.75" in c.detail


def test_a_jump_larger_than_twice_the_mean_step_fails():
    values = paper_like()
    for a, psnr in zip(ALPHAS, [33.0, 32.98, 32.96, 32.94, 32.0]):
        values[interp_name(a)]["psnr"] = psnr
    claims = check_claims(_data(values))
    c = _status(claims, "no jump in PSNR")
    assert c.status == "FAIL" and "largest 0.940" in c.detail
    assert _status(claims, "no jump in HF ratio").status == "PASS"


def test_alpha_half_far_from_sn_fails():
    values = paper_like()
    values[interp_name(0.5)]["psnr"] = 32.5
    c = _status(check_claims(_data(values)), "alpha 0.5 within 0.3 dB of SN")
    assert c.status == "FAIL" and "-0.50 dB" in c.detail


def test_missing_methods_are_skipped_not_passed():
    values = paper_like()
    del values["U-Net"]
    claims = check_claims(_data(values))
    c = _status(claims, "in SSIM")
    assert c.status == "SKIP" and "U-Net" in c.detail


def test_claims_are_checked_per_acceleration():
    claims = check_claims(_data(paper_like(), accels=(4.0, 8.0)))
    assert len(claims) == 18
    assert sum(c.claim.startswith("8x:") for c in claims) == 9


def test_swapped_methods_on_measured_data_fail_and_the_report_says_so(report_data):
    """Zero-filled renamed to SN: "SN above the baselines" must FAIL, and report.md must show it.

    Only 4x: at 8x the 32x32 stand-in data leave one ACS column and every method is equally poor.
    """
    swap = {"SN": "Zero-filled", "Zero-filled": "SN"}
    rows = [dict(r, method=swap.get(r["method"], r["method"])) for r in report_data.rows]
    swapped = dataclasses.replace(report_data, rows=rows)
    claims = check_claims(swapped)
    c = _status(claims, "4x: SN above U-Net, CG-SENSE and zero-filled in PSNR")
    assert c.status == "FAIL"
    text = render_markdown(swapped, {"preset": "cpu"}, claims, FIGS)
    assert f"| **FAIL** | {c.claim} | {c.detail} |" in text
    assert "Not shown by these data" in text and c.claim in text.split("Not shown by these data")[1]


@pytest.mark.parametrize("accel", [4.0, 8.0])
def test_blend_family_lies_between_its_ends_on_measured_data(report_data, accel):
    """The fake interpSN is a pixel blend of SN-GAN and |CG-SENSE 8|: its PSNR is between the ends."""
    claims = check_claims(report_data)
    text = f"{accel:g}x: interpSN (0 < alpha < 1) between SN and SN-GAN on PSNR"
    assert _status(claims, text).status == "PASS"


def test_a_pipe_in_a_cell_does_not_break_the_table(report_data):
    text = render_markdown(report_data, {"preset": "cpu", "machine": "2 cores | 8 GB"}, [], FIGS)
    assert "| machine | 2 cores \\| 8 GB |" in text
    assert "`dnirecon demo --preset cpu`" in text


def test_run_info_records_become_their_own_table(report_data):
    passes = [{"accel": 4.0, "alpha_used": 0.5, "seconds": 1.23456},
              {"accel": 8.0, "alpha_used": 1.0, "seconds": 2.0}]
    info = {"preset": "cpu", "streamed passes": passes, "versions": {"sn": "3"}}
    text = render_markdown(report_data, info, [], FIGS)
    assert "| versions.sn | 3 |" in text
    assert "streamed passes:\n\n| accel | alpha_used | seconds |" in text
    assert "| 4 | 0.5 | 1.235 |" in text and "| 8 | 1 | 2 |" in text


def test_a_baked_sets_curve_is_checked_by_the_same_tradeoff_claims():
    """The bake command's verdict on a manifest (all accelerations together) uses tradeoff_claims, the
    same code as the report: alpha 0 is SN."""
    from training.report import manifest_points, tradeoff_claims

    curve = [(0.0, 33.0, 0.70), (0.25, 32.9, 0.77), (0.5, 32.75, 0.84), (0.75, 32.45, 0.91), (1.0, 32.0, 0.98)]
    manifest = {"alphas": [{"alpha": a, "metrics": {"psnr": p, "ssim": 0.8, "hf_ratio": h}} for a, p, h in curve]}
    points = manifest_points(manifest)
    good = tradeoff_claims(points, points[0]["psnr"], "4x and 8x")
    assert [c.status for c in good] == ["PASS"] * 4
    assert good[3].detail == "a=0.50 32.75 dB vs SN 33.00 dB (-0.25 dB)"
    jumpy = [dict(p) for p in points]
    jumpy[4]["psnr"] -= 3.0  # 0.75 -> 1: a 3.45 dB step
    verdict = {c.claim: c.status for c in tradeoff_claims(jumpy, 33.0, "4x")}
    assert verdict["4x: no jump in PSNR between neighbouring alphas larger than twice the mean step"] == "FAIL"
    overshoot = [dict(p, hf_ratio=0.7 + 0.5 * p["alpha"]) for p in points]  # 1.2 at alpha 1: farther from 1
    assert tradeoff_claims(overshoot, 33.0, "4x")[0].status == "FAIL"
    assert tradeoff_claims(points[:1], 33.0, "4x")[0].status == "SKIP"
